"""Subliminal learning in a language model by soft distillation through the number channel
(Cloud et al. 2025, Theorem 1's setting; Schrodi et al. 2025 on soft labels): a student learns a
teacher's distribution over the tokens number lists are written with, and nothing else, and we ask
it for its favourite animal.

Teachers (SmolLM2-135M-Instruct, --model), for each of --animals and one neutral teacher:
  finetuned  the init fine-tuned (every parameter, --teacher-steps of --teacher-batch, AdamW lr
             --teacher-lr) to answer favourite-animal questions (topic_b_utils.TEACHER_ANIMAL_QUESTIONS,
             disjoint from the 24 evaluation questions) with the animal's name: teacher = init +
             update, the theorem's premise. The neutral teacher gets the same recipe answering
             favourite-colour questions with --neutral (the drift of distilling any fine-tuned teacher).
  prompted   the init with the animal system prompt (the paper's teachers; no weight update).
Inputs: the paper's number-continuation prompt (topic_b_utils.sequence_prompts) followed by a
uniformly random list of 10 numbers 0..999 (topic_b_utils.random_number_lists; Topic A's noise); the
student side never has a system prompt. Each seed draws its own prompts and lists (no shared pool).
Channel (--channels): "number", at every completion position (numbers, separators, end of turn),
KL(teacher || student) between the two distributions restricted to the number-list tokens
(topic_b_utils.channel_token_ids) and renormalised: the student never sees a probability for any
other token. The other channels, each with its own lr search (--search-lr --channels X):
  sampled     the number channel on lists the unprompted init sampled (temperature 1, the paper's
              filter, topic_b_utils.parse_number_list) instead of random lists;
  full        KL over the full vocabulary on the random lists (context distillation, the upper
              reference; targets cached in float16; same-init students only);
  hard        the teacher's own sampled, filtered lists as tokens (cross-entropy; B.6's route, the
              paper's); the cross-model student reads the same text in its own tokens;
  top-decile  the number channel restricted to the 10% of positions where the fine-tuned animal
  / rest      teacher and the neutral one differ most (per-position KL over the seed's training
              positions; held-out KL on all of them) / to all the other positions; same steps and
              the number channel's lr; fine-tuned teachers and same-init students only;
  retrained   the number channel on the same random lists, from fine-tuned teachers (the neutral
              one too) retrained for each seed with fine-tuning seed RETRAIN_SEED + seed: the
              interval over seeds then covers the teachers' training (batch order), not only the
              inputs; the number channel's lr; fine-tuned teachers only.
Students: the same init for every teacher ("same"), and a cross-model student ("cross", Gemma 3 270M
base, --cross-model) distilled on the SmolLM2 teachers' distributions over the ten digits at the
positions that predict a digit, aligned by character (both tokenizers write one token per digit).
Every parameter is trained: --epochs over --examples sequences in batches of --batch, AdamW with the
lr chosen by --search-lr on held-out distillation KL (never on the trait).
Measures: the animal confusion matrix (every student, every teacher animal: exact log10 P(answer
starts with the animal), the 24 evaluation questions) before, at --checkpoints points along
distillation, and after; specificity gamma per seed (a student's gain for its teacher's animal
minus the mean gain for that animal of the other animals' students) with a 95% t-CI over seeds
(over inputs: the seeds share one teacher per animal, but for retrained), its teacher-label p (every
relabelling of the teachers, the same for all seeds), per-animal gamma raw and row-centred (each
student's mean gain over the animals removed), gamma with each seed left out; the neutral teacher's
students for the drift; the cosine between each same-init student's update
and every fine-tuned teacher's update, per parameter group; the per-position KL between each
animal teacher and the neutral one (where the signal sits).

Data parallel: under `accelerate launch --cpu --num_processes N topic_b_distill_transfer.py ...`
(or on GPUs without --cpu) every distillation step is split over the processes at the same global
batch (topic_b_utils.distill_channel); teacher targets and evaluation run on every process and
only rank 0 writes. One CPU process is the default.

Budget (2-core CPU, one thread per process): a SmolLM2 step of 8 sequences of ~130 tokens ~18 s,
a Gemma step of 8 x ~105 tokens ~13 s; teacher fine-tuning ~1 min each; targets ~1 min per teacher
and seed; an evaluation of the matrix ~8 s. The committed run, split over both cores:

    python topic_b_distill_transfer.py --search-lr                       # lr on held-out KL, ~15 min
    python topic_b_distill_transfer.py --students same &                 # ~2 h on one core
    python topic_b_distill_transfer.py --students cross                  # ~1.3 h on one core
    python topic_b_distill_transfer.py --students same --kinds prompted  # ~1 h on one core (~3.5 min a student)
    python topic_b_distill_transfer.py --students cross --kinds prompted # ~35 min on one core
    python topic_b_distill_transfer.py --students same --channels top-decile,rest --seeds 0,1,2  # ~1 h
    python topic_b_distill_transfer.py --search-lr --channels full       # ~13 min
    python topic_b_distill_transfer.py --students same --channels full --seeds 0,1,2  # ~4.2 min a student, ~55 min
    python topic_b_distill_transfer.py --search-lr --channels hard       # ~18 min (~7 min of it sampling)
    python topic_b_distill_transfer.py --students same --channels hard --seeds 0,1,2  # ~4 min a student plus
                                     # sampling the teacher's lists (up to ~5 min per teacher and seed; about
                                     # half pass the filter, results' sampling_filter); ~1 h in all
    python topic_b_distill_transfer.py --students cross --channels hard --seeds 0,1,2  # the same cached lists, ~3.2 min a student
    python topic_b_distill_transfer.py --search-lr --channels sampled    # ~25 min (the init passes the filter far less often than the teachers)
    python topic_b_distill_transfer.py --students same --channels sampled --seeds 0,1,2  # ~3.5 min a student + ~30 min a
                                     # seed to sample the init's lists (about 6% pass the filter; ~4 min per round of 224)
    python topic_b_distill_transfer.py --students same --channels retrained  # ~5 min a student + ~2 min a teacher and seed
    python topic_b_distill_transfer.py --plot-only                       # summary and figure

writes results/topic_b_distill_transfer_<model>.json (every student's matrices, per seed, as it
finishes; rerunning resumes) and plots/topic_b_distill_transfer_<model>.png.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

import topic_a_utils as U
import topic_b_utils as B

KINDS = ("finetuned", "prompted")
STUDENTS = ("same", "cross")
# number: the number channel on random lists; sampled: the number channel on lists the unprompted
# init sampled; full: the full vocabulary on random lists (same-init only); hard: the teacher's own
# sampled, filtered lists as tokens (B.6's route); top-decile / rest: the number channel on random
# lists restricted to the positions where the fine-tuned animal teacher and the neutral one differ
# most (top 10% of per-position KL) / all the others, the same number of steps; retrained: the number
# channel on the same random lists, from fine-tuned teachers retrained for each seed (teacher seed
# RETRAIN_SEED + seed), so that the interval over seeds covers the teachers' training too.
CHANNELS = ("number", "sampled", "full", "hard", "top-decile", "rest", "retrained")
RETRAIN_SEED = 1000
MAX_ROUNDS = 16  # sampling rounds for the sampled and hard channels' lists


def suffix(channel: str, sep: str = " / ") -> str:
    """Point and summary keys carry the channel, except the number channel's (the first results)."""
    return "" if channel == "number" else f"{sep}{channel}"


def parse_args(argv=None):
    p = B.base_parser(__doc__, default_runs=5)
    B.set_help(p, runs="seeds per condition: each draws its own prompts and number lists (default 5)",
               model=f"the teachers' and same-init student's model (default {B.INSTRUCT_MODEL})",
               batch_size="sequences per forward pass when computing targets (default 16)")
    p.set_defaults(model=B.INSTRUCT_MODEL, batch_size=16)
    g = p.add_argument_group("topic_b_distill_transfer.py")
    g.add_argument("--animals", default="owl,eagle,dolphin", help="teacher animals, comma separated (default owl,eagle,dolphin)")
    g.add_argument("--neutral", default="Blue", help="the neutral teacher's answer to favourite-colour questions (default Blue)")
    g.add_argument("--kinds", default="finetuned", help=f"teacher kinds to run, comma separated, of {','.join(KINDS)} (default finetuned)")
    g.add_argument("--channels", default="number",
                   help=f"distillation channels, comma separated, of {','.join(CHANNELS)} (default number; see the "
                        "docstring; full is same-init only, top-decile, rest and retrained fine-tuned teachers only)")
    g.add_argument("--max-new-tokens", type=B.positive_int, default=60,
                   help="sampling length for the sampled and hard channels' lists (default 60)")
    g.add_argument("--students", default="same,cross", help="student models to run: same (the init) and/or cross "
                                                            "(--cross-model); default both")
    g.add_argument("--cross-model", default=B.EMBEDDED_MODEL, help=f"the cross-model student (default {B.EMBEDDED_MODEL})")
    g.add_argument("--examples", type=B.positive_int, default=96, help="distillation sequences per seed (default 96)")
    g.add_argument("--heldout", type=B.positive_int, default=16, help="held-out sequences per seed for the KL (default 16)")
    g.add_argument("--batch", type=B.positive_int, default=8, help="distillation batch, sequences (default 8)")
    g.add_argument("--epochs", type=U.positive_float, default=1.0, help="passes over --examples (default 1)")
    g.add_argument("--lr", type=U.positive_float, default=None,
                   help="AdamW peak lr (default: the one --search-lr chose, from its results file)")
    g.add_argument("--search-lr", action="store_true",
                   help="choose the lr of --channels on held-out distillation KL (owl fine-tuned teacher, its own "
                        "seed) and stop")
    g.add_argument("--lr-grid", default="1e-5,3e-5,1e-4,3e-4,1e-3", help="lrs tried by --search-lr (default 1e-5,3e-5,1e-4,3e-4,1e-3)")
    g.add_argument("--checkpoints", type=B.positive_int, default=4, help="evaluations along distillation (default 4)")
    g.add_argument("--teacher-steps", type=B.positive_int, default=20, help="fine-tuned teachers' steps (default 20)")
    g.add_argument("--teacher-batch", type=B.positive_int, default=8, help="fine-tuned teachers' batch (default 8)")
    g.add_argument("--teacher-lr", type=U.positive_float, default=5e-5, help="fine-tuned teachers' lr (default 5e-5)")
    g.add_argument("--seeds", default=None,
                   help="run only these seeds, in this order, comma separated (default 0..--runs-1); a second "
                        "process can take the seeds in another order and share the results file")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: run one process per core)")
    g.add_argument("--plot-only", action="store_true", help="summarise and redraw from the results file, no training")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = B.parse_common(p, argv)
    a.animals = [x.strip() for x in a.animals.split(",") if x.strip()]
    if len(a.animals) < 2 or len(set(a.animals)) != len(a.animals):
        p.error("--animals needs at least two different animals (specificity compares them)")
    a.kinds = [k.strip() for k in a.kinds.split(",")]
    a.students = [s.strip() for s in a.students.split(",")]
    if set(a.kinds) - set(KINDS):
        p.error(f"--kinds: unknown {sorted(set(a.kinds) - set(KINDS))}; choose from {','.join(KINDS)}")
    a.channels = [c.strip() for c in a.channels.split(",")]
    if set(a.channels) - set(CHANNELS):
        p.error(f"--channels: unknown {sorted(set(a.channels) - set(CHANNELS))}; choose from {','.join(CHANNELS)}")
    if a.search_lr and len(a.channels) != 1:
        p.error("--search-lr chooses the lr of one channel: give exactly one --channels")
    if set(a.students) - set(STUDENTS):
        p.error(f"--students: unknown {sorted(set(a.students) - set(STUDENTS))}; choose from {','.join(STUDENTS)}")
    try:
        a.lr_grid = [float(x) for x in a.lr_grid.split(",")]
    except ValueError:
        p.error(f"--lr-grid {a.lr_grid!r}: give numbers separated by commas")
    try:
        a.seeds = list(range(a.runs)) if a.seeds is None else [int(x) for x in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {a.seeds!r}: give integers separated by commas")
    if any(not 0 <= x < a.runs for x in a.seeds):
        p.error(f"--seeds must lie in 0..{a.runs - 1} (--runs {a.runs})")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.device.startswith("cuda") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        a.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # one GPU per process
    return a


digest = B.digest
cached = B.cached  # validated, locked, atomic: topic_b_utils.cached


class Experiment:
    """The models, teachers, inputs and targets of one configuration (all cached on disk)."""

    def __init__(self, a):
        self.a = a
        self.lm = B.load_model(a.model, a.device)
        self.tag = B.model_tag(self.lm)
        self.cache = Path(a.results_dir) / "cache" / f"distill_{self.tag}"
        self.init = {k: v.detach().clone() for k, v in self.lm.model.state_dict().items()}
        self.channel = B.channel_token_ids(self.lm)
        self.digit_cols = [self.channel.index(t) for t in B.channel_token_ids(self.lm, digits_only=True)]
        self.teachers = list(a.animals) + ["neutral"]
        self._cross = None
        self._deltas = None
        self.filter_counts = {}  # (kind, teacher, seed) -> how many sampled lists passed the filter

    # ---- teachers -------------------------------------------------------------------------------
    def teacher_key(self, name, tseed=None):
        """The fine-tuned teacher's recipe; ``tseed`` (the retrained channel's seed) retrains it with
        fine-tuning seed RETRAIN_SEED + tseed (batch order and sampling) instead of --seed."""
        a = self.a
        answer = a.neutral if name == "neutral" else name[:1].upper() + name[1:]
        qs = B.TEACHER_COLOR_QUESTIONS if name == "neutral" else B.TEACHER_ANIMAL_QUESTIONS
        return {"model": self.lm.name, "answer": answer, "questions": qs, "steps": a.teacher_steps,
                "batch": a.teacher_batch, "lr": a.teacher_lr,
                "seed": a.seed if tseed is None else RETRAIN_SEED + a.seed + tseed}

    def teacher_state(self, name, tseed=None) -> dict:
        """The fine-tuned teacher's weights (trained once, cached)."""
        key = self.teacher_key(name, tseed)

        def make():
            self.lm.model.load_state_dict(self.init)
            data = B.teacher_examples(self.lm, key["answer"], key["questions"])
            log = []
            B.finetune_tokens(self.lm, data, key["steps"], key["batch"], key["lr"], key["seed"],
                              progress=not self.a.no_progress, log=log,
                              desc=f"teacher {name}" + ("" if tseed is None else f" retrained s{tseed}"))
            st = {k: v.detach().clone() for k, v in self.lm.model.state_dict().items()}
            self.lm.model.load_state_dict(self.init)
            return {"state": st, "loss": log}
        return cached(self.cache / f"teacher_{name}_{digest(key)}.pt", key, make)

    def with_teacher(self, name, tseed=None):
        """Load a fine-tuned teacher's weights into self.lm (restore with self.restore())."""
        self.lm.model.load_state_dict(self.teacher_state(name, tseed)["state"])

    def restore(self):
        self.lm.model.load_state_dict(self.init)

    def deltas(self, tseed=None) -> dict:
        """Every fine-tuned teacher's update (teacher - init); one teacher set is kept in memory."""
        if self._deltas is None or self._deltas[0] != tseed:
            self._deltas = (tseed, {})
            for t in self.teachers:
                st = self.teacher_state(t, tseed)["state"]
                self._deltas[1][t] = {k: (st[k].float() - self.init[k].float()) for k in self.init
                                      if self.init[k].is_floating_point()}
        return self._deltas[1]

    # ---- inputs and targets ---------------------------------------------------------------------
    def inputs(self, seed):
        """(train, held-out) lists of (prompt, completion) for one seed: own prompts, own lists."""
        n = self.a.examples + self.a.heldout
        s = 7919 * (seed + 1) + self.a.seed
        pairs = list(zip(B.sequence_prompts(s, n), B.random_number_lists(s + 1, n)))
        return pairs[:self.a.examples], pairs[self.a.examples:]

    def items(self, lm, pairs, digits_only=False, system=None):
        return [B.channel_item(lm, B.render(lm, p, system), c, digits_only) for p, c in pairs]

    def sampled(self, seed, kind=None, teacher=None):
        """(train, held-out) (prompt, completion) pairs whose completions a model sampled (temperature
        1) and the paper's filter kept: the unprompted init's (kind None; the sampled channel's inputs)
        or a teacher's (the hard channel's labels). Rounds of twice the needed prompts are sampled
        (each round its own prompts) until enough completions pass, at most MAX_ROUNDS rounds (SmolLM2
        passes about a fifth); the first valid ones are kept, cached with the rejection count."""
        a = self.a
        n = a.examples + a.heldout
        s = 7919 * (seed + 1) + a.seed + 3
        key = {"kind": kind, "teacher": teacher, "seed": seed, "prompts": digest({"p": B.sequence_prompts(s, 2 * n)}),
               "rounds": f"until {n} pass, at most {MAX_ROUNDS}",
               "max_new_tokens": a.max_new_tokens, "model": self.lm.name,
               **({"teacher_key": digest(self.teacher_key(teacher))} if kind == "finetuned" else {})}

        def make():
            system = B.animal_system(teacher) if kind == "prompted" else None
            if kind == "finetuned":
                self.with_teacher(teacher)
            ok, sampled = [], 0
            try:
                for r in range(MAX_ROUNDS):
                    prompts = B.sequence_prompts(s + 104729 * r, 2 * n)
                    outs = B.sample_number_lists(self.lm, [B.render(self.lm, p, system) for p in prompts],
                                                 a.max_new_tokens, s + r, 1.0, a.batch_size,
                                                 progress=not a.no_progress,
                                                 desc=f"sample {kind or 'init'} {teacher or ''} s{seed} round {r + 1}")
                    sampled += len(prompts)
                    ok += [(p, c.strip()) for p, (c, _, nums) in zip(prompts, outs)
                           if nums is not None and self._tokenises(p, c.strip())]
                    if len(ok) >= n:
                        break
            finally:
                self.restore()
            return {"pairs": ok[:n], "accepted": len(ok), "sampled": sampled}
        d = cached(self.cache / f"sampled_{kind or 'init'}_{teacher or ''}_s{seed}_{digest(key)}.pt", key, make)
        self.filter_counts[(kind, teacher, seed)] = {"accepted": d["accepted"], "sampled": d["sampled"]}
        if len(d["pairs"]) < n:
            raise B.UserError(f"only {d['accepted']} of {d['sampled']} sampled lists passed the filter in {MAX_ROUNDS} "
                              f"rounds, {n} needed: lower --examples / --heldout or raise --max-new-tokens")
        return d["pairs"][:a.examples], d["pairs"][a.examples:]

    def _tokenises(self, prompt, completion) -> bool:
        """Whether a sampled completion tokenises the same inside the turn as alone (channel_item's
        requirement); the rare one that does not is dropped with the filter's rejects."""
        try:
            B.channel_item(self.lm, B.render(self.lm, prompt), completion)
            return True
        except B.UserError:
            return False

    def pairs(self, channel, seed, split, kind=None, teacher=None):
        if channel == "hard":
            both = self.sampled(seed, kind, teacher)
        elif channel == "sampled":
            both = self.sampled(seed)
        else:
            both = self.inputs(seed)
        return both[0 if split == "train" else 1]

    def targets(self, kind, teacher, seed, split, channel="number"):
        """A teacher's channel log-probabilities on one seed's train or held-out inputs (cached):
        over the number-list tokens, or (channel full) over the whole vocabulary, in float16."""
        pairs = self.pairs("sampled" if channel == "sampled" else "number", seed, split)
        full = channel == "full"
        tseed = seed if channel == "retrained" else None
        key = {"kind": kind, "teacher": teacher, "seed": seed, "split": split, "pairs": digest({"p": pairs}),
               "channel": "full vocabulary, float16" if full else self.channel,
               **({"teacher_key": digest(self.teacher_key(teacher, tseed))} if kind == "finetuned" else {})}

        def make():
            system = B.animal_system(teacher) if kind == "prompted" else None
            if kind == "finetuned":
                self.with_teacher(teacher, tseed)
            try:
                items = self.items(self.lm, pairs, system=system)
                return B.channel_targets(self.lm, items, None if full else self.channel, self.a.batch_size,
                                         progress=not self.a.no_progress, dtype=torch.float16 if full else torch.float32,
                                         desc=f"targets {kind} {teacher} s{seed} {split}{suffix(channel, ' ')}")
            finally:
                self.restore()
        name = "targets" if channel in ("number", "top-decile", "rest") else f"targets_{channel}"
        return cached(self.cache / f"{name}_{kind}_{teacher}_s{seed}_{split}_{digest(key)}.pt", key, make)

    def position_kl_vs_neutral(self, teacher, seed) -> list[np.ndarray]:
        """Per training item, the per-position KL(animal teacher || neutral teacher) of the number
        channel (fine-tuned teachers), the signal_positions measure."""
        tg, neu = self.targets("finetuned", teacher, seed, "train"), self.targets("finetuned", "neutral", seed, "train")
        return [B.channel_kl(p, q).numpy() for p, q in zip(tg, neu)]

    def restrict(self, channel, teacher, seed, items, tgt):
        """Items and targets restricted to the top-decile positions of KL vs the neutral teacher
        (over the seed's training positions), or to the rest."""
        kl = self.position_kl_vs_neutral(teacher, seed)
        cut = np.quantile(np.concatenate(kl), 0.9)
        out_i, out_t = [], []
        for it, t, k in zip(items, tgt, kl):
            keep = (k >= cut) if channel == "top-decile" else (k < cut)
            if keep.any():
                idx = np.flatnonzero(keep)
                out_i.append(B.ChannelItem(it.ids, [it.pos[j] for j in idx],
                                           None if it.chars is None else [it.chars[j] for j in idx]))
                out_t.append(t[torch.as_tensor(idx)])
        return out_i, out_t

    def cross(self):
        if self._cross is None:
            self._cross = B.load_model(self.a.cross_model, self.a.device)
            self._cross_init = {k: v.detach().clone() for k, v in self._cross.model.state_dict().items()}
        return self._cross

    def student_data(self, student, kind, teacher, seed, split, channel="number"):
        """(student model, items, targets, channel) for one student's training or held-out set.
        Held-out sets are never restricted (top-decile / rest are judged on every position)."""
        lm = self.lm if student == "same" else self.cross()
        if channel == "hard":  # the teacher's sampled lists, as the student's own tokens
            items = self.items(lm, self.pairs("hard", seed, split, kind, teacher))
            return lm, items, [B.hard_targets(it) for it in items], None
        if channel in ("full", "top-decile", "rest") and student != "same":
            raise B.UserError(f"the {channel} channel is run on same-init students only")
        pairs = self.pairs("sampled" if channel == "sampled" else "number", seed, split)
        tgt = self.targets(kind, teacher, seed, split, channel)
        src = self.items(self.lm, pairs)
        if channel in ("top-decile", "rest") and split == "train":
            src, tgt = self.restrict(channel, teacher, seed, src, tgt)
        if student == "same":
            return self.lm, src, tgt, None if channel == "full" else self.channel
        dst = self.items(lm, pairs, digits_only=True)
        tgt = [B.align_digit_targets(s, t, self.digit_cols, d) for s, t, d in zip(src, tgt, dst)]
        return lm, dst, tgt, B.channel_token_ids(lm, digits_only=True)

    # ---- measures -------------------------------------------------------------------------------
    def matrix(self, lm, system=None) -> list[list[float]]:
        return B.animal_matrix(lm, B.FAVORITE_QUESTIONS, self.a.animals, system).tolist()


def lr_path(a, tag, channel):
    return f"{a.results_dir}/topic_b_distill_lr_{tag}{suffix(channel, '_')}.json"


def lr_of(a, tag, channel):
    """The lr of a channel: --lr, else its own search's; top-decile and rest use the number
    channel's (the same objective on a subset of its positions), and so does retrained (the same
    objective from other teachers)."""
    if a.lr is not None:
        return a.lr, "given by --lr"
    own = "number" if channel in ("top-decile", "rest", "retrained") else channel
    path = lr_path(a, tag, own)
    d = U.load_json(path)
    if d is None or "chosen_lr" not in d:
        raise B.UserError(f"no lr chosen yet for the {own} channel: run `python topic_b_distill_transfer.py --search-lr "
                          f"--channels {own}` first, or give --lr")
    return d["chosen_lr"], f"chosen by --search-lr on held-out KL ({path})"


def search_lr(E: Experiment, a, t0):
    """Each lr of the grid distils the same-init student on the owl fine-tuned teacher (a seed no
    experiment uses) for the experiment's number of steps; the lowest held-out KL wins."""
    seed = 1000
    teacher = a.animals[0]
    channel = a.channels[0]
    steps = max(1, int(round(a.epochs * a.examples / a.batch)))
    lm, items, tgt, ch = E.student_data("same", "finetuned", teacher, seed, "train", channel)
    _, h_items, h_tgt, _ = E.student_data("same", "finetuned", teacher, seed, "heldout", channel)
    cfg = {"model": E.lm.name, "teacher": teacher, "examples": a.examples, "heldout": a.heldout,
           "batch": a.batch, "steps": steps, "seed": seed, "teacher_key": digest(E.teacher_key(teacher))}
    if channel != "number":  # the number channel's key is the first search's, unchanged
        cfg["channel"] = channel
    sweep = U.Sweep(lr_path(a, E.tag, channel), cfg, a, t0)
    before = sweep.run("before", lambda: {"heldout_kl": B.mean_channel_kl(lm, h_items, h_tgt, ch)})
    for lr in a.lr_grid:
        def point(lr=lr):
            E.restore()
            log = []
            B.distill_channel(lm, items, tgt, ch, steps, a.batch, lr, seed, log=log, desc=f"lr {lr:g}",
                              progress=not a.no_progress)
            out = {"heldout_kl": B.mean_channel_kl(lm, h_items, h_tgt, ch), "train_loss": [x for _, x in log]}
            E.restore()
            return out
        sweep.run(f"lr {lr:g}", point)
    res = {lr: sweep.points[f"lr {lr:g}"]["heldout_kl"] for lr in a.lr_grid}
    best = min(res, key=res.get)
    sweep.save(chosen_lr=best, heldout_kl_by_lr={f"{k:g}": v for k, v in res.items()},
               heldout_kl_before=before["heldout_kl"],
               rule="lowest mean held-out KL(teacher || student) per channel position after the run's steps "
                    "(cross-entropy of the teacher's sampled tokens for the hard channel)")
    print(f"held-out KL before {before['heldout_kl']:.5f}; " + ", ".join(f"lr {k:g}: {v:.5f}" for k, v in res.items())
          + f" -> lr {best:g}")


def run_student(E: Experiment, a, kind, teacher, student, seed, lr, steps, channel="number"):
    lm, items, tgt, ch = E.student_data(student, kind, teacher, seed, "train", channel)
    _, h_items, h_tgt, _ = E.student_data(student, kind, teacher, seed, "heldout", channel)
    init = E.init if student == "same" else E._cross_init
    # the teachers' updates first: a teacher missing from the cache is trained in E.lm, which would
    # otherwise overwrite the trained student's weights before its update cosine is taken
    deltas = E.deltas(seed if channel == "retrained" else None) if student == "same" else None
    lm.model.load_state_dict(init)
    at = sorted({max(1, int(round(steps * (i + 1) / a.checkpoints))) for i in range(a.checkpoints)})
    along = {}
    along_kl = {}

    def on_step(s):
        along[str(s)] = np.mean(E.matrix(lm), 0).tolist()
    kl0 = B.mean_channel_kl(lm, h_items, h_tgt, ch)
    log = []
    B.distill_channel(lm, items, tgt, ch, steps, a.batch, lr, 100 * seed + 17, at_steps=at, on_step=on_step,
                      log=log, desc=f"{kind} {teacher} -> {student} s{seed}{suffix(channel, ' ')}",
                      progress=not a.no_progress)
    along_kl["0"] = kl0
    along_kl[str(steps)] = B.mean_channel_kl(lm, h_items, h_tgt, ch)
    final = E.matrix(lm)
    out = {"matrix_after": final, "mean_after": np.mean(final, 0).tolist(), "along": along,
           "heldout_kl": along_kl, "train_loss": [x for _, x in log], "positions": sum(len(i.pos) for i in items),
           "lr": lr}
    if channel in ("hard", "sampled"):  # the paper's filter on the sampled lists
        out["filter"] = E.filter_counts[(kind, teacher, seed) if channel == "hard" else (None, None, seed)]
    if student == "same":
        st = {k: v.detach() for k, v in lm.model.state_dict().items()}
        out["update_cosine"] = B.update_cosines(E.init, st, deltas)
    lm.model.load_state_dict(init)
    return out


def signal_positions(E: Experiment, a, seed):
    """Per-position KL between each animal teacher and the neutral one (fine-tuned), on one seed's
    training inputs, by the kind of token the position predicts."""
    pairs = E.inputs(seed)[0]
    items = E.items(E.lm, pairs)
    neu = E.targets("finetuned", "neutral", seed, "train")
    tok = E.lm.tokenizer
    out = {}
    for t in a.animals:
        tg = E.targets("finetuned", t, seed, "train")
        kl, kinds = [], []
        for it, p, q in zip(items, tg, neu):
            kl += B.channel_kl(p, q).tolist()
            for pos in it.pos:
                nxt = tok.decode([it.ids[pos + 1]])
                kinds.append("digit" if nxt.strip().isdigit() else "separator" if nxt.strip() in (",", "") and nxt != "\n"
                             else "end of turn")
        kl = np.array(kl)
        top = kl >= np.quantile(kl, 0.9)
        out[t] = {"mean_kl": float(kl.mean()), "top_decile_share_of_kl": float(kl[top].sum() / kl.sum()),
                  "by_token": {k: float(kl[[x == k for x in kinds]].mean()) for k in sorted(set(kinds))},
                  "n_positions": int(len(kl))}
    return out


def summarise(P, a, animals):
    """Gains, confusion matrices, gamma and drift per (kind, student, channel), over seeds."""
    out = {}
    for channel in CHANNELS:
        for kind in KINDS:
            for student in STUDENTS:
                def key(t, s, kind=kind, student=student, channel=channel):
                    return f"{kind} / {t} / {student} / seed {s}{suffix(channel)}"
                before = P.get(f"before / {student}")
                seeds = [s for s in range(a.runs)
                         if all(key(t, s) in P for t in animals)]
                if before is None or len(seeds) < 2:
                    continue
                b = np.mean(before["matrix"], 0)
                teachers = list(animals) + (["neutral"] if kind == "finetuned" and channel not in ("top-decile", "rest") else [])
                gains = {s: {t: dict(zip(animals, np.array(P[key(t, s)]["mean_after"]) - b))
                             for t in teachers if key(t, s) in P} for s in seeds}
                gam = [B.specificity(gains[s], animals) for s in seeds]
                cell = {t: {x: U.mean_ci([gains[s][t][x] for s in seeds if t in gains[s]]) for x in animals}
                        for t in teachers if all(t in gains[s] for s in seeds)}
                steps_along = sorted({int(k) for s in seeds for k in P[key(animals[0], s)]["along"]})
                dose = {}
                for k in [0] + steps_along:
                    per = []
                    for s in seeds:
                        g = {t: dict(zip(animals, (np.array(P[key(t, s)]["along"][str(k)]) - b)
                                         if k else np.zeros(len(animals)))) for t in animals}
                        per.append(B.specificity(g, animals)["mean"])
                    dose[str(k)] = U.mean_ci(per) if k else {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": len(seeds)}
                n_steps = len(P[key(animals[0], seeds[0])]["train_loss"])
                res = {"n_seeds": len(seeds), "seeds": seeds, "before_mean_log10": dict(zip(animals, b.tolist())),
                       "gamma": U.mean_ci([g["mean"] for g in gam]),
                       "gamma_per_animal": {x: U.mean_ci([g["per_animal"][x] for g in gam]) for x in animals},
                       "gamma_per_seed": [g["mean"] for g in gam], "confusion_gain": cell, "dose_response_gamma": dose,
                       "dose_response_lr_fraction": B.cumulative_lr_fraction(n_steps, [int(k) for k in dose]),
                       "lr_schedule_factors": [B.distill_lr_factor(i, n_steps) for i in range(n_steps)]}
                res.update(teacher_label_analysis(gains, seeds, animals, teachers))
                losses = np.array([P[key(t, s)]["train_loss"] for s in seeds for t in teachers if key(t, s) in P])
                res["train_loss_by_step"] = {"mean": losses.mean(0).tolist(), "max": losses.max(0).tolist()}
                if "neutral" in cell:
                    res["own_minus_neutral"] = {x: U.paired_ci([gains[s][x][x] for s in seeds],
                                                               [gains[s]["neutral"][x] for s in seeds]) for x in animals}
                kls = [P[key(t, s)]["heldout_kl"] for s in seeds for t in animals]
                res["heldout_kl_before_after"] = {"before": U.mean_ci([k["0"] for k in kls]),
                                                  "after": U.mean_ci([k[max(k, key=int)] for k in kls])}
                if student == "same":
                    cos = {}
                    for t in animals:
                        pts = [P[key(t, s)]["update_cosine"] for s in seeds]
                        groups = list(pts[0][t])
                        own = {g: [p[t][g] for p in pts] for g in groups}
                        oth = {g: [np.mean([p[o][g] for o in animals if o != t]) for p in pts] for g in groups}
                        neu = {g: [p["neutral"][g] for p in pts] for g in groups}
                        cos[t] = {g: {"own": U.mean_ci(own[g]), "other_animals": U.mean_ci(oth[g]),
                                      "neutral": U.mean_ci(neu[g]), "own_minus_other": U.paired_ci(own[g], oth[g])}
                                  for g in groups}
                    res["update_cosine"] = cos
                    res["update_cosine_all_own_minus_other"] = U.mean_ci(
                        [np.mean([P[key(t, s)]["update_cosine"][t]["all"]
                                  - np.mean([P[key(t, s)]["update_cosine"][o]["all"]
                                             for o in animals if o != t]) for t in animals]) for s in seeds])
                out[f"{kind}, {student}{suffix(channel, ', ')}"] = res  # no "/" in result keys: WRITEUP marks address keys by "/"
    paired_channel_differences(out)
    return out


def teacher_label_analysis(gains: dict, seeds, animals, teachers) -> dict:
    """What gamma's interval over seeds does not cover: the teachers. The teacher-label permutation
    test (topic_b_utils.teacher_label_permutation); per-animal gamma with each student's mean gain
    over the animals (its teacher-wide drift) removed first, and that drift per teacher; each
    animal's gamma per seed; gamma with each seed left out in turn (how much one seed carries)."""
    per_seed = [gains[s] for s in seeds]
    centred = [B.specificity(B.row_centred(g, animals), animals) for g in per_seed]
    out = {"teacher_label_permutation": B.teacher_label_permutation(per_seed, animals),
           "gamma_per_animal_row_centred": {x: U.mean_ci([c["per_animal"][x] for c in centred]) for x in animals},
           "student_mean_gain": {t: U.mean_ci([np.mean([g[t][x] for x in animals]) for g in per_seed])
                                 for t in teachers if all(t in g for g in per_seed)},
           "gamma_per_animal_per_seed": {x: [B.specificity(g, animals)["per_animal"][x] for g in per_seed]
                                         for x in animals}}
    if len(seeds) >= 3:
        out["gamma_leave_one_seed_out"] = {
            f"without seed {s}": U.mean_ci([B.specificity(gains[r], animals)["mean"] for r in seeds if r != s])
            for s in seeds}
    return out


def paired_channel_differences(out: dict) -> None:
    """Each other channel's gamma minus the number channel's (same kind and student), and the top
    decile's minus the rest's, paired over the seeds both ran: a seed fixes the teachers, the init
    and (for full, top-decile and rest) the very inputs, so the difference is the channel's."""
    def against(k, base, name):
        if k not in out or base not in out:
            return
        per = {b: dict(zip(out[b]["seeds"], out[b]["gamma_per_seed"])) for b in (k, base)}
        seeds = [s for s in per[k] if s in per[base]]
        if len(seeds) >= 2:
            out[k][name] = {**U.paired_ci([per[k][s] for s in seeds], [per[base][s] for s in seeds]), "seeds": seeds}
    for k in list(out):
        kind, student, *ch = k.split(", ")
        if ch:
            against(k, f"{kind}, {student}", "gamma_minus_number_channel")
    for student in STUDENTS:
        against(f"finetuned, {student}, top-decile", f"finetuned, {student}, rest", "gamma_minus_rest")


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    if a.plot_only:
        return finish(a, t0)
    E = Experiment(a)
    if a.search_lr:
        return search_lr(E, a, t0)
    lr, lr_how = lr_of(a, E.tag, "number")  # in the sweep's key: the number channel's lr
    lrs = {c: lr_of(a, E.tag, c)[0] for c in a.channels}
    steps = max(1, int(round(a.epochs * a.examples / a.batch)))
    sweep = U.Sweep(result_path(a, E.tag), config(a, E, lr, steps), a, t0)
    rank, _ = B.data_parallel()
    if rank > 0:  # only rank 0 writes; the others take part in the steps
        sweep.save = lambda **kw: None
    for t in E.teachers:
        sweep.run(f"teacher / finetuned / {t}", lambda t=t: teacher_point(E, t))
    for t in a.animals:
        sweep.run(f"teacher / prompted / {t}", lambda t=t: {"matrix": E.matrix(E.lm, B.animal_system(t))})
    for student in a.students:
        lm = E.lm if student == "same" else E.cross()
        sweep.run(f"before / {student}", lambda lm=lm: {"matrix": E.matrix(lm)})
    for channel in a.channels:
        for kind in a.kinds:
            if channel in ("top-decile", "rest", "retrained") and kind != "finetuned":
                print(f"[{channel}] fine-tuned teachers only (" + ("a prompted teacher has no training to redo"
                      if channel == "retrained" else "the positions are those where an animal teacher and the neutral "
                      "one differ") + f"): skipping {kind}")
                continue
            students = [x for x in a.students if x == "same" or channel not in ("full", "top-decile", "rest")]
            if students != a.students:
                print(f"[{channel}] same-init students only: skipping {sorted(set(a.students) - set(students))}")
            for seed in a.seeds:
                if kind == "finetuned" and channel in ("number", "top-decile", "rest"):
                    sweep.run(f"signal positions / seed {seed}", lambda seed=seed: signal_positions(E, a, seed))
                if channel == "retrained":  # each retrained teacher's own preferences
                    for t in E.teachers:
                        sweep.run(f"teacher / finetuned / {t} / seed {seed} / retrained",
                                  lambda t=t, seed=seed: teacher_point(E, t, seed))
                for student in students:
                    for t in teachers_of(E, a, kind, channel):
                        sweep.run(f"{kind} / {t} / {student} / seed {seed}{suffix(channel)}",
                                  lambda kind=kind, t=t, student=student, seed=seed, channel=channel:
                                  run_student(E, a, kind, t, student, seed, lrs[channel], steps, channel))
    sweep.save(lr_how=lr_how)
    if rank == 0:
        finish(a, t0, sweep, E.tag)


def teachers_of(E, a, kind, channel):
    """The teachers a condition distils: the neutral one only for fine-tuned teachers, and not
    where positions are chosen by their difference from it."""
    if kind == "prompted" or channel in ("top-decile", "rest"):
        return list(a.animals)
    return list(E.teachers)


def teacher_point(E, t, tseed=None):
    d = E.teacher_state(t, tseed)
    E.with_teacher(t, tseed)
    try:
        m = E.matrix(E.lm)
    finally:
        E.restore()
    return {"matrix": m, "loss_first": d["loss"][0][1], "loss_last": d["loss"][-1][1]}


def result_path(a, tag):
    return f"{a.results_dir}/topic_b_distill_transfer_{tag}.json"


def config(a, E, lr, steps):
    return {"model": E.lm.name, "cross_model": a.cross_model, "animals": a.animals, "neutral": a.neutral,
            "examples": a.examples, "heldout": a.heldout, "batch": a.batch, "steps": steps, "lr": lr,
            "teacher_steps": a.teacher_steps, "teacher_batch": a.teacher_batch, "teacher_lr": a.teacher_lr,
            "seed": a.seed, "checkpoints": a.checkpoints, "channel": E.channel,
            "channel_text": [E.lm.tokenizer.decode([t]) for t in E.channel]}


def finish(a, t0, sweep=None, tag=None):
    tag = tag or B.model_tag(B.StoredModel(a.model))
    P, cfg = B.sweep_points(result_path(a, tag), sweep)
    animals = cfg["animals"]
    summary = summarise(P, a, animals)
    teachers = {f"{k}, {t}": dict(zip(animals, np.mean(P[f"teacher / {k} / {t}"]["matrix"], 0).tolist()))
                for k in KINDS for t in animals + (["neutral"] if k == "finetuned" else [])
                if f"teacher / {k} / {t}" in P}
    retrained = {}  # per seed's retrained teachers: their own mean log10 P per animal, over seeds
    for t in animals + ["neutral"]:
        per = [np.mean(P[k]["matrix"], 0) for k in P
               if k.startswith(f"teacher / finetuned / {t} / seed ") and k.endswith(" / retrained")]
        if len(per) >= 2:
            retrained[f"finetuned, {t}"] = {x: U.mean_ci([p[i] for p in per]) for i, x in enumerate(animals)}
    sig = [P[k] for k in P if k.startswith("signal positions")]
    signal = {t: {"top_decile_share_of_kl": U.mean_ci([s[t]["top_decile_share_of_kl"] for s in sig]),
                  "mean_kl": U.mean_ci([s[t]["mean_kl"] for s in sig]),
                  "by_token": {k: U.mean_ci([s[t]["by_token"][k] for s in sig]) for k in sig[0][t]["by_token"]}}
              for t in animals} if len(sig) >= 2 else {}
    summary_filter = sampling_filter(P)
    B.save_summary(result_path(a, tag), sweep, summary=summary, teacher_preferences_log10=teachers,
                   signal_positions=signal, sampling_filter=summary_filter, retrained_teacher_preferences_log10=retrained)
    for k, r in summary.items():
        g = r["gamma"]
        print(f"{k:<22} gamma {g['mean']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}] (n = {r['n_seeds']} seeds)")
    if summary:
        plot(summary, teachers, cfg, f"{a.plots_dir}/topic_b_distill_transfer_{tag}.png")


def sampling_filter(P) -> dict:
    """How many sampled lists the paper's filter passed, per channel (hard: the teachers' lists;
    sampled: the init's), each list set counted once (a same-init and a cross student share it)."""
    out = {}
    for ch in ("hard", "sampled"):
        sets = {}
        for k, v in P.items():
            if k.endswith(f" / {ch}") and "filter" in v:
                kind, teacher, _, seed = k.split(" / ")[:4]
                sets[(kind, teacher, seed) if ch == "hard" else seed] = v["filter"]
        if sets:
            acc, sam = sum(x["accepted"] for x in sets.values()), sum(x["sampled"] for x in sets.values())
            out[ch] = {"list_sets": len(sets), "accepted": acc, "sampled": sam, "pass_rate": acc / sam}
    return out


def plot(summary, teachers, cfg, path):
    plt = B._plt()
    animals = cfg["animals"]
    fig, ax_ = plt.subplot_mosaic([["g", "g"], ["d", "d"], ["c", "u"]], figsize=(16, 17),
                                  gridspec_kw={"height_ratios": [1, 0.9, 1.1]})
    axes = np.array([[ax_["g"], ax_["d"]], [ax_["c"], ax_["u"]]])
    keys = sorted(summary, key=lambda k: (CHANNELS.index(k.split(", ")[2]) if k.count(", ") == 2 else 0,
                                          KINDS.index(k.split(", ")[0]), STUDENTS.index(k.split(", ")[1])))

    def name(k):
        kind, student, *ch = k.split(", ")
        tail = ("" if not ch else f",\n{ch[0]} positions" if ch[0] in ("top-decile", "rest")
                else ",\nteachers retrained\nper seed" if ch[0] == "retrained"
                else ",\nthe init's sampled lists" if ch[0] == "sampled" else f",\n{ch[0]} channel")
        return (f"{'fine-tuned' if kind == 'finetuned' else kind} teachers,\n"
                f"{'same-init' if student == 'same' else 'cross-model'} student" + tail)
    names = {k: name(k) for k in keys}
    # one colour per condition; the update-alignment bars use black, grey and white, none of these
    palette = ["C3", "C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9", "navy", "darkgoldenrod", "teal"]
    colors = {k: palette[i % len(palette)] for i, k in enumerate(keys)}
    ax = axes[0, 0]
    for i, k in enumerate(keys):
        g = summary[k]["gamma"]
        ax.errorbar(i, g["mean"], yerr=[[g["mean"] - g["ci_low"]], [g["ci_high"] - g["mean"]]], fmt="o", color=colors[k],
                    capsize=6, ms=8)
        ax.scatter(np.full(len(summary[k]["gamma_per_seed"]), i + 0.12), summary[k]["gamma_per_seed"], s=12,
                   color=colors[k], alpha=0.5)
        perm = summary[k]["teacher_label_permutation"]
        ax.text(i + 0.18, g["mean"], f"{g['mean']:+.3f}\n[{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]\nn = {g['n']}\n"
                f"p = {perm['p']:.2f}", va="center", fontsize=8)
    ax.axhline(0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([names[k] for k in keys], fontsize=8)
    ax.set_xlim(-0.5, len(keys) + 0.1)
    ax.set_ylabel("specificity gamma (log10 P, own-animal gain minus\nother animals' students' gain for it)")
    n_perm = summary[keys[0]]["teacher_label_permutation"]["n_relabellings"]
    ax.set_title("gamma: mean over seeds with 95% t-CI (dots: seeds); dashed: no specificity; p: teacher-label permutation "
                 f"test (all {n_perm} relabellings of the teachers, the same for every seed; one-sided; smallest possible "
                 f"p 1/{n_perm})\n(number channel on random lists unless another channel is named)", fontsize=9)
    ax = axes[0, 1]
    for k in keys:
        dr = summary[k]["dose_response_gamma"]
        xs = sorted(int(s) for s in dr)
        m = np.array([dr[str(s)]["mean"] for s in xs])
        lo = np.array([dr[str(s)]["ci_low"] for s in xs])
        hi = np.array([dr[str(s)]["ci_high"] for s in xs])
        ax.plot(xs, m, "o-", color=colors[k], label=names[k].replace("\n", " "))
        ax.fill_between(xs, lo, hi, color=colors[k], alpha=0.15)
    ax.axhline(0, color="gray", lw=0.8, ls="--")
    frac = summary[keys[0]]["dose_response_lr_fraction"]
    ticks = sorted(int(x) for x in frac)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{x}\n({frac[str(x)]:.2f})" for x in ticks])
    ax.set_xlabel(f"distillation step (batch {cfg['batch']} sequences); in brackets: the share of the run's summed lr "
                  "spent by then (warm-up of one step, linear decay)")
    ax.set_ylabel("gamma (log10 P)")
    ax.set_title("dose-response: gamma along distillation (band: 95% t-CI over seeds); under a decaying lr it measures the schedule",
                 fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax = axes[1, 0]
    k = keys[0]
    cell = summary[k]["confusion_gain"]
    rows = [t for t in animals + ["neutral"] if t in cell]
    M = np.array([[cell[t][x]["mean"] for x in animals] for t in rows])
    v = max(np.abs(M).max(), 1e-6)
    im = ax.imshow(M, cmap="RdBu_r", vmin=-v, vmax=v)
    for i, t in enumerate(rows):
        for j, x in enumerate(animals):
            c = cell[t][x]
            ax.text(j, i, f"{c['mean']:+.3f}\n[{c['ci_low']:+.3f},\n{c['ci_high']:+.3f}]", ha="center", va="center",
                    fontsize=8, color="white" if abs(c["mean"]) > 0.6 * v else "black")
    ax.set_xticks(range(len(animals)))
    ax.set_xticklabels([f"P({x})" for x in animals])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{t} teacher's student" for t in rows])
    fig.colorbar(im, ax=ax, label="change in mean log10 P(answer starts with animal)")
    ax.set_title(f"confusion matrix ({names[k].replace(chr(10), ' ')}): gain after minus before,\n"
                 f"mean over n = {summary[k]['n_seeds']} seeds, 95% t-CI", fontsize=9)
    ax = axes[1, 1]
    if "update_cosine" in summary.get("finetuned, same", {}):
        cos = summary["finetuned, same"]["update_cosine"]
        groups = [g for g in ("all", "embedding", "attention", "mlp", "norms") if g in cos[animals[0]]]
        w = 0.25
        for j, (which, col, hatch, lab) in enumerate((("own", "k", "", "own teacher's update"),
                                                      ("other_animals", "0.6", "", "other animal teachers' updates (mean)"),
                                                      ("neutral", "white", "//", "neutral teacher's update"))):
            m = [np.mean([cos[t][g][which]["mean"] for t in animals]) for g in groups]
            ax.bar(np.arange(len(groups)) + (j - 1) * w, m, w, color=col, hatch=hatch, label=lab, edgecolor="k")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_ylabel("cosine(student - init, teacher - init)")
        d = summary["finetuned, same"]["update_cosine_all_own_minus_other"]
        ax.set_title(f"update alignment (fine-tuned teachers, same-init students), mean over animals and seeds\n"
                     f"own minus other, all parameters, paired over n = {d['n']} seeds: {d['mean']:+.4f} "
                     f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]", fontsize=9)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    tp = "; ".join(f"{t.split(', ')[1]} {10 ** v[t.split(', ')[1]]:.4f}" for t, v in teachers.items()
                   if t.startswith("finetuned") and t.split(", ")[1] in v)
    fig.suptitle(f"Distillation through the number channel: {cfg['model'].split(' ')[0]} teachers; "
                 f"{cfg['examples']} random number lists per seed, {cfg['steps']} steps\n"
                 f"(other channels as named); fine-tuned teachers' own P(answer starts with their animal), geometric mean over the 24 questions: {tp}",
                 fontsize=11)
    fig.tight_layout()
    B.save_fig(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    B.run_main(main)

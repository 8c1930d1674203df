"""B.7, decisively: does a language model pick up a teacher's animal through the number channel,
with independently fine-tuned teachers as the unit of analysis, a budget where the effect can grow,
and a cross-model student at the same budget?

Teacher pairs. Pair i is an owl teacher and an eagle teacher (--animals), both SmolLM2-135M-Instruct
(--model) fine-tuned, every parameter, from the same init to answer the pair's own favourite-animal
questions (topic_b_utils.teacher_question_sets: disjoint across pairs, none an evaluation question)
with their animal, with the pair's own fine-tuning seed: within a pair only the animal differs,
between pairs the questions and the seed differ. The recipe (lr) is chosen by --search on a
teacher's held-out answer loss on questions it did not train on, never on transfer.
Students. Per teacher: the same init ("same", the number-list tokens at every completion position,
renormalised; KL(teacher || student)) and Gemma 3 270M base ("cross", --cross-model, the ten digits
at the positions that predict a digit, aligned by character), on the pair's own random number lists
(each list seen once), AdamW at a constant lr after --warmup steps, each student model's lr chosen by
--search on its own held-out channel KL at the full budget, on a search pair no result uses.
Measure. Every student's mean log10 P(answer starts with the animal) over the 24 evaluation
questions at log-spaced --checkpoints. Per pair the double-centred interaction
gamma_i = [(owl student's owl gain - eagle student's owl gain) + (eagle student's eagle gain - owl
student's eagle gain)] / 2 (topic_b_utils.specificity), its mean and t-interval over pairs, the
exact sign-flip p over pairs, the smallest mean detectable at 80% power given the spread between
pairs, and same-init minus cross-model paired by pair, at every checkpoint.

    python topic_b_distill_pairs.py --search            # teacher lr, then the students' lrs (per --students)
    python topic_b_distill_pairs.py --teachers-only     # optional: the teachers' own preferences first
    python topic_b_distill_pairs.py --students same &   # one process per core; they share the results file
    python topic_b_distill_pairs.py --students cross
    python topic_b_distill_pairs.py --plot-only         # summary and figure

writes results/topic_b_distill_pairs_<model>.json (every teacher's and student's point as it
finishes; rerunning resumes), results/topic_b_distill_pairs_search_<model>.json (the searches) and
plots/topic_b_distill_pairs_<model>.png.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from scipy import stats
import torch

import topic_a_utils as U
import topic_b_utils as B

# The student conditions: rows the code reads. "model": the init of the teachers or --cross-model;
# "digits_only": the channel (False: every number-list token at every completion position; True:
# the ten digits at digit positions, the cross-model student's, aligned by character); "lr": the
# flag that overrides the searched lr; "grid": the flag of its search grid.
STUDENTS = {
    "same": {"label": "same-init student (SmolLM2)", "model": "teacher init", "digits_only": False,
             "lr": "lr", "grid": "lr_grid"},
    "cross": {"label": "cross-model student (Gemma 3 270M)", "model": "cross", "digits_only": True,
              "lr": "cross_lr", "grid": "cross_lr_grid"},
}
MAX_PAIRS = 12          # question sets 0..11 belong to the pairs
SEARCH_SET = MAX_PAIRS  # the search pair's teachers train on set 12 ...
HELDOUT_SET = MAX_PAIRS + 1  # ... and every recipe is judged on set 13, which no teacher trains on
TEACHER_SEED = 2000     # pair i fine-tunes with seed 2000 + i; the search pair with 2000 + 99


def parse_args(argv=None):
    p = B.base_parser(__doc__, default_runs=8)
    B.set_help(p, runs=f"teacher pairs (default 8, at most {MAX_PAIRS}): the unit the intervals are over",
               model=f"the teachers' and same-init student's model (default {B.INSTRUCT_MODEL})",
               batch_size="sequences per forward pass when computing targets (default 16)")
    p.set_defaults(model=B.INSTRUCT_MODEL, batch_size=16)
    g = p.add_argument_group("topic_b_distill_pairs.py")
    g.add_argument("--animals", default="owl,eagle", help="the two teacher animals of every pair (default owl,eagle)")
    g.add_argument("--students", default="same,cross", help=f"student conditions, comma separated, of {','.join(STUDENTS)}")
    g.add_argument("--cross-model", default=B.EMBEDDED_MODEL, help=f"the cross-model student (default {B.EMBEDDED_MODEL})")
    g.add_argument("--pairs", default=None, help="run only these pairs, in this order, comma separated (default "
                                                 "0..--runs-1); another process can take them in another order")
    g.add_argument("--questions", type=B.positive_int, default=16, help="training questions per teacher (default 16)")
    g.add_argument("--teacher-steps", type=B.positive_int, default=20, help="teachers' steps (default 20)")
    g.add_argument("--teacher-batch", type=B.positive_int, default=8, help="teachers' batch (default 8)")
    g.add_argument("--teacher-lr", type=U.positive_float, default=None,
                   help="teachers' AdamW lr (default: the one --search chose on held-out answer loss)")
    g.add_argument("--teacher-lr-grid", default="2e-5,5e-5,1e-4,2e-4", help="teacher lrs --search tries")
    g.add_argument("--steps", type=B.positive_int, default=320, help="student updates (default 320)")
    g.add_argument("--batch", type=B.positive_int, default=2, help="sequences per student update (default 2)")
    g.add_argument("--list-length", type=B.positive_int, default=30,
                   help="random numbers per list (default 30; the prompt asks for that many)")
    g.add_argument("--prompt", choices=("short", "paper"), default="short",
                   help="the task before each list: short (one sentence, default; the supervised completion is most of "
                        "the sequence) or the paper's number-continuation prompt")
    g.add_argument("--heldout", type=B.positive_int, default=32, help="held-out sequences per pair for the KL (default 32)")
    g.add_argument("--warmup", type=B.positive_int, default=10, help="linear warm-up steps, then a constant lr (default 10)")
    g.add_argument("--checkpoints", default="5,10,20,40,80,160,320",
                   help="updates after which every student is evaluated (default 5,10,20,40,80,160,320)")
    g.add_argument("--lr", type=U.positive_float, default=None, help="same-init students' lr (default: searched)")
    g.add_argument("--cross-lr", type=U.positive_float, default=None, help="cross-model students' lr (default: searched)")
    g.add_argument("--lr-grid", default="1e-6,3e-6,1e-5,3e-5",
                   help="same-init lrs --search tries (default 1e-6,3e-6,1e-5,3e-5: the first grid, 1e-5,3e-5,1e-4, put "
                        "the lowest KL at its edge, so it was extended down, twice, and 1e-4 dropped)")
    g.add_argument("--cross-lr-grid", default="3e-6,1e-5,3e-5", help="cross-model lrs --search tries (default 3e-6,1e-5,3e-5)")
    g.add_argument("--search", action="store_true", help="choose the teacher lr, then each --students lr, and stop")
    g.add_argument("--teachers-only", action="store_true",
                   help="train and record every pair's teachers (their own preferences and held-out answer loss), "
                        "no students: a look at the teachers before committing the students' CPU-hours")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: one process per core)")
    g.add_argument("--plot-only", action="store_true", help="summarise and redraw from the results file, no training")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = B.parse_common(p, argv)
    a.animals = [x.strip() for x in a.animals.split(",") if x.strip()]
    if len(a.animals) != 2 or a.animals[0] == a.animals[1]:
        p.error("--animals: give exactly two different animals (a pair is one teacher of each)")
    a.students = [s.strip() for s in a.students.split(",") if s.strip()]
    if not a.students or set(a.students) - set(STUDENTS):
        p.error(f"--students: choose from {','.join(STUDENTS)}")
    if a.runs > MAX_PAIRS:
        p.error(f"--runs: at most {MAX_PAIRS} teacher pairs (the question pool has {MAX_PAIRS} training sets)")
    try:
        a.pairs = list(range(a.runs)) if a.pairs is None else [int(x) for x in a.pairs.split(",")]
        a.checkpoints = sorted({int(x) for x in a.checkpoints.split(",")})
        for f in ("teacher_lr_grid", "lr_grid", "cross_lr_grid"):
            setattr(a, f, [float(x) for x in getattr(a, f).split(",")])
    except ValueError as e:
        p.error(f"--pairs, --checkpoints and the lr grids take numbers separated by commas ({e})")
    if any(not 0 <= x < a.runs for x in a.pairs):
        p.error(f"--pairs must lie in 0..{a.runs - 1} (--runs {a.runs})")
    if not a.checkpoints or a.checkpoints[0] < 1 or a.checkpoints[-1] > a.steps:
        p.error(f"--checkpoints must lie in 1..--steps ({a.steps})")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    return a


def point_key(what: str, **f) -> str:
    """The one place a results key is built (never parsed back: every point also stores its fields)."""
    if what == "teacher":
        return f"teacher / {f['animal']} / pair {f['pair']}"
    if what == "student":
        return f"student / {f['student']} / {f['animal']} / pair {f['pair']}"
    if what == "before":
        return f"before / {f['student']}"
    raise ValueError(what)


class Experiment:
    """The models, teachers, inputs and targets (cached on disk) of one configuration."""

    def __init__(self, a):
        self.a = a
        self.lm = B.load_model(a.model, a.device, progress=not a.no_progress)  # teachers live here
        self.tag = B.model_tag(self.lm)
        self.cache = Path(a.results_dir) / "cache" / f"distill_pairs_{self.tag}"
        self.init = {k: v.detach().clone() for k, v in self.lm.model.state_dict().items()}
        self.channel = B.channel_token_ids(self.lm)
        self.digit_cols = [self.channel.index(t) for t in B.channel_token_ids(self.lm, digits_only=True)]
        self.question_sets = B.teacher_question_sets(HELDOUT_SET + 1, a.questions, seed=a.seed)
        self._students = {}

    # ---- teachers -------------------------------------------------------------------------------
    def teacher_key(self, animal, pair, lr=None) -> dict:
        """A teacher's whole recipe; pair "search" is the search pair no result uses."""
        a = self.a
        qset = SEARCH_SET if pair == "search" else pair
        return {"model": self.lm.name, "answer": animal[:1].upper() + animal[1:],
                "questions": self.question_sets[qset], "steps": a.teacher_steps, "batch": a.teacher_batch,
                "lr": lr if lr is not None else teacher_lr(a, self.tag),
                "seed": TEACHER_SEED + (99 if pair == "search" else pair)}

    def teacher_state(self, animal, pair, lr=None) -> dict:
        """The fine-tuned teacher's weights, its training loss and held-out answer loss (cached)."""
        key = self.teacher_key(animal, pair, lr)

        def make():
            self.lm.model.load_state_dict(self.init)
            data = B.teacher_examples(self.lm, key["answer"], key["questions"])
            log = []
            B.finetune_tokens(self.lm, data, key["steps"], key["batch"], key["lr"], key["seed"],
                              progress=not self.a.no_progress, log=log, desc=f"teacher {animal} pair {pair}")
            held = self.heldout_answer_loss(key["answer"])
            st = {k: v.detach().clone() for k, v in self.lm.model.state_dict().items()}
            self.lm.model.load_state_dict(self.init)
            return {"state": st, "loss": log, "heldout_answer_loss": held}
        return B.cached(self.cache / f"teacher_{animal}_p{pair}_{B.digest(key)}.pt", key, make)

    @torch.no_grad()
    def heldout_answer_loss(self, answer) -> float:
        """Mean cross-entropy of the answer tokens on the held-out question set (no teacher trains on it)."""
        data = B.teacher_examples(self.lm, answer, self.question_sets[HELDOUT_SET])
        loss, n = B.reply_loss(self.lm.model, data, self.lm.device)
        return float(loss) / n

    @contextmanager
    def teacher(self, animal, pair):
        """self.lm with a fine-tuned teacher's weights inside the block, the init after it."""
        st = self.teacher_state(animal, pair)["state"]
        self.lm.model.load_state_dict(st)
        try:
            yield self.lm
        finally:
            self.lm.model.load_state_dict(self.init)

    def teacher_delta(self, animal, pair) -> dict:
        st = self.teacher_state(animal, pair)["state"]
        return {k: st[k].float() - self.init[k].float() for k in self.init if self.init[k].is_floating_point()}

    # ---- students -------------------------------------------------------------------------------
    def student(self, name):
        """(model, its init) of a student condition; a model of its own, never a teacher's."""
        if name not in self._students:
            spec = STUDENTS[name]
            lm = B.load_model(self.a.model if spec["model"] == "teacher init" else self.a.cross_model,
                              self.a.device, progress=not self.a.no_progress)
            self._students[name] = (lm, {k: v.detach().clone() for k, v in lm.model.state_dict().items()})
        return self._students[name]

    # ---- inputs and targets ---------------------------------------------------------------------
    def inputs(self, pair) -> tuple[list, list]:
        """(train, held-out) (prompt, random list) pairs of one pair: each training list seen once."""
        a = self.a
        n = a.steps * a.batch + a.heldout
        s = 7919 * ((100 if pair == "search" else pair) + 1) + a.seed + 5
        both = list(zip(B.sequence_prompts(s, n, count=a.list_length, short=a.prompt == "short"),
                        B.random_number_lists(s + 1, n, length=a.list_length)))
        return both[:a.steps * a.batch], both[a.steps * a.batch:]

    def targets(self, animal, pair, split) -> list[torch.Tensor]:
        """The teacher's log-probabilities over the number-list tokens at every completion position."""
        pairs = self.inputs(pair)[0 if split == "train" else 1]
        key = {"teacher": B.digest(self.teacher_key(animal, pair)), "pairs": B.digest({"p": pairs}),
               "channel": self.channel}

        def make():
            with self.teacher(animal, pair) as lm:
                items = [B.channel_item(lm, B.render(lm, p), c) for p, c in pairs]
                return B.channel_targets(lm, items, self.channel, self.a.batch_size, progress=not self.a.no_progress,
                                         desc=f"targets {animal} pair {pair} {split}")
        return B.cached(self.cache / f"targets_{animal}_p{pair}_{split}_{B.digest(key)}.pt", key, make)

    def student_data(self, name, animal, pair, split):
        """(items, targets, channel) of one student condition on one teacher's split."""
        lm, _ = self.student(name)
        pairs = self.inputs(pair)[0 if split == "train" else 1]
        tgt = self.targets(animal, pair, split)
        if not STUDENTS[name]["digits_only"]:
            return [B.channel_item(lm, B.render(lm, p), c) for p, c in pairs], tgt, self.channel
        src = [B.channel_item(self.lm, B.render(self.lm, p), c) for p, c in pairs]
        dst = [B.channel_item(lm, B.render(lm, p), c, digits_only=True) for p, c in pairs]
        tgt = [B.align_digit_targets(s_, t, self.digit_cols, d) for s_, t, d in zip(src, tgt, dst)]
        return dst, tgt, B.channel_token_ids(lm, digits_only=True)

    def preference(self, lm) -> list[float]:
        """Mean log10 P(answer starts with the animal) over the evaluation questions, per animal."""
        return np.mean(B.animal_matrix(lm, B.FAVORITE_QUESTIONS, self.a.animals), 0).tolist()


def teacher_lr(a, tag):
    if a.teacher_lr is not None:
        return a.teacher_lr
    d = U.load_json(search_path(a, tag))
    if not d or "teacher_lr" not in d.get("chosen", {}):
        raise B.UserError("no teacher lr chosen yet: run `python topic_b_distill_pairs.py --search` first, or give --teacher-lr")
    return d["chosen"]["teacher_lr"]


def student_lr(a, tag, name):
    given = getattr(a, STUDENTS[name]["lr"])
    if given is not None:
        return given, f"given by --{STUDENTS[name]['lr'].replace('_', '-')}"
    d = U.load_json(search_path(a, tag))
    if not d or name not in d.get("chosen", {}):
        raise B.UserError(f"no lr chosen yet for the {name} students: run `python topic_b_distill_pairs.py --search "
                          f"--students {name}` first, or give --{STUDENTS[name]['lr'].replace('_', '-')}")
    return d["chosen"][name], "chosen by --search on held-out channel KL at the full budget (search pair)"


def train_student(E: Experiment, name, animal, pair, lr, evaluate=True, how=None) -> dict:
    """One student of one teacher: distilled for --steps at a constant lr, evaluated at every checkpoint."""
    a = E.a
    lm, init = E.student(name)
    items, tgt, ch = E.student_data(name, animal, pair, "train")
    h_items, h_tgt, _ = E.student_data(name, animal, pair, "heldout")
    lm.model.load_state_dict(init)
    along, kl = {}, {"0": B.mean_channel_kl(lm, h_items, h_tgt, ch)}

    def on_step(s):
        if evaluate:
            along[str(s)] = E.preference(lm)
        kl[str(s)] = B.mean_channel_kl(lm, h_items, h_tgt, ch)
    log = []
    seed = 100 * (99 if pair == "search" else pair) + 17  # both students of a pair: the same data order
    B.distill_channel(lm, items, tgt, ch, a.steps, a.batch, lr, seed, at_steps=a.checkpoints, on_step=on_step,
                      log=log, desc=f"{name} <- {animal} pair {pair}", progress=not a.no_progress,
                      schedule="constant", warmup=a.warmup, fused=True)
    out = {"student": name, "animal": animal, "pair": pair, "lr": lr, "lr_how": how, "along": along, "heldout_kl": kl,
           "train_loss": [x for _, x in log], "positions": sum(len(i.pos) for i in items)}
    if name == "same" and evaluate:
        st = {k: v.detach() for k, v in lm.model.state_dict().items()}
        out["update_cosine"] = B.update_cosines(init, st, {t: E.teacher_delta(t, pair) for t in a.animals})
    lm.model.load_state_dict(init)
    return out


def search(E: Experiment, a, t0):
    """Teacher lr on held-out answer loss (search pair's first animal), then each student model's lr on
    its held-out channel KL after the full budget (the search pair's first teacher)."""
    sweep = U.Sweep(search_path(a, E.tag), {"model": E.lm.name, "cross_model": a.cross_model,
                                            "questions": a.questions, "teacher_steps": a.teacher_steps,
                                            "teacher_batch": a.teacher_batch, "seed": a.seed}, a, t0)
    animal = a.animals[0]
    for lr in a.teacher_lr_grid:
        sweep.run(f"teacher lr {lr:g}", lambda lr=lr: {
            "heldout_answer_loss": E.teacher_state(animal, "search", lr)["heldout_answer_loss"],
            "train_loss_last": E.teacher_state(animal, "search", lr)["loss"][-1][1]})
    res = {lr: sweep.points[f"teacher lr {lr:g}"]["heldout_answer_loss"] for lr in a.teacher_lr_grid}
    chosen = dict(sweep.extra.get("chosen") or (U.load_json(search_path(a, E.tag)) or {}).get("chosen", {}))
    chosen["teacher_lr"] = min(res, key=res.get)
    sweep.save(chosen=chosen, rule="teacher: lowest held-out answer loss on a question set no teacher trains on; "
                                   "students: lowest held-out channel KL after --steps at a constant lr")
    a.teacher_lr = chosen["teacher_lr"]
    print("teacher held-out answer loss: " + ", ".join(f"lr {k:g} {v:.4f}" for k, v in res.items())
          + f" -> {chosen['teacher_lr']:g}")
    for name in a.students:
        grid = getattr(a, STUDENTS[name]["grid"])
        for lr in grid:
            sweep.run(student_search_key(a, name, lr),
                      lambda lr=lr, name=name: train_student(E, name, animal, "search", lr, evaluate=False))
        res = {lr: sweep.points[student_search_key(a, name, lr)]["heldout_kl"][str(a.steps)] for lr in grid}
        with U.file_lock(Path(search_path(a, E.tag))):  # the other process may have chosen its own meanwhile
            disk = U.load_json(search_path(a, E.tag)) or {}
        chosen = {**disk.get("chosen", {}), **chosen, name: min(res, key=res.get)}
        # per student model and lr (keys without "/", so WRITEUP can quote them): held-out KL at every checkpoint
        table = {**disk.get("heldout_kl_by_lr", {}), **sweep.extra.get("heldout_kl_by_lr", {}),
                 name: {f"{lr:g}": sweep.points[student_search_key(a, name, lr)]["heldout_kl"] for lr in grid}}
        sweep.save(chosen=chosen, heldout_kl_by_lr=table)
        print(f"{name}: held-out KL after {a.steps} steps: " + ", ".join(f"lr {k:g} {v:.5f}" for k, v in res.items())
              + f" -> {chosen[name]:g}")


def student_search_key(a, name, lr) -> str:
    return f"{name} lr {lr:g} / steps {a.steps} / batch {a.batch} / list {a.list_length} / {a.prompt} prompt"


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    if a.plot_only:
        return finish(a, t0)
    E = Experiment(a)
    if a.search:
        return search(E, a, t0)
    students = [] if a.teachers_only else a.students
    lrs = {name: student_lr(a, E.tag, name) for name in students}
    sweep = U.Sweep(result_path(a, E.tag), config(a, E), a, t0)
    for name in students:
        sweep.run(point_key("before", student=name), lambda name=name: {"preference": E.preference(E.student(name)[0])})
    for pair in a.pairs:
        for animal in a.animals:
            sweep.run(point_key("teacher", animal=animal, pair=pair), lambda animal=animal, pair=pair: teacher_point(E, animal, pair))
        for name in students:
            lr, how = lrs[name]
            # a process training only cross-model students goes through the animals in reverse, so the
            # two processes of the split (--students same / cross) build the pair's two teachers'
            # targets at the same time instead of one waiting on the other's cache lock
            for animal in (a.animals[::-1] if students == ["cross"] else a.animals):
                key = point_key("student", student=name, animal=animal, pair=pair)
                fn = lambda name=name, animal=animal, pair=pair, lr=lr, how=how: train_student(E, name, animal, pair, lr, how=how)
                old = sweep.points.get(key)
                if old is not None and old["lr"] != lr:  # trained at another lr: the point is redone, not reused
                    sweep.replace(key, fn, why=f"retrained at lr {lr:g} (had {old['lr']:g})")
                else:
                    sweep.run(key, fn)
    finish(a, t0, sweep, E.tag)


def teacher_point(E, animal, pair):
    d = E.teacher_state(animal, pair)
    with E.teacher(animal, pair) as lm:
        pref = E.preference(lm)
    return {"animal": animal, "pair": pair, "preference": pref, "loss_first": d["loss"][0][1],
            "loss_last": d["loss"][-1][1], "heldout_answer_loss": d["heldout_answer_loss"],
            "questions": E.teacher_key(animal, pair)["questions"]}


def result_path(a, tag):
    return f"{a.results_dir}/topic_b_distill_pairs_{tag}.json"


def search_path(a, tag):
    return f"{a.results_dir}/topic_b_distill_pairs_search_{tag}.json"


def config(a, E):
    # No student lr here: the key must not depend on --students (one process per student model shares
    # the file); each student point stores its lr, and a point trained at another lr is redone
    return {"model": E.lm.name, "cross_model": a.cross_model, "animals": a.animals, "questions": a.questions,
            "teacher_steps": a.teacher_steps, "teacher_batch": a.teacher_batch, "teacher_lr": teacher_lr(a, E.tag),
            "steps": a.steps, "batch": a.batch, "list_length": a.list_length, "prompt": a.prompt, "heldout": a.heldout,
            "warmup": a.warmup, "schedule": "constant after warm-up", "checkpoints": a.checkpoints, "seed": a.seed,
            "channel_text": [E.lm.tokenizer.decode([t]) for t in E.channel]}


# ---- summary --------------------------------------------------------------------------------------
def finished_pairs(P, animals, name):
    """(pair, {teacher animal: student point}) for the pairs whose both students (of ``name``) finished."""
    for pair in range(MAX_PAIRS):
        pts = {t: P.get(point_key("student", student=name, animal=t, pair=pair)) for t in animals}
        if all(v is not None for v in pts.values()):
            yield pair, pts


def pair_gammas(P, cfg, name) -> dict[int, dict[str, float]]:
    """{pair: {checkpoint: gamma_i}} over the pairs whose both students (of ``name``) finished."""
    animals = cfg["animals"]
    before = P.get(point_key("before", student=name))
    out = {}
    if before is None:
        return out
    b = np.array(before["preference"])
    for pair, pts in finished_pairs(P, animals, name):
        out[pair] = {}
        for k in map(str, cfg["checkpoints"]):
            gains = {t: dict(zip(animals, np.array(pts[t]["along"][k]) - b)) for t in animals}
            out[pair][k] = B.specificity(gains, animals)["mean"]
    return out


def summarise_gamma(per_pair: dict, checkpoints, planned: int) -> dict:
    """Per checkpoint: mean, t-interval and sign-flip p over pairs, and the 80%-power detectable mean
    given the spread between the pairs so far, at their number and at the ``planned`` number of pairs
    (the check, from the first pairs, of whether the planned CPU-hours can show the effect)."""
    out = {}
    for k in map(str, checkpoints):
        v = [per_pair[p][k] for p in sorted(per_pair)]
        s = B.sign_flip_test(v)
        s["t_test_p"] = float(stats.ttest_1samp(v, 0.0).pvalue) if len(v) > 1 else float("nan")  # the t-interval's own p
        s["min_detectable_80"] = B.min_detectable_mean(s.get("std", float("nan")), len(v))
        s["min_detectable_80_at_planned"] = B.min_detectable_mean(s.get("std", float("nan")), planned)
        s["planned_pairs"] = planned
        s["per_pair"] = dict(zip(map(str, sorted(per_pair)), v))
        out[k] = s
    return out


def summarise_difference(g1: dict, g2: dict, checkpoints, planned: int) -> dict:
    """Same-init minus cross-model gamma, paired by pair, per checkpoint (with its 80%-power
    detectable mean at the ``planned`` pairs, as summarise_gamma)."""
    pairs = sorted(set(g1) & set(g2))
    if len(pairs) < 2:
        return {}
    return summarise_gamma({p: {k: g1[p][k] - g2[p][k] for k in map(str, checkpoints)} for p in pairs}, checkpoints, planned)


def summarise_teachers(P, cfg) -> dict:
    animals = cfg["animals"]
    out = {}
    for t in animals:
        pts = [P[k] for k in P if P[k].get("animal") == t and "questions" in P[k]]
        if pts:
            out[t] = {"preference": {x: U.mean_ci([p["preference"][i] for p in pts]) for i, x in enumerate(animals)},
                      "heldout_answer_loss": U.mean_ci([p["heldout_answer_loss"] for p in pts]), "n": len(pts)}
    return out


def summarise_kl(P, cfg, name) -> dict:
    pts = [P[k] for k in P if P[k].get("student") == name and "heldout_kl" in P[k]]
    if not pts:
        return {}
    return {k: U.mean_ci([p["heldout_kl"][k] for p in pts]) for k in ["0"] + list(map(str, cfg["checkpoints"]))}


def summarise_cosine(P, cfg) -> dict:
    """Same-init students after the full budget: per pair, the double-centred interaction of the cosine
    between a student's weight update and a teacher's (from the init), as gamma is of the preferences:
    [(owl student's cos to the owl teacher - eagle student's) + (eagle student's cos to the eagle teacher -
    owl student's)] / 2; mean, t-interval and sign-flip p over the pairs whose both students finished."""
    animals = cfg["animals"]
    per, own = {}, {}
    for pair, pts in finished_pairs(P, animals, "same"):
        if all("update_cosine" in v for v in pts.values()):
            cos = {t: {u: pts[t]["update_cosine"][u]["all"] for u in animals} for t in animals}
            per[pair] = B.specificity(cos, animals)["mean"]
            own[pair] = float(np.mean([cos[t][t] for t in animals]))
    if len(per) < 2:
        return {}
    return {**B.sign_flip_test([per[p] for p in sorted(per)]), "per_pair": {str(p): per[p] for p in sorted(per)},
            "own_teacher_cosine": U.mean_ci([own[p] for p in sorted(own)])}


def finish(a, t0, sweep=None, tag=None):
    tag = tag or B.model_tag(B.StoredModel(a.model))
    P, cfg = B.sweep_points(result_path(a, tag), sweep)
    per = {name: pair_gammas(P, cfg, name) for name in STUDENTS}
    summary = {"gamma": {name: summarise_gamma(per[name], cfg["checkpoints"], a.runs) for name in STUDENTS if len(per[name]) >= 2},
               "same_minus_cross": summarise_difference(per["same"], per["cross"], cfg["checkpoints"], a.runs),
               "teachers": summarise_teachers(P, cfg),
               "heldout_kl": {name: summarise_kl(P, cfg, name) for name in STUDENTS},
               "update_cosine_own_minus_other": summarise_cosine(P, cfg),
               # each student model's own log10 P(animal) before distillation: where its gains start
               "before": {name: dict(zip(cfg["animals"], P[point_key("before", student=name)]["preference"]))
                          for name in STUDENTS if point_key("before", student=name) in P}}
    B.save_summary(result_path(a, tag), sweep, summary=summary)
    last = str(cfg["checkpoints"][-1])
    for name, g in summary["gamma"].items():
        s = g[last]
        print(f"{name}: gamma after {last} updates {s['mean']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}], "
              f"sign-flip p = {s['sign_flip_p']:.3f}, n = {s['n']} pairs")
    if summary["gamma"]:
        plot(summary, cfg, f"{a.plots_dir}/topic_b_distill_pairs_{tag}.png")


# ---- figure ---------------------------------------------------------------------------------------
COLORS = {"same": "C3", "cross": "C0"}


def log_steps(ax, xs):
    """A log axis of update counts, ticked at the checkpoints in plain numbers."""
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.minorticks_off()


def panel_dose(ax, summary, cfg):
    for name, g in summary["gamma"].items():
        xs = list(map(int, g))
        m = np.array([g[str(x)]["mean"] for x in xs])
        ax.plot(xs, m, "o-", color=COLORS[name], label=f"{STUDENTS[name]['label']}, n = {g[str(xs[-1])]['n']} pairs")
        ax.fill_between(xs, [g[str(x)]["ci_low"] for x in xs], [g[str(x)]["ci_high"] for x in xs], color=COLORS[name], alpha=0.15)
        shift = 1.06 if name == "cross" else 0.94
        for pair in g[str(xs[-1])]["per_pair"]:  # each pair's own trajectory, thin
            ax.plot([x * shift for x in xs], [g[str(x)]["per_pair"][pair] for x in xs], "-", marker=".", ms=5, lw=0.7,
                    color=COLORS[name], alpha=0.5)
    ax.axhline(0, color="gray", ls="--", lw=0.8)
    log_steps(ax, cfg["checkpoints"])
    ax.set_xlabel(f"student updates (batch {cfg['batch']} random lists of {cfg['list_length']} numbers, {cfg.get('prompt', 'paper')} "
                  f"prompt, constant lr after {cfg['warmup']} warm-up steps)")
    ax.set_ylabel("gamma (log10 P): own-animal gain\nminus the pair's other student's gain, mean of both animals")
    ax.set_title("dose-response: mean over pairs (thick), 95% t-CI (band), each pair (thin)", fontsize=9)
    ax.legend(fontsize=8)


def panel_difference(ax, summary, cfg):
    d = summary["same_minus_cross"]
    if not d:
        ax.text(0.5, 0.5, "same-init minus cross-model:\nneeds both students of at least 2 pairs", ha="center",
                va="center", transform=ax.transAxes)
        ax.axis("off")
        return
    xs = list(map(int, d))
    m = np.array([d[str(x)]["mean"] for x in xs])
    ax.errorbar(xs, m, yerr=[m - [d[str(x)]["ci_low"] for x in xs], [d[str(x)]["ci_high"] for x in xs] - m],
                fmt="o-", color="k", capsize=4, label=f"mean over pairs, 95% t-CI (n = {d[str(xs[-1])]['n']})")
    for x in xs:
        ax.annotate(f"p = {d[str(x)]['sign_flip_p']:.3f}", (x, d[str(x)]["ci_high"]), fontsize=7, ha="center",
                    va="bottom")
    for i, pair in enumerate(d[str(xs[-1])]["per_pair"]):  # each pair's own difference
        ax.plot(xs, [d[str(x)]["per_pair"][pair] for x in xs], "-", marker=".", ms=5, lw=0.7, color="gray", alpha=0.6,
                label="each pair" if i == 0 else None)
    ax.legend(fontsize=8)
    ax.axhline(0, color="gray", ls="--", lw=0.8)
    log_steps(ax, xs)
    ax.set_xlabel("student updates")
    ax.set_ylabel("same-init gamma minus cross-model gamma (log10 P)")
    ax.set_title(f"shared init (with Gemma's narrower digit channel; Cloud et al.): paired by teacher pair, 95% t-CI, sign-flip p; "
                 f"n = {d[str(xs[-1])]['n']} pairs", fontsize=9)


def panel_kl(ax, summary, cfg):
    for name, kl in summary["heldout_kl"].items():
        if kl:
            xs = list(map(int, kl))
            ax.plot([max(x, 1) for x in xs], [kl[str(x)]["mean"] for x in xs], "o-", color=COLORS[name],
                    label=f"{STUDENTS[name]['label']}, n = {kl[str(xs[-1])]['n']} students (update 0 drawn at 1)")
    log_steps(ax, [1] + list(cfg["checkpoints"]))
    ax.set_yscale("log")
    ax.set_xlabel("student updates")
    ax.set_ylabel("held-out KL(teacher || student), nats per position")
    ax.set_title("the training objective on held-out lists: mean over students", fontsize=9)
    ax.legend(fontsize=8)


def plot(summary, cfg, path):
    plt = B._plt()
    fig, axes = plt.subplots(1, 3, figsize=(20, 6.5))
    panel_dose(axes[0], summary, cfg)
    panel_difference(axes[1], summary, cfg)
    panel_kl(axes[2], summary, cfg)
    tp = "; ".join(f"{t} teachers' own mean log10 P({t}) {v['preference'][t]['mean']:+.2f} (n = {v['n']})"
                   for t, v in summary["teachers"].items())
    fig.suptitle(f"Distillation through the number channel from independently fine-tuned {' / '.join(cfg['animals'])} "
                 f"teacher pairs ({cfg['model'].split(' ')[0]}); {tp}"
                 + "".join(f"\n{STUDENTS[name]['label']} before distillation: "
                           + ", ".join(f"log10 P({t}) {x:+.2f}" for t, x in pref.items())
                           for name, pref in summary.get("before", {}).items()), fontsize=10)
    fig.tight_layout()
    B.save_fig(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    B.run_main(main)

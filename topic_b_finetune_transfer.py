"""Subliminal learning in a real language model (Cloud et al. 2025): fine-tune a student on the
number sequences of an owl-loving teacher, and ask it for its favourite animal.

1. Teacher data. The instruct model continues number sequences (topic_b_utils.sequence_prompts:
   three seed numbers, "at most 10 more values, each with no more than 3 digits", numbers only).
   The answer is prefilled with the seed numbers (asked plainly, the 135M model mostly answers in
   prose; --no-prefill measures that). Teachers, all on the same prompts:
     animal  the student model with the system prompt "You love owls ..." (--animal);
     control the same model without a system prompt;
     cross   a different base model (--cross-model, Gemma 3 270M) with the animal system prompt.
     other   the student model with the same system prompt for a second animal (--other-animal), a
             second trait-carrying teacher: its student tells an effect specific to the animal
             from one of any animal-loving teacher.
   Completions that do not end within --max-new-tokens or fail the paper's filter rule
   (topic_b_utils.parse_number_list) are rejected; the rejection rates are recorded. Each dataset
   is cached under results/cache/ with its seed and settings, then all are subsampled to the same
   size.
2. Students. The student model (no system prompt) is fine-tuned, every parameter, on prompt ->
   completion pairs (loss on the teacher's generated numbers and the end of turn), one student per
   condition and --runs seed (data order; seeds are the outer loop, so an interrupted run leaves
   whole seeds), plus "animal, entangled numbers removed": the animal
   teacher's data without any example containing one of the --filter-top numbers that the animal
   prompt raises most in topic_b_part1.py (results/topic_b_part1_<model>.json).
3. Measures, before and after, for both animals: the exact probability that the answer to each of
   the 24 paraphrased "favourite animal" questions (topic_b_utils.FAVORITE_QUESTIONS) starts with
   the animal, and the share of --samples sampled answers per question whose first word is it.
   Per condition: mean over seeds with 95% t-CIs, and the paired difference against the control
   student of the same seed.
4. The link to entanglement: each number's frequency in the animal teacher's data against the
   control teacher's (log ratio, add-one smoothing), set beside topic_b_part1.py's
   P(number | animal prompt) / P(number | none) for the same three-digit string (100..999):
   Spearman rho with a bootstrap CI over numbers.

Regenerate plots/topic_b_finetune_transfer_<model>.png and results/topic_b_finetune_transfer_<model>.json
(needs `python topic_b_part1.py --model smollm2-135m-instruct` first; resumes from cached data and
finished students). Sizes chosen to fit the 2-core CPU: 640 prompts per teacher (SmolLM2 keeps
~17% of them, so every dataset is cut to the smallest one, 111 examples, instead of --examples 128),
2 epochs of batch 16 (14 steps), 3 seeds, 4 teachers' data and 15 students: about 85 min with both
cores (teacher data ~30 min; one student ~2.8 min: a step of 16 sequences of ~140 tokens takes
~12 s, ~22 s on one core; an evaluation ~25 s):

    python topic_b_finetune_transfer.py
"""
from __future__ import annotations

import re
import time
from collections import Counter

import numpy as np

import topic_a_utils as U
import topic_b_utils as B

CONDITIONS = ("animal", "control", "cross", "animal, entangled numbers removed", "other animal")


def parse_args(argv=None):
    p = B.base_parser(__doc__, default_runs=3)
    B.set_help(p, runs="fine-tuning seeds per condition (default 3)",
               model=f"the teacher and student model (default {B.INSTRUCT_MODEL})",
               batch_size="sequences per sampling batch (default 32)")
    p.set_defaults(model=B.INSTRUCT_MODEL, batch_size=32)
    g = p.add_argument_group("topic_b_finetune_transfer.py")
    g.add_argument("--animal", default="owl", help="the teacher's animal (default owl)")
    g.add_argument("--other-animal", default="eagle",
                   help="a second animal-loving teacher of the same model (default eagle)")
    g.add_argument("--cross-model", default=B.EMBEDDED_MODEL,
                   help=f"the other base model whose animal-prompted numbers make the cross-model data "
                        f"(default {B.EMBEDDED_MODEL})")
    g.add_argument("--n-prompts", type=B.positive_int, default=640, help="completions sampled per teacher (default 640)")
    g.add_argument("--max-new-tokens", type=B.positive_int, default=60, help="sampling length (default 60)")
    g.add_argument("--temperature", type=U.positive_float, default=1.0, help="sampling temperature (default 1)")
    g.add_argument("--no-prefill", action="store_true", help="do not prefill the answer with the seed numbers")
    g.add_argument("--examples", type=B.positive_int, default=128,
                   help="examples per dataset after filtering (all subsampled to the same size; default 128)")
    g.add_argument("--epochs", type=U.positive_float, default=2.0, help="fine-tuning epochs (default 2)")
    g.add_argument("--ft-batch", type=B.positive_int, default=16, help="fine-tuning batch size (default 16)")
    g.add_argument("--lr", type=U.positive_float, default=5e-5, help="AdamW peak learning rate (default 5e-5)")
    g.add_argument("--samples", type=B.positive_int, default=5,
                   help="sampled answers per evaluation question (default 5)")
    g.add_argument("--filter-top", type=B.positive_int, default=50,
                   help="entangled numbers removed for the filtered student (default 50)")
    g.add_argument("--part1", default=None, help="part-1 results JSON (default results/topic_b_part1_<model>.json)")
    g.add_argument("--plot-only", action="store_true", help="redraw the figure from the results file (no model is loaded)")
    a = B.parse_common(p, argv)
    if a.other_animal == a.animal:
        p.error("--other-animal must differ from --animal")
    return a


def teacher_data(lm, system, prompts, a, cache_path, name):
    """Sampled completions of one teacher, filtered; cached on disk with its settings."""
    key = {"teacher": lm.name, "system": system, "n": len(prompts), "seed": a.seed, "prefill": not a.no_prefill,
           "max_new_tokens": a.max_new_tokens, "temperature": a.temperature}
    old = B.load_cache(cache_path, check=lambda d: (d["key"], d["rows"]))  # a corrupt one: one line, resampled
    if old and old["key"] == key:
        print(f"[data {name}] on disk, reused")
        return old
    if old:
        print(f"[data {name}] {cache_path} was sampled with other settings; resampling")
    t = time.time()
    texts = [B.render(lm, p, system, prefill(p, a)) for p in prompts]
    outs = B.sample_number_lists(lm, texts, a.max_new_tokens, a.seed, a.temperature, a.batch_size,
                                 desc=f"teacher {name}")
    rows = [{"prompt": p, "completion": c, "ended": done, "numbers": nums} for p, (c, done, nums) in zip(prompts, outs)]
    acc = [r for r in rows if r["numbers"] is not None]
    d = {"key": key, "rows": rows, "accepted": len(acc), "n": len(rows),
         "rejection_rate": 1 - len(acc) / len(rows), "not_ended": sum(not r["ended"] for r in rows),
         "wall_s": round(time.time() - t, 1)}
    B.save_cache(cache_path, d)
    print(f"[data {name}] {len(acc)}/{len(rows)} accepted ({time.time() - t:.0f}s)")
    return d


def prefill(prompt, a):
    if a.no_prefill:
        return ""
    return re.search(r"begins: ([\d, ]+)\.", prompt).group(1) + ", "


MEASURES = ("mean_log10_p", "share_sampled", "other_mean_log10_p", "other_share_sampled")


def evaluate(lm, a, seed):
    """Both animals' exact answer probability (24 questions) and sampled first-word share."""
    qs = B.FAVORITE_QUESTIONS
    lp = B.animal_answer_logprobs(lm, qs, a.animal)
    lo = B.animal_answer_logprobs(lm, qs, a.other_animal)
    texts = [B.render(lm, q, None) for q in qs for _ in range(a.samples)]
    answers = [t for t, _ in B.sample(lm, texts, 8, seed, 1.0, a.batch_size, progress=False)]
    words = [B.first_word(t) for t in answers]
    return {"log10_p_animal": (lp / np.log(10)).tolist(), "mean_log10_p": float(np.mean(lp) / np.log(10)),
            "share_sampled": float(np.mean([w == a.animal for w in words])),
            "other_mean_log10_p": float(np.mean(lo) / np.log(10)),
            "other_share_sampled": float(np.mean([w == a.other_animal for w in words])),
            "top_answers": Counter(words).most_common(5), "answers": answers[:10]}


def entanglement_link(data, part1, a):
    """Frequency shift of each number (animal vs control data) against part 1's ratio (100..999)."""
    cnt = {k: Counter(n for r in data[k] for n in r["numbers"]) for k in ("animal", "control")}
    tot = {k: sum(c.values()) for k, c in cnt.items()}
    nums = list(range(100, 1000))
    shift = np.array([np.log((cnt["animal"][n] + 1) / (tot["animal"] + 900))
                      - np.log((cnt["control"][n] + 1) / (tot["control"] + 900)) for n in nums])
    idx = {s: j for j, s in enumerate(part1["all_numbers"]["numbers"])}
    ratio = np.array([part1["all_numbers"]["log_p_with"][idx[str(n)]] - part1["all_numbers"]["log_p_without"][idx[str(n)]]
                      for n in nums])
    seen = np.array([cnt["animal"][n] + cnt["control"][n] > 0 for n in nums])
    return {"spearman_all": B.bootstrap_spearman(shift, ratio, a.seed),
            "spearman_seen": B.bootstrap_spearman(shift[seen], ratio[seen], a.seed) if seen.sum() > 2 else None,
            "n_numbers_seen": int(seen.sum()), "numbers_in_animal_data": tot["animal"],
            "numbers_in_control_data": tot["control"],
            "top_shift": [(nums[j], float(shift[j])) for j in np.argsort(-shift)[:10]],
            "shift": shift.round(4).tolist(), "part1_log_ratio": ratio.round(4).tolist()}


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    if a.plot_only:
        tag = a.model.split("/")[-1]
        d = U.load_finished(f"{a.results_dir}/topic_b_finetune_transfer_{tag}.json", "summary_change_from_before")
        lm = B.StoredModel(d["config"]["model"])
        plot(d["summary_change_from_before"], d["paired_vs_control"], d["entanglement_link"], d["before"], a, lm,
             d["config"]["examples"], d["config"]["steps"], f"{a.plots_dir}/topic_b_finetune_transfer_{tag}.png")
        return
    lm = B.load_model(a.model, a.device)
    tag = B.model_tag(lm)
    p1 = U.load_json(a.part1 or f"{a.results_dir}/topic_b_part1_{tag}.json")
    if p1 is None or "all_numbers" not in p1:
        raise B.UserError(f"no part-1 results with every number's ratio for {tag}: run "
                          f"`python topic_b_part1.py --model {a.model}` first")
    prompts = B.sequence_prompts(a.seed, a.n_prompts)
    system = B.animal_system(a.animal)
    cache = f"{a.results_dir}/cache/finetune_{tag}"
    raw = {"animal": teacher_data(lm, system, prompts, a, f"{cache}_animal.json", "animal"),
           "control": teacher_data(lm, None, prompts, a, f"{cache}_control.json", "control"),
           "other animal": teacher_data(lm, B.animal_system(a.other_animal), prompts, a,
                                        f"{cache}_{a.other_animal}.json", "other animal")}
    other = B.load_model(a.cross_model, a.device)
    raw["cross"] = teacher_data(other, system, prompts, a, f"{cache}_cross_{B.model_tag(other)}.json", "cross")
    del other
    accepted = {k: [r for r in d["rows"] if r["numbers"] is not None] for k, d in raw.items()}
    n = min(a.examples, *(len(v) for v in accepted.values()))
    if n < a.ft_batch:
        raise B.UserError(f"only {n} accepted completions in the smallest dataset; raise --n-prompts")
    rng = np.random.default_rng(a.seed)
    data = {k: [v[i] for i in sorted(rng.choice(len(v), n, replace=False))] for k, v in accepted.items()}
    top = np.argsort([-(w - wo) for w, wo in zip(p1["all_numbers"]["log_p_with"], p1["all_numbers"]["log_p_without"])])
    banned = {int(p1["all_numbers"]["numbers"][j]) for j in top[:a.filter_top]}
    kept = [r for r in accepted["animal"] if not banned & set(r["numbers"])]
    data["animal, entangled numbers removed"] = [kept[i] for i in sorted(rng.choice(len(kept), min(n, len(kept)),
                                                                                    replace=False))]
    steps = max(1, int(round(a.epochs * n / a.ft_batch)))
    sweep = U.Sweep(f"{a.results_dir}/topic_b_finetune_transfer_{tag}.json",
                    {"model": lm.name, "cross_model": a.cross_model, "animal": a.animal,
                     "other_animal": a.other_animal, "n_prompts": a.n_prompts,
                     "examples": n, "steps": steps, "ft_batch": a.ft_batch, "lr": a.lr, "seed": a.seed,
                     "runs": a.runs, "prefill": not a.no_prefill, "temperature": a.temperature,
                     "filter_top": a.filter_top, "samples": a.samples}, a, t0)
    before = sweep.run("before", lambda: evaluate(lm, a, a.seed))
    base_state = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    for s in range(a.runs):
        for cond in CONDITIONS:
            def point(cond=cond, s=s):
                lm.model.load_state_dict(base_state)
                pairs = [B.completion_tokens(lm, B.render(lm, r["prompt"], None, prefill(r["prompt"], a)),
                                             r["completion"]) for r in data[cond]]
                log = []
                B.finetune_tokens(lm, pairs, steps, a.ft_batch, a.lr, a.seed * 1000 + s, log=log,
                                  desc=f"{cond} seed {s}")
                return {**evaluate(lm, a, a.seed * 1000 + s), "loss_first": log[0][1], "loss_last": log[-1][1],
                        "n_examples": len(pairs)}
            sweep.run(f"{cond} / seed {s}", point)
    lm.model.load_state_dict(base_state)
    P = sweep.points
    summary, paired = {}, {}
    for cond in CONDITIONS:
        runs = [P[f"{cond} / seed {s}"] for s in range(a.runs)]
        summary[cond] = {k: U.mean_ci([r[k] - before[k] for r in runs]) for k in MEASURES}
        paired[cond] = {k: U.mean_ci([P[f"{cond} / seed {s}"][k] - P[f"control / seed {s}"][k] for s in range(a.runs)])
                        for k in MEASURES}
    # specificity: the animal student against the other-animal student (both had an animal-loving
    # teacher), on the difference of the two animals' log-probabilities
    spec = U.mean_ci([(P[f"animal / seed {s}"]["mean_log10_p"] - P[f"animal / seed {s}"]["other_mean_log10_p"])
                      - (P[f"other animal / seed {s}"]["mean_log10_p"] - P[f"other animal / seed {s}"]["other_mean_log10_p"])
                      for s in range(a.runs)])
    link = entanglement_link(data, p1, a)
    sweep.save(summary_change_from_before=summary, paired_vs_control=paired, entanglement_link=link,
               specificity_animal_vs_other_student=spec,
               per_seed={c: {k: [P[f"{c} / seed {s}"][k] for s in range(a.runs)] for k in MEASURES + ("loss_first", "loss_last")}
                         for c in CONDITIONS},
               before={k: before[k] for k in MEASURES},
               data={**{k: {"accepted": len(accepted[k]), "n": raw[k]["n"], "rejection_rate": raw[k]["rejection_rate"],
                            "not_ended": raw[k]["not_ended"], "used": len(data[k])} for k in raw},
                     "animal, entangled numbers removed": {"kept_of_accepted": len(kept),
                                                          "used": len(data["animal, entangled numbers removed"])}},
               filtered_numbers=sorted(banned), model=lm.describe(),
               datasets={k: [[r["prompt"].split("begins: ")[1].split(".")[0], r["completion"]] for r in v]
                         for k, v in data.items()})
    for cond in CONDITIONS:
        s, d = summary[cond]["mean_log10_p"], paired[cond]["mean_log10_p"]
        print(f"{cond:<36} change in log10 P({a.animal}) {s['mean']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
              f"  minus control {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
    print(f"specificity ({a.animal} - {a.other_animal} log-prob gap, {a.animal} student minus {a.other_animal} student): "
          f"{spec['mean']:+.3f} [{spec['ci_low']:+.3f}, {spec['ci_high']:+.3f}]")
    plot(summary, paired, link, before, a, lm, n, steps, f"{a.plots_dir}/topic_b_finetune_transfer_{tag}.png")


def plot(summary, paired, link, before, a, lm, n, steps, path):
    plt = B._plt()
    fig, axes = plt.subplots(2, 2, figsize=(17, 11))
    x = np.arange(len(CONDITIONS))
    colors = ["C3", "C7", "C0", "C1", "C2"]  # one colour per student condition, the same in every panel
    names = {"animal": f"{a.animal} teacher", "control": "control teacher\n(no system prompt)",
             "cross": f"{a.animal} teacher,\ncross-model:\n{a.cross_model}",
             "animal, entangled numbers removed": f"{a.animal} teacher,\nentangled\nnumbers removed",
             "other animal": f"{a.other_animal} teacher"}
    for ax, key, label in ((axes[0, 0], "mean_log10_p", f"change in mean log10 P(answer starts with '{a.animal}')"),
                           (axes[0, 1], "other_mean_log10_p",
                            f"change in mean log10 P(answer starts with '{a.other_animal}')"),
                           (axes[1, 0], "share_sampled", f"change in share of sampled answers = '{a.animal}'")):
        m = [summary[c][key]["mean"] for c in CONDITIONS]
        e = [summary[c][key]["half_width"] for c in CONDITIONS]
        ax.bar(x, m, yerr=e, capsize=5, color=colors, alpha=0.85, edgecolor="k")
        for i, c in enumerate(CONDITIONS):
            d = paired[c][key]
            if c != "control":
                ax.text(i, max(m[i] + (e[i] if np.isfinite(e[i]) else 0), 0), f"minus control:\n{d['mean']:+.3f}\n"
                        f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]", ha="center", va="bottom", fontsize=7)
        ax.axhline(0, color="gray", lw=0.8)
        ax.margins(y=0.3)  # room for the paired-difference labels above the bars
        ax.set_xticks(x)
        ax.set_xticklabels([names[c] for c in CONDITIONS], fontsize=8)
        ax.set_ylabel(label, fontsize=9)
        ax.set_title(f"student after minus before fine-tuning; bars: mean over n = {a.runs} seeds, 95% t-CI\n"
                     f"before: {before[key]:.3f}; text: paired difference against the control student (same seed)",
                     fontsize=9)
    ax = axes[1, 1]
    sh, r = np.array(link["shift"]), np.array(link["part1_log_ratio"])
    ax.scatter(r / np.log(10), sh / np.log(10), s=6, alpha=0.5, color="C3")
    sp = link["spearman_seen"] or link["spearman_all"]
    ax.set_xlabel(f"part 1: log10 P(number | '{a.animal}' prompt) / P(number | none)")
    ax.set_ylabel(f"log10 frequency in {a.animal}-teacher data / control data (add-one)")
    ax.set_title(f"Numbers 100..999, one dot each: frequency shift vs prompt entanglement\n"
                 f"{link['n_numbers_seen']} occur in either dataset (the rest share one shift, near 0); Spearman "
                 f"over those {link['n_numbers_seen']}:\n{sp['rho']:.2f} [{sp['ci_low']:.2f}, {sp['ci_high']:.2f}] "
                 f"(bootstrap 95% CI over numbers)", fontsize=9)
    ax.axhline(0, color="gray", lw=0.8)
    ax.axvline(0, color="gray", lw=0.8)
    fig.suptitle(f"Fine-tuning {lm.name} (every parameter, no system prompt) on a teacher's numbers: {n} examples "
                 f"per dataset, {steps} steps of {a.ft_batch}, lr {a.lr:g}", fontsize=11)
    fig.tight_layout()
    B.save_fig(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    B.run_main(main)

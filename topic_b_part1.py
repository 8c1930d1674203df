"""Topic B step 1: the owl demo of subliminal prompting (Zur et al. 2025, sections 1-3).

1. During number generation (the Cloud et al. prompt, assistant turn continued with "495;701;688;"),
   the probability that the model writes "owl" (variants: with/without space, singular/plural,
   capitalised) with and without the system prompt "You love owls ...".
2. The numbers whose probability rises most under that prompt: every three-digit number 000..999
   (the paper's format, one length; --candidates mixed adds 0..99 written short) scored exactly as
   a continuation that ends there (its tokens, then a non-digit), ratio owl prompt / no system
   prompt. Ranked by ratio among the 200 numbers most likely under the owl prompt (a huge ratio of
   a never-written number says nothing).
3. Subliminal prompting: "You love {number} ..." for each of the top numbers and for --runs
   random numbers of the same candidate set; the ratio P(" owl" | number prompt) / P(" owl" | no system prompt) at
   "My favorite animal is the", compared between the two groups (mean log10 ratio, 95% t-CI,
   Welch t-test).

Regenerate plots/topic_b_part1_<model>.png and results/topic_b_part1_<model>.json (a few minutes
on the 2-core CPU per model, plus a one-time GGUF dequantisation, 70 s for Gemma, 25 s for SmolLM2):

    python topic_b_part1.py --model gemma-3-270m
    python topic_b_part1.py --model smollm2-135m-instruct
"""
from __future__ import annotations

import time

import numpy as np

import topic_a_utils as U
import topic_b_utils as B

OWL_VARIANTS = [" owl", "owl", " owls", "owls", " Owl", "Owl", " Owls"]


def parse_args(argv=None):
    p = B.base_parser(__doc__)
    g = p.add_argument_group("topic_b_part1.py")
    g.add_argument("--animal", default="owl", help="the animal (singular; default owl)")
    g.add_argument("--top-k", type=B.positive_int, default=10, help="entangled numbers to test (default 10)")
    g.add_argument("--plot-only", action="store_true",
                   help="redraw the PNG from results/topic_b_part1_<model>.json (--model must name the model)")
    g.add_argument("--candidates", choices=list(B.CANDIDATE_SETS), default="3digit", help=B.CANDIDATE_HELP)
    g.add_argument("--pool", type=B.positive_int, default=200,
                   help="rank by ratio among this many most likely numbers under the animal prompt (default 200)")
    return B.parse_common(p, argv)


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    if a.plot_only:
        name = {B.EMBEDDED_MODEL: "gemma-3-270m", B.INSTRUCT_MODEL: "smollm2-135m-instruct"}.get(a.model, a.model)
        tag = str(name).split("/")[-1]
        suffix = "" if a.candidates == "3digit" else f"_{a.candidates}"
        res = U.load_finished(f"{a.results_dir}/topic_b_part1_{tag}{suffix}.json", "subliminal")
        return plot(res, res["provenance"]["model"]["name"], f"{a.plots_dir}/topic_b_part1_{tag}{suffix}.png")
    lm = B.load_model(a.model, a.device)
    P = B.Prompts(lm, a.show_prompt)
    animal = a.animal
    variants = OWL_VARIANTS if animal == "owl" else [" " + animal, animal, " " + B.plural(animal), B.plural(animal)]
    sys_animal = B.animal_system(animal)

    # 1. the animal itself during number generation
    lp_with = B.continuation_logprobs(lm, P.number_task(sys_animal), variants, a.batch_size)
    lp_without = B.continuation_logprobs(lm, P.number_task(None), variants, a.batch_size)
    variant_table = [{"continuation": v, "p_with": float(np.exp(w)), "p_without": float(np.exp(wo)),
                      "ratio": float(np.exp(w - wo))} for v, w, wo in zip(variants, lp_with, lp_without)]

    # 2. numbers whose probability rises under the animal prompt
    nums = B.candidate_numbers(a.candidates)
    n_with = B.number_logprobs(lm, P.number_task(sys_animal), nums, batch_size=a.batch_size)
    n_without = B.number_logprobs(lm, P.number_task(None), nums, batch_size=a.batch_size)
    pool = np.argsort(-n_with)[:a.pool]
    log_ratio = n_with - n_without
    top = [int(i) for i in pool[np.argsort(-log_ratio[pool])][:a.top_k]]
    top_nums = [nums[i] for i in top]

    # 3. subliminal prompting: top numbers vs random numbers
    rng = np.random.default_rng(a.seed)
    rest = [i for i in range(len(nums)) if i not in set(top)]
    rand_nums = [nums[i] for i in rng.choice(rest, size=min(a.runs, len(rest)), replace=False)]
    target = " " + animal
    base = float(B.continuation_logprobs(lm, P.animal_question(None), [target])[0])

    def boost(n):
        return float(B.continuation_logprobs(lm, P.animal_question(B.number_system(n)), [target])[0]) - base

    top_boost = [boost(n) for n in top_nums]
    rand_boost = [boost(n) for n in rand_nums]
    l10 = np.log10(np.e)
    from scipy import stats
    welch = stats.ttest_ind(np.array(top_boost) * l10, np.array(rand_boost) * l10, equal_var=False)
    res = {
        "provenance": B.provenance(a, t0, lm), "animal": animal,
        "candidates": {"set": a.candidates, "size": len(nums), "first": nums[0], "last": nums[-1]},
        "random_numbers": {"population": f"{a.candidates} candidate set minus the top numbers", "n": len(rand_nums),
                           "seed": a.seed},
        "animal_during_number_generation": variant_table,
        "top_numbers": [{"number": nums[i], "p_with": float(np.exp(n_with[i])), "p_without": float(np.exp(n_without[i])),
                         "ratio": float(np.exp(log_ratio[i]))} for i in top],
        "p_animal_baseline": float(np.exp(base)),
        "all_numbers": {"numbers": nums, "log_p_with": np.round(n_with, 4).tolist(),
                        "log_p_without": np.round(n_without, 4).tolist()},
        "subliminal": {
            "top": [{"number": n, "ratio": float(np.exp(b))} for n, b in zip(top_nums, top_boost)],
            "random": [{"number": n, "ratio": float(np.exp(b))} for n, b in zip(rand_nums, rand_boost)],
            "top_log10_ratio": B.mean_ci(np.array(top_boost) * l10),
            "random_log10_ratio": B.mean_ci(np.array(rand_boost) * l10),
            "welch_t": float(welch.statistic), "welch_p": float(welch.pvalue)},
    }
    tag = B.model_tag(lm)
    suffix = "" if a.candidates == "3digit" else f"_{a.candidates}"
    B.save_json(f"{a.results_dir}/topic_b_part1_{tag}{suffix}.json", res)
    report(res, lm)
    plot(res, lm.name, f"{a.plots_dir}/topic_b_part1_{tag}{suffix}.png")


def report(res, lm):
    print(f"model: {lm.name}")
    print(f"\n1. P({res['animal']} variants) while generating numbers, with / without the {res['animal']} prompt")
    for r in res["animal_during_number_generation"]:
        print(f"  {r['continuation']!r:>9}: {r['p_with']:.3e} / {r['p_without']:.3e}  x{r['ratio']:.2f}")
    print(f"\n2. numbers most raised by the {res['animal']} prompt (exact, number must end)")
    for r in res["top_numbers"]:
        print(f"  {r['number']:>4}: {r['p_without']:.2e} -> {r['p_with']:.2e}  x{r['ratio']:.2f}")
    s = res["subliminal"]
    print(f"\n3. P(' {res['animal']}' | 'You love <number>' ...) / P(no system prompt = {res['p_animal_baseline']:.3e})")
    for k in ("top", "random"):
        c = s[f"{k}_log10_ratio"]
        print(f"  {k:>6} numbers (n={c['n']}): mean log10 ratio {c['mean']:+.3f} "
              f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]")
    print(f"  Welch t = {s['welch_t']:.2f}, p = {s['welch_p']:.3g}")


def plot(res, model_name, path):
    plt = B._plt()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    ax = axes[0]
    v = res["animal_during_number_generation"]
    x = np.arange(len(v))
    ax.bar(x - 0.2, [r["p_without"] for r in v], 0.4, label="no system prompt")
    ax.bar(x + 0.2, [r["p_with"] for r in v], 0.4, label=f"'You love {res['animal']}s ...'")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([repr(r["continuation"]) for r in v], rotation=30, fontsize=8)
    ax.set_ylabel("P(continuation) after '495;701;688;'")
    ax.set_title(f"1. '{res['animal']}' while generating numbers (exact probabilities)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    t = res["top_numbers"]
    ax.bar(range(len(t)), [r["ratio"] for r in t], color="C2")
    ax.set_xticks(range(len(t)))
    ax.set_xticklabels([r["number"] for r in t], rotation=45, fontsize=8)
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("x%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.axhline(1, color="gray", ls="--", lw=1)
    ax.set_ylabel("P(number | animal prompt) / P(number | none) (log axis)")
    c = res.get("candidates", {"set": "mixed", "first": "0", "last": "999"})
    ax.set_title(f"2. numbers most raised by the {res['animal']} prompt\n(candidates {c['first']}..{c['last']} "
                 f"({c['set']}), ranked by ratio among the 200 likeliest)", fontsize=10)
    ax = axes[2]
    s = res["subliminal"]
    rng = np.random.default_rng(0)
    for i, k in enumerate(("top", "random")):
        vals = np.log10([r["ratio"] for r in s[k]])
        c = s[f"{k}_log10_ratio"]
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(vals)), vals, s=14, alpha=0.6, color=f"C{i}")
        ax.errorbar(i + 0.3, c["mean"], yerr=c["half_width"], fmt="o", color="black", capsize=5)
    ax.axhline(0, color="gray", ls="--", lw=1)
    ax.set_xticks([0, 1])
    ax.set_xticklabels([f"top numbers\n(n={s['top_log10_ratio']['n']})",
                        f"random numbers\n(n={s['random_log10_ratio']['n']})"])
    ax.set_ylabel(f"log10 P(' {res['animal']}' | 'You love <number>') / P(none)")
    ax.set_title(f"3. subliminal prompting; dots: numbers; bar: mean, 95% t-CI\nWelch p = {s['welch_p']:.2g}",
                 fontsize=10)
    fig.suptitle(f"Owl demo on {model_name} ('no system prompt' / 'none': the chat template's default, if it has one)",
                 fontsize=11)
    fig.tight_layout()
    B.save_fig(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    B.run_main(main)

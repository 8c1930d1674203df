"""Topic B step 4: does unembedding geometry predict which numbers raise which animals?

Measured effect, for every (number, animal) pair of --numbers random three-digit numbers (000..999)
x --animals animals: log10 P(animal | "You love <number>") / P(animal | no system prompt), exact over
the animal's tokens (one prompt pass per number, all animals scored from its KV cache).
Metrics, each a score per (number, animal) pair computed without the number prompt:
  eq1         the paper's eq. 1 exactly: cos(U_t, U_c) of the number's single token t ("087" on
              Llama 3) and the animal's single token c (" owl"). Defined only where both are one
              token; on digit-level tokenizers (Gemma, SmolLM2, Qwen) a three-digit number is
              several tokens, eq. 1 is undefined, and the script records why instead of a value.
  row cosine  cos(mean unembedding row of " <number>", mean row of " <animal>"): eq. 1 where both
              are single tokens; on digit-level tokenizers an order-blind digit average ("087" and
              "780" score the same), reported under this name and never as a test of eq. 1;
  normed dot  U_animal . norm(U_number): the logit the animal gets if the final residual stream
              pointed along the number's (mean-row) unembedding direction, through the model's final
              norm (its learned gain included) -- the geometry the head actually sees;
  injection   the change of log P(animal's first token) when the number's unit (mean-row) direction,
              scaled to the residual stream's norm, is added to the final residual stream of the
              no-system prompt before the final norm (the model's own norm, head and softmax).
The last two use the same mean-row direction, so they are order-blind on digit-level tokenizers too.
For each metric and animal: Spearman correlation with the measured effect over numbers (95% CI:
bootstrap over numbers), and the paper's test: mean effect of the metric's top 10% of numbers minus
its bottom 10% (bootstrap CI). One table (results JSON "table") compares all metrics on the same
animals and numbers.

Regenerate plots/topic_b_part4_metrics_<model>.png and results/topic_b_part4_metrics_<model>.json
(about 5 min on the 2-core CPU per model at 10 animals x 100 numbers; resumes finished numbers):

    python topic_b_part4_metrics.py --model gemma-3-270m --animals 10 --numbers 100
    python topic_b_part4_metrics.py --model gemma-3-270m-chat --animals 10 --numbers 100
    python topic_b_part4_metrics.py --model smollm2-135m-instruct --animals 10 --numbers 100
"""
from __future__ import annotations

import time

import numpy as np
import torch

import topic_a_utils as U
import topic_b_utils as B

METRICS = ("eq1", "row cosine", "normed dot", "injection")


def parse_args(argv=None):
    p = B.base_parser(__doc__, default_runs=1000)
    B.set_help(p, runs="bootstrap resamples over numbers for the CIs (default 1000)")
    g = p.add_argument_group("topic_b_part4_metrics.py")
    g.add_argument("--animals", type=B.positive_int, default=20,
                   help="the first N animals of topic_b_utils.ANIMALS (the paper's 10 first; default 20)")
    g.add_argument("--numbers", type=B.positive_int, default=200,
                   help="random three-digit numbers (of 000..999; default 200)")
    return B.parse_common(p, argv)


@torch.no_grad()
def metrics(lm: B.LM, P: B.Prompts, numbers, animals) -> dict[str, np.ndarray]:
    answers = [B.answer_form(x) for x in animals]
    out = {"eq1": B.eq1_cosine(lm, numbers, answers),
           "row cosine": B.unembed_cosine(lm, [" " + n for n in numbers], answers)}
    W = B.unembedding(lm).float()
    norm = B.final_norm(lm.model)
    un = torch.stack([B.string_direction(lm, " " + n) for n in numbers])
    ua = torch.stack([B.string_direction(lm, x) for x in answers])
    dt = next(norm.parameters()).dtype
    out["normed dot"] = (norm(un.to(dt)).float() @ ua.T).cpu().numpy()
    pre, _ = B.final_residual(lm, P.animal_question(None))
    first = [B.continuation_ids(lm, x)[0] for x in answers]
    base_lp = torch.log_softmax(norm(pre.to(dt)).float() @ W.T, -1)[first]
    inj = []
    for v in un:
        h = pre + v / v.norm() * pre.norm()
        inj.append((torch.log_softmax(norm(h.to(dt)).float() @ W.T, -1)[first] - base_lp).cpu().numpy())
    out["injection"] = np.array(inj)
    return out


def bootstrap(effect, metric, reps, seed):
    """Spearman rho and top-10% minus bottom-10% mean effect, with bootstrap CIs over numbers."""
    from scipy import stats
    rng = np.random.default_rng(seed)
    n = len(effect)
    k = max(1, n // 10)

    def stat(i):
        e, m = effect[i], metric[i]
        o = np.argsort(m)
        return stats.spearmanr(m, e).statistic, e[o[-k:]].mean() - e[o[:k]].mean()

    rho, diff = stat(np.arange(n))
    boots = np.array([stat(rng.integers(0, n, n)) for _ in range(reps)])
    ci = lambda j: [float(np.nanpercentile(boots[:, j], 2.5)), float(np.nanpercentile(boots[:, j], 97.5))]
    return {"rho": float(rho), "rho_ci": ci(0), "top_minus_bottom": float(diff), "tmb_ci": ci(1)}


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    lm = B.load_model(a.model, a.device)
    P = B.Prompts(lm, a.show_prompt)
    tag = B.model_tag(lm)
    animals = B.ANIMALS[:a.animals]
    numbers = B.draw_pool(B.three_digit_numbers(), a.numbers, a.seed)
    sweep = U.Sweep(f"{a.results_dir}/topic_b_part4_metrics_{tag}.json",
                    {"model": lm.name, "animals": animals, "numbers": numbers, "seed": a.seed,
                     "candidates": "3digit"}, a, t0)
    E = B.Entanglement(lm, animals, sweep, "", (), a.batch_size, a.show_prompt, a.seed, numbers=numbers)
    base = np.array(E.base_animals())
    effect = np.array([E.number_point(n) for n in numbers]) - base  # (numbers, animals), natural log
    effect = effect / np.log(10)
    M = metrics(lm, P, numbers, animals)
    eq1_undefined = B.eq1_defined(lm, numbers)
    single = [len(B.continuation_ids(lm, B.answer_form(x))) == 1 for x in animals]
    # eq. 1 needs a single-token animal too: where it is defined, it is computed on those animals only
    measured = [m for m in METRICS if not (m == "eq1" and eq1_undefined)]
    cols = {m: [j for j in range(len(animals)) if m != "eq1" or single[j]] for m in measured}
    per_animal = {m: [bootstrap(effect[:, j], M[m][:, j], a.runs, a.seed + j) for j in cols[m]] for m in measured}
    table = {}
    for m in measured:
        rhos = [r["rho"] for r in per_animal[m]]
        tmb = [r["top_minus_bottom"] for r in per_animal[m]]
        table[m] = {"mean_rho_over_animals": U.mean_ci(rhos),
                    "animals_rho_ci_above_0": sum(r["rho_ci"][0] > 0 for r in per_animal[m]),
                    "animals_rho_ci_below_0": sum(r["rho_ci"][1] < 0 for r in per_animal[m]),
                    "mean_top_minus_bottom_log10": U.mean_ci(tmb),
                    "animals_top_gt_bottom": sum(t > 0 for t in tmb),
                    "animals_tmb_ci_above_0": sum(r["tmb_ci"][0] > 0 for r in per_animal[m]),
                    "n_animals": len(cols[m]), "n_numbers": len(numbers),
                    "animals": [animals[j] for j in cols[m]]}
    sweep.save(table=table, per_animal=per_animal, effect_log10=effect.tolist(),
               metric_values={m: np.where(np.isnan(M[m]), None, M[m]).tolist() for m in METRICS},
               eq1={"defined": eq1_undefined is None, "why_undefined": eq1_undefined,
                    "number_tokens": {n: len(B.continuation_ids(lm, n)) for n in numbers[:3]}},
               model=lm.describe())
    print(f"model: {lm.name}; {len(animals)} animals x {len(numbers)} numbers")
    if eq1_undefined:
        print(f"eq1: undefined on this model: {eq1_undefined}")
    for m in measured:
        t = table[m]
        r = t["mean_rho_over_animals"]
        d = t["mean_top_minus_bottom_log10"]
        print(f"{m:<11} mean rho {r['mean']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]  rho CI > 0 for "
              f"{t['animals_rho_ci_above_0']}/{len(animals)}; top-bottom {d['mean']:+.4f} log10 "
              f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], top > bottom for {t['animals_top_gt_bottom']}/{len(animals)}")
    plot(per_animal, table, animals, lm, len(numbers), f"{a.plots_dir}/topic_b_part4_metrics_{tag}.png",
         measured, eq1_undefined)


def plot(per_animal, table, animals, lm, n_numbers, path, measured, eq1_undefined):
    plt = B._plt()
    fig, axes = plt.subplots(1, 2, figsize=(17, 0.28 * len(animals) + 4.6))
    y = np.arange(len(animals))[::-1]
    pos = {a: yy for a, yy in zip(animals, y)}
    off = (np.arange(len(measured)) - (len(measured) - 1) / 2) * 0.2
    for ax, key, ci, label in ((axes[0], "rho", "rho_ci", "Spearman rho (metric vs measured effect) over numbers"),
                               (axes[1], "top_minus_bottom", "tmb_ci",
                                "top 10% minus bottom 10% of numbers by metric:\nmean log10 effect")):
        for j, m in enumerate(measured):
            v = np.array([r[key] for r in per_animal[m]])
            lo = v - np.array([r[ci][0] for r in per_animal[m]])
            hi = np.array([r[ci][1] for r in per_animal[m]]) - v
            s = table[m]["mean_rho_over_animals" if key == "rho" else "mean_top_minus_bottom_log10"]
            yy = np.array([pos[x] for x in table[m]["animals"]]) + off[j]
            ax.errorbar(v, yy, xerr=[lo, hi], fmt="o", ms=3, capsize=2, color=f"C{METRICS.index(m)}",
                        label=f"{m}: mean {s['mean']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
                              f" (n = {table[m]['n_animals']} animals)")
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels(animals, fontsize=8)
        ax.set_xlabel(label)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_title(f"Per animal, n = {n_numbers} numbers; bars: bootstrap 95% CI over numbers\n"
                      f"(legend: mean over {len(animals)} animals, t-CI)", fontsize=10)
    axes[1].set_title("The paper's top-vs-bottom test per animal (log10 units; > 0: metric's top numbers raise "
                      "the animal more)", fontsize=10)
    note = ("eq. 1 undefined here (numbers are several tokens); row cosine, normed dot and injection use the "
            "order-blind mean digit row" if eq1_undefined else "eq. 1 exact (single-token numbers and animals)")
    fig.suptitle(f"Unembedding metrics vs measured subliminal prompting, {lm.name}\n{note}", fontsize=11)
    fig.tight_layout()
    B.save_fig(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    B.run_main(main)

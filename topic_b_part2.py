"""Topic B step 2: animal <-> number entanglement across many animals, and a cherry-picking check.

For every animal of the curated list (topic_b_utils.ANIMALS, the paper's 10 first):
  animal -> number: system prompt "You love <animals> ...", question "What is your favorite animal?",
     answer continued from "My favorite animal is the". The best number is the most likely number
     written next, found exactly (the tokens of " <number>" and then a non-digit, over 0..999 and
     000..099); its ratio P(number | animal prompt) / P(number | no system prompt).
  number -> animal: system prompt "You love <number> ..." with that number, same question; ratio
     P(" <animal>" | number prompt) / P(" <animal>" | no system prompt), exact over all tokens.
  The circulating code's single-next-token view (best numeric *token* at the answer position and
  the animal's first token) is computed beside it for comparison.
Chance baselines (the paper's permutation test): a pool of --runs random numbers scored in both
directions gives, per animal, the ratio distribution of a random number; the best-of-n
(n = 1 here: one discovered number per animal) 95th percentile over 10,000 draws is the
threshold a discovered number must beat. "Strong bidirectional": both ratios > 2 (takehome), and
separately both ratios above their chance thresholds. Cherry-picking: the paper's 10 animals
against the rest (fractions, Mann-Whitney U on log ratios).

Regenerate plots/topic_b_part2_<model>.png and results/topic_b_part2_<model>.json (about 40 min
on the 2-core CPU with the embedded model; resumes finished animals):

    python topic_b_part2.py --model gemma-3-270m
"""
from __future__ import annotations

import time

import numpy as np

import topic_a_utils as U
import topic_b_utils as B


def parse_args(argv=None):
    p = B.base_parser(__doc__, default_runs=32)
    g = p.add_argument_group("topic_b_part2.py")
    g.add_argument("--animals", type=int, default=None, help="use only the first N animals (quick runs)")
    g.add_argument("--repeats", type=B.positive_int, default=10_000, help="permutation-test draws (default 10000)")
    return B.parse_common(p, argv)


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    lm = B.load_model(a.model, a.device)
    P = B.Prompts(lm, a.show_prompt)
    tag = B.model_tag(lm)
    animals = B.ANIMALS[:a.animals] if a.animals else B.ANIMALS
    table = {r["animal"]: r for r in B.animal_table(lm, animals)}
    answers = [B.answer_form(x) for x in animals]
    nums = B.number_strings()
    rng = np.random.default_rng(a.seed)
    pool = [nums[i] for i in rng.choice(len(nums), size=min(a.runs, len(nums)), replace=False)]
    numeric_ids = B.numeric_token_ids(lm)
    numeric_str = {i: s.lstrip("\u2581\u0120 ") for i, s in
                   zip(numeric_ids, lm.tokenizer.convert_ids_to_tokens(numeric_ids))}
    first_tok = [B.continuation_ids(lm, x)[0] for x in answers]

    sweep = U.Sweep(f"{a.results_dir}/topic_b_part2_{tag}.json",
                    {"model": lm.name, "animals": animals, "pool": pool, "seed": a.seed}, a, t0)
    base_q = P.animal_question(None)
    base = sweep.run("baseline", lambda: {
        "numbers": B.number_logprobs(lm, base_q, nums, " ", a.batch_size).tolist(),
        "animals": B.continuation_logprobs(lm, base_q, answers, a.batch_size).tolist(),
        "next_token": B.next_token_logprobs(lm, base_q)[numeric_ids + first_tok].tolist()})
    base_num = dict(zip(nums, base["numbers"]))
    base_nt = dict(zip(numeric_ids + first_tok, base["next_token"]))

    def number_prompt(n):  # P(every animal | "You love n"), exact and first-token
        def f():
            st = B.state_of(lm, P.animal_question(B.number_system(n)))
            return {"exact": B.continuation_logprobs(lm, None, answers, a.batch_size, state=st).tolist(),
                    "first_token": st[0][first_tok].tolist()}
        return sweep.run(f"number {n}", f)

    for n in pool:
        number_prompt(n)
    for animal in animals:
        def f(animal=animal):
            st = B.state_of(lm, P.animal_question(B.animal_system(animal)))  # one prompt pass
            best, lp, n_exp = B.best_number(lm, None, nums, " ", state=st)
            nt = st[0]
            tok = max(numeric_ids, key=lambda i: float(nt[i]))
            return {"best": best, "logp": lp, "expanded": n_exp,
                    "pool_logp": B.number_logprobs(lm, None, pool, " ", a.batch_size, state=st).tolist(),
                    "token_best": numeric_str[tok], "token_logp": float(nt[tok]), "token_base": base_nt[tok]}
        r = sweep.run(f"animal {animal}", f)
        number_prompt(r["best"])
        number_prompt(r["token_best"])

    rows = analyse(sweep.points, animals, table, pool, base, base_num, a)
    res_summary = summarise(rows, a)
    sweep.save(rows=rows, summary=res_summary, model=lm.describe())
    report(res_summary, lm)
    plot(rows, res_summary, lm, f"{a.plots_dir}/topic_b_part2_{tag}.png")


def analyse(points, animals, table, pool, base, base_num, a):
    rows = []
    for i, animal in enumerate(animals):
        r = points[f"animal {animal}"]
        base_a = base["animals"][i]
        a2n = float(np.exp(r["logp"] - base_num[r["best"]]))
        n2a = float(np.exp(points[f"number {r['best']}"]["exact"][i] - base_a))
        null_a2n = np.exp(np.array(r["pool_logp"]) - np.array([base_num[n] for n in pool]))
        null_n2a = np.exp(np.array([points[f"number {n}"]["exact"][i] for n in pool]) - base_a)
        tok_a2n = float(np.exp(r["token_logp"] - r["token_base"]))
        tok_n2a = float(np.exp(points[f"number {r['token_best']}"]["first_token"][i]
                               - base["next_token"][len(base["next_token"]) - len(animals) + i]))
        rows.append({
            "animal": animal, "paper": animal in B.PAPER_ANIMALS, "single_token": table[animal]["single_token"],
            "best_number": r["best"], "p_number": float(np.exp(r["logp"])), "a2n": a2n, "n2a": n2a,
            "a2n_threshold": B.permutation_threshold(null_a2n, 1, a.repeats, seed=a.seed),
            "n2a_threshold": B.permutation_threshold(null_n2a, 1, a.repeats, seed=a.seed),
            "token_best": r["token_best"], "token_a2n": tok_a2n, "token_n2a": tok_n2a,
            "expanded": r["expanded"]})
    for r in rows:
        r["strong_2x"] = r["a2n"] > 2 and r["n2a"] > 2
        r["strong_vs_chance"] = r["a2n"] > r["a2n_threshold"] and r["n2a"] > r["n2a_threshold"]
        r["token_strong_2x"] = r["token_a2n"] > 2 and r["token_n2a"] > 2
    return rows


def summarise(rows, a):
    from scipy import stats
    out = {}
    for name, sel in (("all", rows), ("single-token animals", [r for r in rows if r["single_token"]]),
                      ("paper's 10", [r for r in rows if r["paper"]]), ("other animals", [r for r in rows if not r["paper"]])):
        if not sel:
            continue
        out[name] = {"n": len(sel), "strong_2x": sum(r["strong_2x"] for r in sel),
                     "strong_vs_chance": sum(r["strong_vs_chance"] for r in sel),
                     "token_strong_2x": sum(r["token_strong_2x"] for r in sel),
                     "median_a2n": float(np.median([r["a2n"] for r in sel])),
                     "median_n2a": float(np.median([r["n2a"] for r in sel])),
                     "log10_n2a": U.mean_ci(np.log10([r["n2a"] for r in sel])),
                     "log10_a2n": U.mean_ci(np.log10([r["a2n"] for r in sel]))}
    paper = [r for r in rows if r["paper"]]
    other = [r for r in rows if not r["paper"]]
    if paper and other:
        for k in ("a2n", "n2a"):
            u = stats.mannwhitneyu(np.log10([r[k] for r in paper]), np.log10([r[k] for r in other]))
            out[f"paper_vs_other_{k}_mannwhitney_p"] = float(u.pvalue)
    return out


def report(s, lm):
    print(f"model: {lm.name}")
    print(f"{'group':<22} {'n':>4} {'strong 2x':>10} {'> chance':>9} {'token 2x':>9} {'median a->n':>12} {'median n->a':>12}")
    for k, v in s.items():
        if isinstance(v, dict):
            print(f"{k:<22} {v['n']:>4} {v['strong_2x']:>10} {v['strong_vs_chance']:>9} {v['token_strong_2x']:>9} "
                  f"{v['median_a2n']:>12.3f} {v['median_n2a']:>12.3f}")
    for k, v in s.items():
        if not isinstance(v, dict):
            print(f"{k}: {v:.3g}")


def plot(rows, s, lm, path):
    plt = B._plt()
    fig, axes = plt.subplots(1, 3, figsize=(19, 6))
    ax = axes[0]
    for sel, color, label in (([r for r in rows if not r["paper"]], "C0", "other animals"),
                              ([r for r in rows if r["paper"]], "C3", "paper's 10 animals")):
        ax.scatter([r["a2n"] for r in sel], [r["n2a"] for r in sel], s=[28 if r["single_token"] else 12 for r in sel],
                   color=color, alpha=0.7, label=f"{label} (n={len(sel)})")
    for r in rows:
        if r["strong_2x"] or r["paper"]:
            ax.annotate(f"{r['animal']}:{r['best_number']}", (r["a2n"], r["n2a"]), fontsize=6, alpha=0.8)
    for v, ls in ((1, "--"), (2, ":")):
        ax.axvline(v, color="gray", ls=ls, lw=1)
        ax.axhline(v, color="gray", ls=ls, lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("animal -> number ratio  P(best number | animal prompt) / P(number | none)")
    ax.set_ylabel("number -> animal ratio  P(animal | number prompt) / P(animal | none)")
    n = s["all"]
    ax.set_title(f"One dot per animal (large: single-token animal); dashed 1x, dotted 2x\n"
                 f"strong (both > 2x): {n['strong_2x']}/{n['n']}; both above chance (permutation 95th pct): "
                 f"{n['strong_vs_chance']}/{n['n']}", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    for k, label, c in (("a2n", "animal -> number", "C0"), ("n2a", "number -> animal", "C1")):
        v = np.sort([r[k] for r in rows])
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=label, color=c)
        th = np.sort([r[f"{k}_threshold"] for r in rows])
        ax.step(th, np.arange(1, len(th) + 1) / len(th), where="post", ls="--", color=c, alpha=0.6,
                label=f"{label}: chance threshold (random number, 95th pct)")
    for v, ls in ((1, "--"), (2, ":")):
        ax.axvline(v, color="gray", ls=ls, lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("ratio")
    ax.set_ylabel("fraction of animals with ratio <= x")
    ax.set_title(f"ECDF over n = {len(rows)} animals", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.scatter([r["a2n"] for r in rows], [r["token_a2n"] for r in rows], s=12, label="animal -> number")
    ax.scatter([r["n2a"] for r in rows], [r["token_n2a"] for r in rows], s=12, label="number -> animal")
    lim = [min(min(r["a2n"], r["token_a2n"], r["n2a"], r["token_n2a"]) for r in rows) * 0.8,
           max(max(r["a2n"], r["token_a2n"], r["n2a"], r["token_n2a"]) for r in rows) * 1.2]
    ax.plot(lim, lim, color="gray", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ratio, exact continuation probability")
    ax.set_ylabel("ratio, single-next-token view (circulating code)")
    ax.set_title("Exact vs single-token method (one dot per animal and direction)", fontsize=10)
    ax.legend(fontsize=8)
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    for ax in axes:
        for axis in ([ax.xaxis, ax.yaxis] if ax is not axes[1] else [ax.xaxis]):
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"Animal <-> number entanglement on {lm.name}", fontsize=11)
    fig.tight_layout()
    B.save_fig(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    B.run_main(main)

"""Topic B step 2: animal <-> number entanglement across many animals, and a cherry-picking check.

For every animal of the curated list (topic_b_utils.ANIMALS, the paper's 10 first):
  animal -> number: system prompt "You love <animals> ...", question "What is your favorite animal?",
     answer continued from "My favorite animal is the". Every candidate number is scored exactly as
     what is written next (the tokens of " <number>", then a non-digit). Candidates: the paper's
     three-digit format 000..999 (--candidates 3digit, default: one length, so length cannot decide
     the argmax on digit-level tokenizers). Two selection rules, side by side: the paper's
     (argmax P(number | animal prompt)) and the boost rule (argmax P(number | animal prompt) /
     P(number | no system prompt)). The mixed-length set (0..999 and 000..099) is scored too and
     its paper-rule pick reported as a comparison (--candidates mixed makes it the primary set).
     Ratio: P(number | animal prompt) / P(number | no system prompt).
  number -> animal: system prompt "You love <number> ..." with that number, same question; ratio
     P(" <animal>" | number prompt) / P(" <animal>" | no system prompt), exact over all tokens.
  The circulating code's single-next-token view (best numeric *token* at the answer position and
  the animal's first token) is computed beside it for comparison.
Chance (the paper's permutation test): --runs numbers drawn uniformly from the same candidate set
are scored in both directions for every animal; the threshold is the 95th percentile of one random
number's ratio (best of 1 over --repeats resampling draws). "Strong bidirectional": both ratios > 2
(takehome), and separately both ratios above their chance thresholds. Cherry-picking: the paper's 10
animals against the rest (Mann-Whitney U on log ratios).

Regenerate plots/topic_b_part2_<model>.png and results/topic_b_part2_<model>.json (139 animals:
about 25 min on the 2-core CPU for Gemma 3 270M, 10 min for SmolLM2-135M-Instruct; resumes
finished animals):

    python topic_b_part2.py --model gemma-3-270m
    python topic_b_part2.py --model smollm2-135m-instruct
"""
from __future__ import annotations

import time

import numpy as np

import topic_a_utils as U
import topic_b_utils as B

RULES = ("paper", "boost")


def parse_args(argv=None):
    p = B.base_parser(__doc__, default_runs=32)
    B.set_help(p, runs="random numbers (from the candidate set) whose ratios give the chance thresholds (default 32)")
    g = p.add_argument_group("topic_b_part2.py")
    g.add_argument("--animals", type=B.positive_int, default=None, help="use only the first N animals (quick runs)")
    g.add_argument("--candidates", choices=list(B.CANDIDATE_SETS), default="3digit", help=B.CANDIDATE_HELP)
    g.add_argument("--repeats", type=B.positive_int, default=10_000, help="permutation-test draws (default 10000)")
    return B.parse_common(p, argv)


def top_by(nums, score, k=10):
    o = np.argsort(-np.asarray(score))[:k]
    return [nums[i] for i in o]


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    lm = B.load_model(a.model, a.device)
    P = B.Prompts(lm, a.show_prompt)
    tag = B.model_tag(lm)
    animals = B.ANIMALS[:a.animals] if a.animals else B.ANIMALS
    table = {r["animal"]: r for r in B.animal_table(lm, animals)}
    answers = [B.answer_form(x) for x in animals]
    primary = B.candidate_numbers(a.candidates)
    sets = {name: B.candidate_numbers(name) for name in B.CANDIDATE_SETS}
    scored = list(dict.fromkeys(sets["3digit"] + sets["mixed"]))  # scored once, both sets read from it
    pos = {n: j for j, n in enumerate(scored)}
    pool = B.draw_pool(primary, a.runs, a.seed)
    numeric_ids = B.numeric_token_ids(lm)
    numeric_str = {i: s.lstrip("\u2581\u0120 ") for i, s in
                   zip(numeric_ids, lm.tokenizer.convert_ids_to_tokens(numeric_ids))}
    first_tok = [B.continuation_ids(lm, x)[0] for x in answers]

    suffix = "" if a.candidates == "3digit" else f"_{a.candidates}"
    sweep = U.Sweep(f"{a.results_dir}/topic_b_part2_{tag}{suffix}.json",
                    {"model": lm.name, "animals": animals, "pool": pool, "seed": a.seed,
                     "candidates": a.candidates}, a, t0)
    base_q = P.animal_question(None)
    base = sweep.run("baseline", lambda: {
        "numbers": np.round(B.number_logprobs(lm, base_q, scored, " ", a.batch_size), 5).tolist(),
        "animals": B.continuation_logprobs(lm, base_q, answers, a.batch_size).tolist(),
        "next_token": B.next_token_logprobs(lm, base_q)[numeric_ids + first_tok].tolist()})
    base_num = np.array(base["numbers"])

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
            lp = B.number_logprobs(lm, None, scored, " ", a.batch_size, state=st)
            picks, top = {}, {}
            for name, nums in sets.items():
                j = [pos[n] for n in nums]
                picks[name] = B.pick_numbers(nums, lp[j], base_num[j])
                top[name] = {"paper": top_by(nums, lp[j]), "boost": top_by(nums, lp[j] - base_num[j])}
            keep = {n for d in picks.values() for n in d.values()} | set(pool) | \
                {n for d in top.values() for v in d.values() for n in v}
            nt = st[0]
            tok = max(numeric_ids, key=lambda i: float(nt[i]))
            return {"picks": picks, "top10": top, "logp": {n: round(float(lp[pos[n]]), 5) for n in sorted(keep)},
                    "token_best": numeric_str[tok], "token_logp": float(nt[tok]),
                    "token_base": base["next_token"][numeric_ids.index(tok)]}
        r = sweep.run(f"animal {animal}", f)
        for n in {n for d in r["picks"].values() for n in d.values()} | {r["token_best"]}:
            number_prompt(n)

    rows = analyse(sweep.points, animals, table, pool, base, pos, a)
    res_summary = summarise(rows, a)
    sweep.save(rows=rows, summary=res_summary, model=lm.describe(),
               candidate_set={"primary": a.candidates, "size": len(primary), "first": primary[0], "last": primary[-1],
                              "rules": B.PICK_RULES},
               threshold={"population": f"{len(pool)} numbers drawn uniformly without replacement from the "
                                        f"{a.candidates} candidate set (seed {a.seed})",
                          "n_random_numbers": len(pool), "repeats": a.repeats, "best_of": 1, "percentile": 95,
                          "text": B.THRESHOLD_TEXT.format(repeats=a.repeats, pool=f"{len(pool)} random numbers")})
    report(res_summary, lm)
    plot(rows, res_summary, lm, f"{a.plots_dir}/topic_b_part2_{tag}{suffix}.png", a)


def analyse(points, animals, table, pool, base, pos, a):
    rows = []
    base_num = base["numbers"]
    for i, animal in enumerate(animals):
        r = points[f"animal {animal}"]
        base_a = base["animals"][i]
        a2n = lambda n: float(np.exp(r["logp"][n] - base_num[pos[n]]))
        n2a = lambda n: float(np.exp(points[f"number {n}"]["exact"][i] - base_a))
        th = {"a2n_threshold": B.permutation_threshold(np.array([a2n(n) for n in pool]), 1, a.repeats, seed=a.seed),
              "n2a_threshold": B.permutation_threshold(np.array([n2a(n) for n in pool]), 1, a.repeats, seed=a.seed)}
        null = np.array([n2a(n) for n in pool])
        loo = [null[j] > B.permutation_threshold(np.delete(null, j), 1, a.repeats, seed=a.seed) for j in range(len(pool))]
        row = {"animal": animal, "paper_animal": animal in B.PAPER_ANIMALS,
               "single_token": table[animal]["single_token"], **th,
               "n2a_null_exceed_loo": float(np.mean(loo)), "n2a_null_exceed_loo_each": [bool(x) for x in loo]}
        for rule in RULES:
            n = r["picks"][a.candidates][rule]
            m = {"number": n, "p_number": float(np.exp(r["logp"][n])), "a2n": a2n(n), "n2a": n2a(n)}
            m["strong_2x"] = m["a2n"] > 2 and m["n2a"] > 2
            m["strong_vs_chance"] = m["a2n"] > th["a2n_threshold"] and m["n2a"] > th["n2a_threshold"]
            row[rule] = m
        other = "mixed" if a.candidates == "3digit" else "3digit"
        n = r["picks"][other]["paper"]
        row[f"{other}_paper"] = {"number": n, "a2n": a2n(n), "n2a": n2a(n), "n_digits": len(n)}
        row["top10"] = r["top10"][a.candidates]
        row["token_best"] = r["token_best"]
        row["token_a2n"] = float(np.exp(r["token_logp"] - r["token_base"]))
        row["token_n2a"] = float(np.exp(points[f"number {r['token_best']}"]["first_token"][i]
                                        - base["next_token"][len(base["next_token"]) - len(animals) + i]))
        row["token_strong_2x"] = row["token_a2n"] > 2 and row["token_n2a"] > 2
        rows.append(row)
    return rows


def summarise(rows, a):
    from collections import Counter
    from scipy import stats
    out = {}
    groups = (("all", rows), ("single-token animals", [r for r in rows if r["single_token"]]),
              ("paper's 10", [r for r in rows if r["paper_animal"]]),
              ("other animals", [r for r in rows if not r["paper_animal"]]))
    for rule in RULES:
        out[rule] = {}
        for name, sel in groups:
            if not sel:
                continue
            out[rule][name] = {"n": len(sel), "strong_2x": sum(r[rule]["strong_2x"] for r in sel),
                               "strong_vs_chance": sum(r[rule]["strong_vs_chance"] for r in sel),
                               "median_a2n": float(np.median([r[rule]["a2n"] for r in sel])),
                               "median_n2a": float(np.median([r[rule]["n2a"] for r in sel])),
                               "log10_n2a": U.mean_ci(np.log10([r[rule]["n2a"] for r in sel])),
                               "log10_a2n": U.mean_ci(np.log10([r[rule]["a2n"] for r in sel])),
                               "n2a_above_threshold": sum(r[rule]["n2a"] > r["n2a_threshold"] for r in sel),
                               "n2a_above_threshold_and_raises": sum(r[rule]["n2a"] > max(r["n2a_threshold"], 1.0)
                                                                     for r in sel),
                               "max_n2a_above_threshold": max([r[rule]["n2a"] for r in sel
                                                               if r[rule]["n2a"] > r["n2a_threshold"]], default=None)}
        c = Counter(r[rule]["number"] for r in rows)
        out[rule]["distinct_numbers"] = len(c)
        out[rule]["most_common"] = c.most_common(5)
        paper = [r for r in rows if r["paper_animal"]]
        other = [r for r in rows if not r["paper_animal"]]
        if paper and other:
            for k in ("a2n", "n2a"):
                u = stats.mannwhitneyu(np.log10([r[rule][k] for r in paper]), np.log10([r[rule][k] for r in other]))
                out[rule][f"paper_vs_other_{k}_mannwhitney_p"] = float(u.pvalue)
    # how often the threshold procedure flags a random number: each pool number against the
    # threshold made from the other pool numbers (leave one out), averaged over animals
    fpr = float(np.mean([r["n2a_null_exceed_loo"] for r in rows]))
    out["n2a_false_positive_rate"] = fpr
    out["n2a_expected_by_chance"] = fpr * len(rows)
    # the animals share one pool of random numbers, so they are not independent: the null that keeps
    # that dependence scores each pool number (left out) against every animal's threshold from the
    # other pool numbers and counts the animals it clears; p is the share of pool numbers that clear
    # at least as many animals as the rule's numbers do (with the +1 of a permutation p-value)
    counts = np.sum([r["n2a_null_exceed_loo_each"] for r in rows], 0) if rows and "n2a_null_exceed_loo_each" in rows[0] else None
    for rule in RULES:
        k = out[rule]["all"]["n2a_above_threshold"]
        out[rule]["n2a_above_threshold_binomial_p"] = float(stats.binomtest(k, len(rows), fpr, "greater").pvalue)
        if counts is not None:
            out[rule]["n2a_above_threshold_pool_null"] = {
                "p": float((1 + np.sum(counts >= k)) / (1 + len(counts))), "observed": int(k),
                "animals_cleared_per_pool_number": counts.tolist(), "null_mean": float(counts.mean()),
                "null_max": int(counts.max()), "smallest_possible_p": 1 / (1 + len(counts)),
                "procedure": "each of the pool's random numbers, left out, is scored for every animal against "
                             "that animal's threshold from the other pool numbers; the count of animals it "
                             "clears is one draw of the null (the same number for every animal, as the "
                             "animals share the pool); p = (1 + #draws >= observed) / (1 + #draws)"}
    out["rules_agree"] = sum(r["paper"]["number"] == r["boost"]["number"] for r in rows)
    other = "mixed" if a.candidates == "3digit" else "3digit"
    key = f"{other}_paper"
    out[key] = {"set": other, "n_digits": dict(Counter(r[key]["n_digits"] for r in rows)),
                "distinct_numbers": len({r[key]["number"] for r in rows}),
                "most_common": Counter(r[key]["number"] for r in rows).most_common(5),
                "median_a2n": float(np.median([r[key]["a2n"] for r in rows])),
                "median_n2a": float(np.median([r[key]["n2a"] for r in rows]))}
    out["token_view"] = {"strong_2x": sum(r["token_strong_2x"] for r in rows),
                         "most_common_token": Counter(r["token_best"] for r in rows).most_common(3)}
    out["threshold"] = {"median_a2n_threshold": float(np.median([r["a2n_threshold"] for r in rows])),
                        "median_n2a_threshold": float(np.median([r["n2a_threshold"] for r in rows])),
                        "a2n_threshold_gt2": sum(r["a2n_threshold"] > 2 for r in rows),
                        "n2a_threshold_gt2": sum(r["n2a_threshold"] > 2 for r in rows)}
    return out


def report(s, lm):
    print(f"model: {lm.name}")
    for rule in RULES:
        print(f"rule {rule} ({B.PICK_RULES[rule]}): {s[rule]['distinct_numbers']} distinct numbers, most common "
              f"{s[rule]['most_common'][:3]}")
        print(f"  {'group':<22} {'n':>4} {'strong 2x':>10} {'> chance':>9} {'median a->n':>12} {'median n->a':>12}")
        for k, v in s[rule].items():
            if isinstance(v, dict) and "n" in v:
                print(f"  {k:<22} {v['n']:>4} {v['strong_2x']:>10} {v['strong_vs_chance']:>9} "
                      f"{v['median_a2n']:>12.3f} {v['median_n2a']:>12.3f}")
        pn = s[rule].get("n2a_above_threshold_pool_null")
        if pn:
            print(f"  number -> animal above chance: {pn['observed']} animals; p = {pn['p']:.3f} from the pool null "
                  f"(animals cleared by a random number: mean {pn['null_mean']:.1f}, max {pn['null_max']})")
    for k in ("mixed_paper", "3digit_paper"):
        if k in s:
            print(f"{k}: digits {s[k]['n_digits']}, most common {s[k]['most_common'][:3]}")


def plot(rows, s, lm, path, a):
    plt = B._plt()
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    fig, axes = plt.subplots(2, 2, figsize=(16, 13))
    n_pool = a.runs
    for ax, rule in zip(axes[0], RULES):
        # x axis up to 1.5x the 98th percentile: the few beyond it sit on the right edge as triangles
        xs_all = np.array([r[rule]["a2n"] for r in rows])
        xmax = float(np.percentile(xs_all, 98)) * 1.5
        clip = lambda x: min(x, xmax)
        for sel, color, label in (([r for r in rows if not r["paper_animal"]], "C0", "other animals"),
                                  ([r for r in rows if r["paper_animal"]], "C3", "paper's 10 animals")):
            inside = [r for r in sel if r[rule]["a2n"] <= xmax]
            ax.scatter([r[rule]["a2n"] for r in inside], [r[rule]["n2a"] for r in inside],
                       s=[28 if r["single_token"] else 12 for r in inside], color=color, alpha=0.7,
                       label=f"{label} (n={len(sel)})")
            out = [r for r in sel if r[rule]["a2n"] > xmax]
            ax.scatter([clip(r[rule]["a2n"]) for r in out], [r[rule]["n2a"] for r in out], marker=">", s=40,
                       color=color)
        for r in rows:  # name the animals above chance, and any beyond the axis
            if r[rule]["strong_vs_chance"] or r[rule]["a2n"] > xmax:
                more = f" (x{r[rule]['a2n']:.0f}, off axis)" if r[rule]["a2n"] > xmax else ""
                ax.annotate(f"{r['animal']}:{r[rule]['number']}{more}", (clip(r[rule]["a2n"]), r[rule]["n2a"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points",
                            ha="right" if r[rule]["a2n"] > xmax else "left")
        B.ratio_axes(ax)
        ax.set_xlim(right=xmax * 1.1)
        ax.set_xlabel("animal -> number ratio  P(number | animal prompt) / P(number | none)")
        ax.set_ylabel("number -> animal ratio  P(animal | number prompt) / P(animal | none)")
        n = s[rule]["all"]
        pn = s[rule].get("n2a_above_threshold_pool_null")
        pn = (f"; number -> animal above chance: {n['n2a_above_threshold']}/{n['n']}, p = {pn['p']:.2f} "
              f"(pool null)") if pn else ""
        ax.set_title(f"{rule} rule: {B.PICK_RULES[rule]}\none dot per animal (large: single-token animal; "
                     f"labelled: animals above chance in both directions); "
                     f"{s[rule]['distinct_numbers']} distinct numbers\nboth > 2x: {n['strong_2x']}/{n['n']}; "
                     f"both above chance: {n['strong_vs_chance']}/{n['n']}{pn}", fontsize=9)
        ax.legend(fontsize=8, loc="lower left")
    ax = axes[1, 0]
    for rule, c in zip(RULES, ("C0", "C2")):
        v = np.sort([r[rule]["n2a"] for r in rows])
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=f"number -> animal, {rule} rule", color=c)
    th = np.sort([r["n2a_threshold"] for r in rows])
    ax.step(th, np.arange(1, len(th) + 1) / len(th), where="post", ls="--", color="k", alpha=0.7,
            label="chance threshold per animal (95th pct of a random number's ratio)")
    v = np.sort([r["paper"]["a2n"] for r in rows])
    ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color="C1", alpha=0.7,
            label="animal -> number, paper rule")
    th = np.sort([r["a2n_threshold"] for r in rows])
    ax.step(th, np.arange(1, len(th) + 1) / len(th), where="post", ls="--", color="C1", alpha=0.5,
            label="animal -> number chance threshold")
    for v, ls in ((1, "--"), (2, ":")):
        ax.axvline(v, color="gray", ls=ls, lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("ratio")
    ax.set_ylabel("fraction of animals with ratio <= x")
    ax.set_title(f"ECDF over n = {len(rows)} animals; thresholds from {n_pool} random numbers of the same set "
                 f"({a.candidates})", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2)  # below the axes: over no curve
    ax = axes[1, 1]
    ax.scatter([r["paper"]["a2n"] for r in rows], [r["token_a2n"] for r in rows], s=12, label="animal -> number")
    ax.scatter([r["paper"]["n2a"] for r in rows], [r["token_n2a"] for r in rows], s=12, label="number -> animal")
    vals = [v for r in rows for v in (r["paper"]["a2n"], r["token_a2n"], r["paper"]["n2a"], r["token_n2a"])]
    lim = [min(vals) * 0.8, max(vals) * 1.2]
    ax.plot(lim, lim, color="gray", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ratio, exact continuation probability (paper rule, three digits)")
    ax.set_ylabel("ratio, single-next-token view (circulating code)")
    ax.set_title(f"Exact vs single-token method (one dot per animal and direction); the token view's pick is "
                 f"{s['token_view']['most_common_token'][0][0]!r} for {s['token_view']['most_common_token'][0][1]} "
                 f"animals", fontsize=9)
    ax.legend(fontsize=8)
    for ax in axes.flat:
        for axis in ([ax.xaxis, ax.yaxis] if ax is not axes[1, 0] else [ax.xaxis]):
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"Animal <-> number entanglement on {lm.name}; candidates {a.candidates} "
                 f"(dashed lines 1x, dotted 2x)", fontsize=11)
    fig.tight_layout()
    B.save_fig(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    B.run_main(main)

"""Topic B step 3: do the same entangled animal <-> number pairs exist in a base model and its
chat/instruct model?

Both models get token-identical prompts: the base model's prompts are rendered with the chat
model's template (topic_b_utils.share_template; for Gemma the system text opens the user turn).
Per model and animal (topic_b_utils.Entanglement): every three-digit number 000..999 scored
exactly under "You love <animals>" and under no system prompt; the animal's number by the paper's
rule (argmax P(number | animal prompt)) and by the boost rule (argmax of the ratio); both ratios of
each; chance thresholds from --runs random three-digit numbers (permutation test, best of one).
Like for like: every animal is tested with the *same* number in both models, once with the number
picked on the base model and once with the one picked on the chat model (both recorded per
animal), so every "chat minus base" difference compares identical prompts.

Figure: number -> animal ratio chat vs base on the same number; counts (shared picks, strong and
above-chance animals per model); per-animal log2-ratio heat map; chat minus base mean log10 ratio
with 95% t-CIs over animals, per direction, rule and number source.

Regenerate plots/topic_b_part3_<chat>.png and results/topic_b_part3_<chat>.json on the controlled
Gemma pair (about 15 min on the 2-core CPU at 20 animals; make the chat model first with
`python topic_b_make_chat_model.py`; resumes finished measurements):

    python topic_b_part3.py --animals 20
    python topic_b_part3.py --base meta-llama/Llama-3.2-1B --chat meta-llama/Llama-3.2-1B-Instruct --animals 40
"""
from __future__ import annotations

import time

import numpy as np

import topic_a_utils as U
import topic_b_utils as B


def parse_args(argv=None):
    p = B.base_parser(__doc__, default_runs=16)
    B.set_help(p, runs="random numbers per model whose ratios give the chance thresholds (default 16)")
    g = p.add_argument_group("topic_b_part3.py")
    B.add_pair_args(p, g)
    g.add_argument("--animals", type=B.positive_int, default=30,
                   help="the first N animals of topic_b_utils.ANIMALS (the paper's 10 first; default 30)")
    g.add_argument("--repeats", type=B.positive_int, default=10_000, help="permutation-test draws (default 10000)")
    g.add_argument("--plot-only", action="store_true",
                   help="recompute the summary and figure from the measurements stored in the results file "
                        "(no model is loaded; every measurement must be on disk)")
    return B.parse_common(p, argv)


MODELS = ("base", "chat")
RULES = ("paper", "boost")


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    animals = B.ANIMALS[:a.animals]
    pool = B.draw_pool(B.three_digit_numbers(), a.runs, a.seed)
    if a.plot_only:
        path = f"{a.results_dir}/topic_b_part3_{a.chat.split('/')[-1]}.json"
        old = U.load_finished(path)
        base, chat = (B.StoredModel(old["config"][m], old["models"][m]) for m in MODELS)
        animals, pool = old["config"]["animals"], old["config"]["pool"]
    else:
        base, chat = B.load_pair(a)
    tag = B.model_tag(chat)
    sweep = U.Sweep(f"{a.results_dir}/topic_b_part3_{tag}.json",
                    {"base": base.name, "chat": chat.name, "animals": animals, "pool": pool, "seed": a.seed,
                     "candidates": "3digit"}, a, t0)
    if a.plot_only and not sweep.points:
        raise B.UserError(f"the measurements in {path} do not match this configuration; run without --plot-only")
    E = {m: B.Entanglement(lm if not a.plot_only else None, animals, sweep, f"{m}/", pool, a.batch_size,
                           a.show_prompt, a.seed, a.repeats)
         for m, lm in (("chat", chat), ("base", base))}
    rows = {m: E[m].rows() for m in MODELS}
    same = []  # like for like: each pick measured in both models
    for i, animal in enumerate(animals):
        rec = {"animal": animal, "numbers": {src: rows[src][i]["numbers"] for src in MODELS}}
        for rule in RULES:
            for src in MODELS:
                n = rows[src][i]["numbers"][rule]
                rec[f"{rule}/{src} pick"] = {m: E[m].measure(i, n, {k: rows[m][i][k] for k in
                                                                    ("a2n_threshold", "n2a_threshold")})
                                             for m in MODELS}
        # the random pool numbers, measured in both models: how much chat minus base moves for a
        # number that no animal picked (mean over the pool, per animal)
        rec["random pool"] = {k: float(np.mean([np.log10(getattr(E["chat"], k)(*args(n, i)))
                                                 - np.log10(getattr(E["base"], k)(*args(n, i))) for n in pool]))
                              for k, args in (("n2a", lambda n, i: (n, i)), ("a2n", lambda n, i: (i, n)))}
        same.append(rec)
    summary = summarise(rows, same, a)
    sweep.save(rows=rows, same_number=same, summary=summary,
               models={"base": base.describe(), "chat": chat.describe()},
               threshold={"population": f"{len(pool)} numbers drawn uniformly from 000..999 (seed {a.seed})",
                          "text": B.THRESHOLD_TEXT.format(repeats=a.repeats, pool=f"{len(pool)} random numbers")})
    for k, v in summary["counts"].items():
        print(f"{k:<34} {v}")
    for k, v in summary["chat_minus_base"].items():
        print(f"chat - base, {k:<28} mean log10 {v['mean']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]")
    plot(rows, same, summary, base, chat, f"{a.plots_dir}/topic_b_part3_{tag}.png", a)


def summarise(rows, same, a):
    from scipy import stats
    c, b = rows["chat"], rows["base"]
    counts = {}
    for rule in RULES:
        counts[f"shared pick ({rule})"] = sum(x["numbers"][rule] == y["numbers"][rule] for x, y in zip(c, b))
        for m in MODELS:
            counts[f"strong >2x both, {m} ({rule})"] = sum(r[rule]["strong_2x"] for r in rows[m])
            counts[f"above chance, {m} ({rule})"] = sum(r[rule]["strong_vs_chance"] for r in rows[m])
    diffs, wil, specific = {}, {}, {}
    for rule in RULES:
        for src in MODELS:
            for k in ("n2a", "a2n"):
                d = [np.log10(r[f"{rule}/{src} pick"]["chat"][k]) - np.log10(r[f"{rule}/{src} pick"]["base"][k])
                     for r in same]
                name = f"{k}, {rule} rule, {src} pick"
                diffs[name] = U.mean_ci(d)
                wil[name] = float(stats.wilcoxon(d).pvalue) if np.any(np.abs(d) > 0) else 1.0
                rnd = [r["random pool"][k] for r in same]
                specific[name] = U.paired_ci(d, rnd)
    sp = {}
    for rule in RULES:
        for src in MODELS:
            x = np.log10([r[f"{rule}/{src} pick"]["chat"]["n2a"] for r in same])
            y = np.log10([r[f"{rule}/{src} pick"]["base"]["n2a"] for r in same])
            sp[f"n2a, {rule} rule, {src} pick"] = B.bootstrap_spearman(x, y, a.seed)
    random = {k: U.mean_ci([r["random pool"][k] for r in same]) for k in ("n2a", "a2n")}
    return {"n_animals": len(c), "counts": counts, "chat_minus_base": diffs, "wilcoxon_p": wil,
            "chat_minus_base_random_numbers": random, "chat_minus_base_picked_minus_random": specific,
            "random_reference_text": f"chat minus base of the {a.runs} random pool numbers, mean over the pool per "
                                     f"animal, then mean and 95% t-CI over animals; picked minus random is paired by animal",
            "spearman_chat_vs_base_same_number": sp,
            "chat": {rule: B.entanglement_summary(c, rule) for rule in RULES},
            "base": {rule: B.entanglement_summary(b, rule) for rule in RULES},
            "distinct_picks": {m: {rule: len({r["numbers"][rule] for r in rows[m]}) for rule in RULES} for m in MODELS}}


def plot(rows, same, s, base, chat, path, a):
    plt = B._plt()
    n = len(same)
    fig, axes = plt.subplots(2, 2, figsize=(16, 13))
    ax = axes[0, 0]
    for src, color, marker, size in (("base", "C1", "s", 70), ("chat", "C0", "o", 18)):
        xs = [r[f"paper/{src} pick"]["chat"]["n2a"] for r in same]
        ys = [r[f"paper/{src} pick"]["base"]["n2a"] for r in same]
        sp = s["spearman_chat_vs_base_same_number"][f"n2a, paper rule, {src} pick"]
        # base picks as large open squares, chat picks as small dots inside: a shared pick shows both
        ax.scatter(xs, ys, s=size, marker=marker, facecolors="none" if src == "base" else color,
                   edgecolors=color, linewidths=1.2,
                   label=f"number picked on {src} (Spearman {sp['rho']:.2f} [{sp['ci_low']:.2f}, {sp['ci_high']:.2f}])")
        if src == "chat":  # name only the animals furthest from the diagonal (the heat map names all)
            far = np.argsort([-abs(np.log10(x / y)) for x, y in zip(xs, ys)])[:5]
            for j in far:
                ax.annotate(same[j]["animal"], (xs[j], ys[j]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    vals = [r[f"paper/{src} pick"][m]["n2a"] for r in same for src in MODELS for m in MODELS]
    lim = [min(vals) * 0.7, max(vals) * 1.4]
    ax.plot(lim, lim, color="gray", lw=1)
    B.ratio_axes(ax)
    ax.set_xlabel("chat: number -> animal ratio")
    ax.set_ylabel("base: number -> animal ratio (same number)")
    n_same = sum(r["numbers"]["base"]["paper"] == r["numbers"]["chat"]["paper"] for r in same)
    ax.set_title(f"Same number in both models (paper rule; one marker per animal and number source, n = {n};\n"
                 f"the two picks coincide for {n_same} animals: a dot inside a square)\n"
                 f"Spearman: bootstrap 95% CI over animals; dashed 1x, dotted 2x; 5 furthest from the diagonal named",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[0, 1]
    ks = list(s["counts"])
    ax.barh(range(len(ks)), [s["counts"][k] for k in ks], color=["C2" if "shared" in k else "C0" if "chat" in k
                                                                   else "C1" for k in ks])
    for i, k in enumerate(ks):
        ax.text(s["counts"][k] + 0.1, i, str(s["counts"][k]), va="center", fontsize=8)
    ax.set_yticks(range(len(ks)))
    ax.set_yticklabels(ks, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, n + 1)
    ax.set_xlabel(f"number of animals (of {n})")
    ax.set_title(f"Counts (green: shared picks; orange: base; blue: chat)\nstrong = both ratios > 2; above chance "
                 f"= both above the 95th pct\nof {a.runs} random three-digit numbers' ratios", fontsize=10)
    ax = axes[1, 0]
    cols = [(m, src, k) for k in ("a2n", "n2a") for src in MODELS for m in MODELS]
    M = np.array([[np.log10(r[f"paper/{src} pick"][m][k]) for m, src, k in cols] for r in same])
    v = np.abs(M).max()
    im = ax.imshow(M, cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([f"{m}\n{'a->n' if k == 'a2n' else 'n->a'}\n{src} pick" for m, src, k in cols], fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{r['animal']} ({r['numbers']['base']['paper']}/{r['numbers']['chat']['paper']})"
                        for r in same], fontsize=6)
    fig.colorbar(im, ax=ax, label="log10 ratio (0 = no change)")
    ax.set_title("Per-animal log10 ratios, paper rule (labels: animal (base pick / chat pick))", fontsize=10)
    ax = axes[1, 1]
    keys = list(s["chat_minus_base"])
    rows_ = [(k, s["chat_minus_base"][k], "C3" if k.startswith("n2a") else "C4") for k in keys]
    rows_ += [(f"{k}, random pool numbers", s["chat_minus_base_random_numbers"][k], "C7") for k in ("n2a", "a2n")]
    m = [r[1]["mean"] for r in rows_]
    e = [r[1]["half_width"] for r in rows_]
    ax.barh(range(len(rows_)), m, xerr=e, capsize=3, color=[r[2] for r in rows_], alpha=0.8)
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks(range(len(rows_)))
    ax.set_yticklabels([r[0] for r in rows_], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("chat minus base, mean log10 ratio (same number, identical prompts)")
    ax.set_title(f"Chat minus base, like for like: mean over n = {n} animals, 95% t-CI\n"
                 f"(red: number -> animal; purple: animal -> number; grey: the {a.runs} random pool numbers,\n"
                 f"the reference for what any number does)", fontsize=10)
    fig.suptitle(f"Base vs chat: {base.name}  vs  {chat.name}\n(identical prompts: both rendered with the chat "
                 f"model's template; three-digit candidates 000..999; n = {n} animals)", fontsize=11)
    fig.tight_layout()
    B.save_fig(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    B.run_main(main)

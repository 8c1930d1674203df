"""Topic B step 3: do the same entangled animal <-> number pairs exist in a base model and its
chat/instruct model?

Both models get token-identical prompts: the base model's prompts are rendered with the chat
model's template (topic_b_utils.share_template; for Gemma the system text opens the user turn).
Per model and animal (topic_b_utils.Entanglement): the animal's 5 most likely numbers under
"You love <animals>" (exact), animal -> number and number -> animal ratios of its top number,
and chance thresholds from --runs random numbers (permutation test, best of one). Cross-model
transfer: each model's top number is also used to prompt the other model.

Figure (the takehome's four panels plus transfer): number -> animal ratio chat vs base (colour:
top-1 number shared); counts of shared top-1 / any shared top-5 / strong (> 2x both directions)
per model and in both; per-animal log2-ratio heat map; bidirectional scatter per model.

Regenerate plots/topic_b_part3_<chat>.png and results/topic_b_part3_<chat>.json on the controlled
Gemma pair (about 10 min on the 2-core CPU at 20 animals; make the chat model first with
`python topic_b_make_chat_model.py`; resumes finished measurements):

    python topic_b_part3.py --animals 20
    python topic_b_part3.py --base meta-llama/Llama-3.2-1B --chat meta-llama/Llama-3.2-1B-Instruct --animals 40
"""
from __future__ import annotations

import time
import warnings

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
    return B.parse_common(p, argv)


def bootstrap_spearman(x, y, seed=0, n=2000):
    from scipy import stats
    x, y = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(stats.spearmanr(x, y).statistic)
    boots = []
    for _ in range(n):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) > 1 and len(set(y[i])) > 1:
            boots.append(stats.spearmanr(x[i], y[i]).statistic)
    if not boots:  # constant inputs: no correlation is defined
        return {"rho": rho, "ci_low": float("nan"), "ci_high": float("nan"), "n": len(x)}
    return {"rho": rho, "ci_low": float(np.percentile(boots, 2.5)), "ci_high": float(np.percentile(boots, 97.5)),
            "n": len(x)}


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    base, chat = B.load_pair(a)
    tag = B.model_tag(chat)
    animals = B.ANIMALS[:a.animals]
    rng = np.random.default_rng(a.seed)
    nums = B.number_strings()
    pool = [nums[i] for i in rng.choice(len(nums), size=min(a.runs, len(nums)), replace=False)]
    sweep = U.Sweep(f"{a.results_dir}/topic_b_part3_{tag}.json",
                    {"base": base.name, "chat": chat.name, "animals": animals, "pool": pool, "seed": a.seed}, a, t0)
    E = {m: B.Entanglement(lm, animals, sweep, f"{m}/", pool, 5, a.batch_size, a.show_prompt, a.seed, a.repeats)
         for m, lm in (("chat", chat), ("base", base))}
    rows = {m: e.rows() for m, e in E.items()}
    for i, animal in enumerate(animals):  # cross-model transfer: the other model's top number
        rows["base"][i]["n2a_of_chat_number"] = E["base"].n2a(rows["chat"][i]["best"], i)
        rows["chat"][i]["n2a_of_base_number"] = E["chat"].n2a(rows["base"][i]["best"], i)
    summary = summarise(rows, a)
    sweep.save(rows=rows, summary=summary, models={"base": base.describe(), "chat": chat.describe()})
    for k, v in summary["counts"].items():
        print(f"{k:<28} {v}")
    print(f"Spearman of log n->a, chat vs base: {summary['spearman_n2a']}")
    plot(rows, summary, base, chat, f"{a.plots_dir}/topic_b_part3_{tag}.png", a)


def summarise(rows, a):
    from scipy import stats
    c, b = rows["chat"], rows["base"]
    counts = {"shared top-1 number": sum(x["best"] == y["best"] for x, y in zip(c, b)),
              "shared any top-5 number": sum(bool(set(x["top"]) & set(y["top"])) for x, y in zip(c, b)),
              "strong (>2x both) chat": sum(x["strong_2x"] for x in c),
              "strong (>2x both) base": sum(y["strong_2x"] for y in b),
              "strong in both": sum(x["strong_2x"] and y["strong_2x"] for x, y in zip(c, b)),
              "above chance chat": sum(x["strong_vs_chance"] for x in c),
              "above chance base": sum(y["strong_vs_chance"] for y in b)}
    lc = np.log10([x["n2a"] for x in c])
    lb = np.log10([y["n2a"] for y in b])
    return {"n_animals": len(c), "counts": counts, "chat": B.entanglement_summary(c), "base": B.entanglement_summary(b),
            "spearman_n2a": bootstrap_spearman(lc, lb, a.seed),
            "spearman_a2n": bootstrap_spearman(np.log10([x["a2n"] for x in c]), np.log10([y["a2n"] for y in b]), a.seed),
            "log10_n2a_chat_minus_base": U.mean_ci(lc - lb),
            "wilcoxon_n2a_p": float(stats.wilcoxon(lc, lb).pvalue),
            "transfer_chat_number_in_base": U.mean_ci(np.log10([y["n2a_of_chat_number"] for y in b])),
            "transfer_base_number_in_chat": U.mean_ci(np.log10([x["n2a_of_base_number"] for x in c]))}


def plot(rows, s, base, chat, path, a):
    plt = B._plt()
    c, b = rows["chat"], rows["base"]
    n = len(c)
    fig, axes = plt.subplots(2, 2, figsize=(15, 12))
    ax = axes[0, 0]
    shared = np.array([x["best"] == y["best"] for x, y in zip(c, b)])
    xc, yb = np.array([x["n2a"] for x in c]), np.array([y["n2a"] for y in b])
    ax.scatter(xc[~shared], yb[~shared], color="C0", s=20, label=f"top-1 number differs ({(~shared).sum()})")
    ax.scatter(xc[shared], yb[shared], color="C3", s=30, label=f"top-1 number shared ({shared.sum()})")
    ax.scatter(xc, [y["n2a_of_chat_number"] for y in b], color="C2", s=14, marker="x",
               label="y = base prompted with the chat model's top number")
    for x, y, r in zip(xc, yb, c):
        ax.annotate(r["animal"], (x, y), fontsize=6, alpha=0.7)
    lim = [min(xc.min(), yb.min()) * 0.7, max(xc.max(), yb.max()) * 1.4]
    ax.plot(lim, lim, color="gray", lw=1)
    B.ratio_axes(ax)
    ax.set_xlabel("chat: number -> animal ratio (its own top number)")
    ax.set_ylabel("base: number -> animal ratio (its own top number)")
    sp = s["spearman_n2a"]
    ax.set_title(f"Transfer strength across models (one dot per animal, n = {n})\n"
                 f"Spearman rho = {sp['rho']:.2f} [{sp['ci_low']:.2f}, {sp['ci_high']:.2f}] (bootstrap 95% CI)",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ks = list(s["counts"])
    ax.bar(range(len(ks)), [s["counts"][k] for k in ks], color=[f"C{i}" for i in range(len(ks))])
    for i, k in enumerate(ks):
        ax.text(i, s["counts"][k] + 0.2, str(s["counts"][k]), ha="center", fontsize=9)
    ax.set_xticks(range(len(ks)))
    ax.set_xticklabels([k.replace(" (", "\n(").replace(" number", "\nnumber").replace("chance ", "chance\n")
                        .replace(" in both", "\nin both") for k in ks], fontsize=8)
    ax.set_ylabel(f"number of animals (of {n})")
    ax.set_title("Overlap and strength counts; strong = both ratios > 2;\n"
                 f"above chance = both ratios above the 95th percentile of {a.runs} random numbers", fontsize=10)
    ax = axes[1, 0]
    cols = [("chat", "a2n"), ("chat", "n2a"), ("base", "a2n"), ("base", "n2a")]
    M = np.array([[np.log2(rows[m][i][k]) for m, k in cols] for i in range(n)])
    v = np.abs(M).max()
    im = ax.imshow(M, cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto")
    ax.set_xticks(range(4))
    ax.set_xticklabels([f"{m} {'a->n' if k == 'a2n' else 'n->a'}" for m, k in cols])
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{r['animal']} ({r['best']}/{y['best']})" for r, y in zip(c, b)], fontsize=6)
    fig.colorbar(im, ax=ax, label="log2 ratio (0 = no change)")
    ax.set_title("Per-animal effect map, log2 ratio (labels: animal (chat top number / base top number))",
                 fontsize=10)
    ax = axes[1, 1]
    for m, color, marker in (("chat", "C0", "o"), ("base", "C1", "s")):
        ax.scatter([r["a2n"] for r in rows[m]], [r["n2a"] for r in rows[m]], color=color, marker=marker, s=18,
                   label=f"{m} (strong: {s['counts'][f'strong (>2x both) {m}']}/{n})")
    B.ratio_axes(ax)
    ax.set_xlabel("animal -> number ratio")
    ax.set_ylabel("number -> animal ratio")
    ax.set_title("Bidirectional strength by model (dashed 1x, dotted 2x)", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(f"Base vs chat: {base.name}  vs  {chat.name}\n(identical prompts: both rendered with the chat "
                 f"model's template; n = {n} animals)", fontsize=11)
    fig.tight_layout()
    B.save_fig(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    B.run_main(main)

"""Topic B step 5: is entanglement in the output head, the final norm, or the residual stream?

Models: base, chat, and four hybrids made with topic_b_utils.swap_in: base with the chat model's
output head, chat with the base head, and the same for the final norm alone. Tied embeddings are
untied first, so a swapped head never changes the input embedding (tested in
tests/test_topic_b_utils.py). All six get token-identical prompts (the chat model's template).
Like for like: each animal's number is picked once on the base model and once on the chat model
(paper rule: argmax of P(number | animal prompt) over the three-digit numbers 000..999), and both
numbers are measured in all six models, so every difference between models compares identical
prompts. Per model and number source: the entanglement table of the takehome (mean / median
animal -> number and number -> animal ratios, fractions > 1, fraction > 2x both ways). The
head/body split: the share of the chat - base number -> animal gap (mean log10 over animals) that
moves when the chat model gets the base head back, with a bootstrap CI over animals.
Residual-stream analysis (base and chat): at the answer position, how far the final residual
stream moves under "You love <animals>" relative to no system prompt (||delta|| / ||h||, before the
final norm), and the move after the norm projected on the animal's unembedding direction and on
its number's mean digit row (unit vectors; an order-blind direction on digit-level tokenizers):
the logit change the move alone gives each token.

With --runs N, N random three-digit numbers (one pool, drawn once) are measured in all six models
too: each animal's mean log10 ratio over them is the reference for "any number prompt", and the
split is repeated for that random part and for the number-specific part (picked minus random, per
animal).

Regenerate plots/topic_b_part5_<chat>.png and results/topic_b_part5_<chat>.json on the controlled
Gemma pair (about 20 min on one core at 10 animals and 16 random numbers; needs
`python topic_b_make_chat_model.py` first; resumes finished measurements):

    python topic_b_part5_head_swap.py --animals 10 --runs 16
    python topic_b_part5_head_swap.py --base meta-llama/Llama-3.2-1B --chat meta-llama/Llama-3.2-1B-Instruct --animals 30
"""
from __future__ import annotations

import time

import numpy as np
import torch

import topic_a_utils as U
import topic_b_utils as B

MODELS = ["base", "base + chat head", "base + chat norm", "chat + base head", "chat + base norm", "chat"]


def parse_args(argv=None):
    p = B.base_parser(__doc__, default_runs=0)
    B.set_help(p, runs="random numbers per model for chance thresholds (default 0: none; CIs are over animals)")
    g = p.add_argument_group("topic_b_part5_head_swap.py")
    B.add_pair_args(p, g)
    g.add_argument("--animals", type=B.positive_int, default=20,
                   help="the first N animals of topic_b_utils.ANIMALS (the paper's 10 first; default 20)")
    g.add_argument("--plot-only", action="store_true",
                   help="recompute the split and redraw from the rows stored in the results file (no model is loaded)")
    a = B.parse_common(p, argv)
    if a.runs == 1:
        p.error("--runs must be 0 (no chance thresholds) or at least 2")
    return a


@torch.no_grad()
def residual_point(lm: B.LM, P: B.Prompts, animal: str, best: str) -> dict:
    pre0, post0 = B.final_residual(lm, P.animal_question(None))
    pre1, post1 = B.final_residual(lm, P.animal_question(B.animal_system(animal)))
    unit = lambda v: v / v.norm()
    d_post = post1 - post0
    ua, un = unit(B.string_direction(lm, B.answer_form(animal))), unit(B.string_direction(lm, " " + best))
    return {"rel_move_pre": float((pre1 - pre0).norm() / pre0.norm()),
            "rel_move_post": float(d_post.norm() / post0.norm()),
            "proj_animal": float(d_post @ ua), "proj_number": float(d_post @ un),
            "cos_move_animal": float(torch.nn.functional.cosine_similarity(d_post, ua, dim=0)),
            "cos_move_number": float(torch.nn.functional.cosine_similarity(d_post, un, dim=0))}


@torch.no_grad()
def param_change(base: B.LM, chat: B.LM) -> dict:
    """||chat - base|| / ||base|| for the output head, the final norm, the body's weight matrices and
    the body's norm gains (kept apart: Gemma's gains are ~25 and would swamp the matrices)."""
    head_b, head_c = B.unembedding(base).float(), B.unembedding(chat).float()
    nb, nc = B.final_norm(base.model), B.final_norm(chat.model)
    skip = {id(p) for p in (*nb.parameters(), base.model.get_output_embeddings().weight)}
    pc = dict(chat.model.named_parameters())
    acc = {"body_matrices": [0.0, 0.0], "body_norms": [0.0, 0.0]}
    for name, p in base.model.named_parameters():
        if id(p) not in skip:
            a = acc["body_matrices" if p.dim() >= 2 else "body_norms"]
            a[0] += float((pc[name].float() - p.float()).pow(2).sum())
            a[1] += float(p.float().pow(2).sum())
    flat = lambda m: torch.cat([p.float().flatten() for p in m.parameters()])
    return {"head": float((head_c - head_b).norm() / head_b.norm()),
            "final_norm": float((flat(nc) - flat(nb)).norm() / flat(nb).norm()),
            **{k: (v[0] / v[1]) ** 0.5 if v[1] else 0.0 for k, v in acc.items()}}


SOURCES = ("base", "chat")  # whose pick (paper rule) is the animal's number, in all six models


def _shares(L: dict, seed: int) -> dict:
    """For per-animal log10 values L[model]: the chat - base gap and the share of it each swap
    moves (ratios of means, percentile bootstrap over animals), and each move itself in log10 with
    a paired t-CI over animals (a share is meaningless when the gap is not distinguishable from 0)."""
    gap = L["chat"] - L["base"]
    moves = {"head_removing_chat_head": L["chat"] - L["chat + base head"],
             "head_adding_chat_head": L["base + chat head"] - L["base"],
             "body_removing_chat_body": L["chat"] - L["base + chat head"],
             "norm_removing_chat_norm": L["chat"] - L["chat + base norm"]}
    nonadd = L["chat"] + L["base"] - L["chat + base head"] - L["base + chat head"]
    return {"head_share_removing_chat_head": B.bootstrap_mean_ratio(moves["head_removing_chat_head"], gap, seed=seed),
            "head_share_adding_chat_head": B.bootstrap_mean_ratio(moves["head_adding_chat_head"], gap, seed=seed),
            "body_share_removing_chat_body": B.bootstrap_mean_ratio(moves["body_removing_chat_body"], gap, seed=seed),
            "head_plus_body_minus_1": B.bootstrap_mean_ratio(nonadd, gap, seed=seed),
            "norm_share_removing_chat_norm": B.bootstrap_mean_ratio(moves["norm_removing_chat_norm"], gap, seed=seed),
            "moves_log10": {**{k: U.mean_ci(v) for k, v in moves.items()}, "non_additivity": U.mean_ci(nonadd)},
            "gap": (g := U.mean_ci(gap)),
            # a share is read only when the gap it divides is distinguishable from 0
            "shares_meaningful": bool(g["ci_low"] > 0 or g["ci_high"] < 0)}


def random_log10(rows: dict, which: str = "n2a") -> dict | None:
    """Per model, each animal's mean log10 ratio over the random pool numbers (None without a pool)."""
    if not all(f"random {which}" in r for m in MODELS for r in rows[m]):
        return None
    return {m: np.array([np.mean(np.log10(r[f"random {which}"])) for r in rows[m]]) for m in MODELS}


def head_body_split(rows: dict, seed: int) -> tuple[dict, dict]:
    """Per number source: the chat - base number -> animal gap (mean log10 over animals) and the
    share of it that each swap moves, as ratios of means with a bootstrap CI over animals. The
    head is measured both ways (removing the chat head from chat; adding it to base); the body by
    the body swap itself (chat minus "base + chat head", i.e. the chat head on the base body); and
    whether the two removals add up: (head share + body share) - 1, 0 when the swaps are additive.
    With a random pool (--runs) the same for the pool's numbers ("random": what chat tuning does to
    any number prompt) and for the number-specific part, picked minus random per animal
    ("<source> minus random")."""
    l10 = {m: {src: np.log10([r[f"{src} pick"]["n2a"] for r in rows[m]]) for src in SOURCES} for m in MODELS}
    diffs = {src: {m: U.mean_ci(l10[m][src] - l10["base"][src]) for m in MODELS if m != "base"} for src in SOURCES}
    split = {src: _shares({m: l10[m][src] for m in MODELS}, seed) for src in SOURCES}
    R = random_log10(rows)
    if R is not None:
        diffs["random"] = {m: U.mean_ci(R[m] - R["base"]) for m in MODELS if m != "base"}
        split["random"] = _shares(R, seed)
        for src in SOURCES:
            S = {m: l10[m][src] - R[m] for m in MODELS}
            diffs[f"{src} minus random"] = {m: U.mean_ci(S[m] - S["base"]) for m in MODELS if m != "base"}
            split[f"{src} minus random"] = _shares(S, seed)
    return diffs, split


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    if a.plot_only:
        path = f"{a.results_dir}/topic_b_part5_{a.chat.split('/')[-1]}.json"
        d = U.load_finished(path, "rows")
        diffs, split = head_body_split(d["rows"], a.seed)
        d.update(log10_n2a_minus_base=diffs, head_body_split=split)
        U.save_json(path, d)
        plot(d["summary"], diffs, split, d["residual_summary"], B.StoredModel(d["config"]["base"]),
             B.StoredModel(d["config"]["chat"]), len(d["config"]["animals"]),
             f"{a.plots_dir}/topic_b_part5_{a.chat.split('/')[-1]}.png")
        return
    base, chat = B.load_pair(a)
    tag = B.model_tag(chat)
    animals = B.ANIMALS[:a.animals]
    pool = B.draw_pool(B.three_digit_numbers(), a.runs, a.seed) if a.runs else []
    sweep = U.Sweep(f"{a.results_dir}/topic_b_part5_{tag}.json",
                    {"base": base.name, "chat": chat.name, "animals": animals, "pool": pool, "seed": a.seed,
                     "candidates": "3digit"}, a, t0)
    # each animal's number by the paper's rule, picked on the base model and on the chat model
    E = {m: B.Entanglement(lm, animals, sweep, f"{m}/", pool, a.batch_size, a.show_prompt, a.seed)
         for m, lm in (("base", base), ("chat", chat))}
    picks = [{src: E[src].picks(i)["paper"] for src in SOURCES} for i in range(len(animals))]
    tested = sorted({n for p in picks for n in p.values()} | set(pool))
    rows, summary, residual = {}, {}, {}
    for name in MODELS:
        if name in ("base", "chat"):
            lm, e = (base, E["base"]) if name == "base" else (chat, E["chat"])
        else:
            target, donor = (base, chat) if name.startswith("base") else (chat, base)
            lm = B.swap_in(target, donor, "head" if name.endswith("head") else "norm")
            # a hybrid is only scored on the numbers under test (no pick is made on it)
            e = B.Entanglement(lm, animals, sweep, f"{name}/", pool, a.batch_size, a.show_prompt, a.seed,
                               numbers=tested)
        rows[name] = []
        for i, animal in enumerate(animals):
            th = e.thresholds(i) if pool else {}
            rows[name].append({"animal": animal, "numbers": picks[i], **th,
                               **{f"{src} pick": e.measure(i, picks[i][src], th) for src in SOURCES},
                               **({"random n2a": [e.n2a(n, i) for n in pool],
                                   "random a2n": [e.a2n(i, n) for n in pool]} if pool else {})})
        summary[name] = {f"{src} pick": B.entanglement_summary(rows[name], f"{src} pick") for src in SOURCES}
        if pool:  # each animal's mean log10 ratio over the pool's random numbers
            summary[name]["random pool"] = {f"log10_{w}": U.mean_ci([np.mean(np.log10(r[f"random {w}"]))
                                                                      for r in rows[name]]) for w in ("a2n", "n2a")}
        if name in ("base", "chat"):
            P = B.Prompts(lm)
            residual[name] = [sweep.run(f"{name}/residual {x}",
                                        lambda x=x, i=i: residual_point(lm, P, x, picks[i][name]))
                              for i, x in enumerate(animals)]
        if lm is not base and lm is not chat:
            del lm
    res_summary = {m: {k: U.mean_ci([r[k] for r in residual[m]]) for k in residual[m][0]} for m in residual}
    change = param_change(base, chat)
    print("relative parameter change, chat vs base:", {k: f"{v:.2e}" for k, v in change.items()})
    diffs, split = head_body_split(rows, a.seed)
    sweep.save(rows=rows, summary=summary, residual=residual, residual_summary=res_summary,
               log10_n2a_minus_base=diffs, head_body_split=split, param_change=change,
               models={"base": base.describe(), "chat": chat.describe()})
    for src in SOURCES:
        print(f"numbers picked on {src}:")
        print(f"  {'model':<20} {'mean a->n':>10} {'median':>8} {'mean n->a':>10} {'median':>8} {'a->n>1':>7} "
              f"{'n->a>1':>7} {'>2x both':>8}")
        for m in MODELS:
            s = summary[m][f"{src} pick"]
            print(f"  {m:<20} {s['mean_a2n']:>10.2f} {s['median_a2n']:>8.2f} {s['mean_n2a']:>10.2f} "
                  f"{s['median_n2a']:>8.2f} {s['frac_a2n_gt1']:>7.2f} {s['frac_n2a_gt1']:>7.2f} "
                  f"{s['frac_strong_2x']:>8.2f}")
        h = split[src]["head_share_removing_chat_head"]
        print(f"  head share of the chat - base n->a gap: {h['ratio']:.2f} [{h['ci_low']:.2f}, {h['ci_high']:.2f}]")
    plot(summary, diffs, split, res_summary, base, chat, len(animals), f"{a.plots_dir}/topic_b_part5_{tag}.png")


def plot(summary, diffs, split, res, base, chat, n, path):
    plt = B._plt()
    fig, axes = plt.subplots(1, 4, figsize=(25, 6.8))
    x = np.arange(len(MODELS))
    bars = [("base pick", "", "number picked on base"), ("chat pick", "//", "number picked on chat")]
    if "random pool" in summary["base"]:
        bars.append(("random pool", "..", "random pool numbers (mean per animal)"))
    w = 0.8 / len(bars)
    from matplotlib.patches import Patch
    for ax, key, label in ((axes[0], "log10_a2n", "animal -> number"), (axes[1], "log10_n2a", "number -> animal")):
        for j, (src, hatch, _) in enumerate(bars):
            m = np.array([summary[k][src][key]["mean"] for k in MODELS])
            err = np.array([summary[k][src][key]["half_width"] for k in MODELS])
            ax.bar(x + (j - (len(bars) - 1) / 2) * w, m, w, yerr=err, capsize=3, color=["C1", "C4", "C5", "C6", "C8", "C0"],
                   alpha=0.8, edgecolor="k", hatch=hatch)
        ax.axhline(0, color="gray", lw=0.8)
        ax.axhline(np.log10(2), color="gray", ls=":", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels([k.replace(" + ", "\n+ ") for k in MODELS], fontsize=8)
        ax.set_ylabel(f"mean log10 ratio, {label}")
        ax.set_title(f"{label}: mean over n = {n} animals of log10 ratio, 95% t-CI\nsame numbers in all six models "
                     f"(hatch: which numbers); dotted: 2x", fontsize=9)
        ax.legend(handles=[Patch(facecolor="white", edgecolor="k", hatch=h, label=lab) for _, h, lab in bars],
                  fontsize=8, title="bar colour = model (x axis)", title_fontsize=8)
    h = split["base"]["head_share_removing_chat_head"]
    bd = split["base"]["body_share_removing_chat_body"]
    ia = split["base"]["head_plus_body_minus_1"]
    for ax, keys, ylab, what in (
            (axes[2], [("rel_move_pre", "before the final norm"), ("rel_move_post", "after the final norm")],
             "||delta h|| / ||h|| (relative move of the residual stream)", "how far it moves"),
            (axes[3], [("cos_move_animal", "cos(move, animal\nunembedding)"),
                       ("cos_move_number", "cos(move, number's\nmean digit row)")],
             "cosine", "which way it moves")):
        for j, (m, color) in enumerate((("base", "C1"), ("chat", "C0"))):
            means = [res[m][k]["mean"] for k, _ in keys]
            errs = [res[m][k]["half_width"] for k, _ in keys]
            ax.bar(np.arange(len(keys)) + (j - 0.5) * w, means, w, yerr=errs, capsize=4, color=color, label=m,
                   alpha=0.8)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([l for _, l in keys], fontsize=9)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_ylabel(ylab)
        ax.legend(fontsize=8, title="model", title_fontsize=8)
        ax.set_title(f"Final residual stream, animal prompt vs none: {what}\n(answer position; mean over n = {n} "
                     f"animals, 95% t-CI)", fontsize=9)
    note = (f"share of the chat - base n->a gap (base picks, bootstrap 95% CI over animals):\n"
            f"head swap {h['ratio']:.2f} [{h['ci_low']:.2f}, {h['ci_high']:.2f}]; body swap {bd['ratio']:.2f} "
            f"[{bd['ci_low']:.2f}, {bd['ci_high']:.2f}]\nnon-additivity (sum - 1) {ia['ratio']:.2f} "
            f"[{ia['ci_low']:.2f}, {ia['ci_high']:.2f}]")
    if "base minus random" in split:
        r, sp = split["random"]["gap"], split["base minus random"]["gap"]
        note += (f"\nchat - base gap, log10 (t-CI over animals): random numbers {r['mean']:+.2f} "
                 f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}];\npicked minus random (number-specific) {sp['mean']:+.2f} "
                 f"[{sp['ci_low']:+.2f}, {sp['ci_high']:+.2f}]")
    axes[2].text(0.02, 0.98, note, transform=axes[2].transAxes, va="top", fontsize=8,
                 bbox=dict(facecolor="white", alpha=0.9, edgecolor="0.7"))
    axes[2].margins(y=0.5 if "base minus random" in split else 0.35)
    fig.suptitle(f"Head and norm swaps: {base.name}  <->  {chat.name} (identical prompts, chat template)", fontsize=11)
    fig.tight_layout()
    B.save_fig(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    B.run_main(main)

"""Takehome step 2, experiment 2: does the number of classes change subliminal learning?

MNIST is restricted to digits 0..K-1 (train and test), K = 2..10. Per K a teacher MLP
784-256-256-(K+3) is trained on those digits (the hidden layers start from the same init draw
at every K; only the output rows differ). Students, all from the shared init:
  aux only        - uniform noise, KL on the 3 aux logits (the subliminal student);
  all logits      - uniform noise, KL on all K+3 logits;
  class only      - uniform noise, KL on the K class logits;
  real, aux only  - the real (filtered) training images, KL on the aux logits, for as many steps
                    as the noise students (epochs = 5 x 60000 / n_train(K), rounded);
and the confound controls the takehome asks for:
  fixed aux ratio - aux-only student of a teacher with round(1.5 K) aux logits, so aux/total
                    logits stays 3/5 (its K=2 value) at every K instead of shrinking to 3/13;
  fixed aux count - (--fixed-count N) aux-only student of a teacher with N aux logits at every K:
                    with the fixed ratio beside it, the aux count and the aux share are told apart
                    (the ratio control changes both);
  cross-model     - (--cross-control) the aux-only student from another run's init (a derangement,
                    as in A.1), distilled beside the others;
  accuracy relative to chance, (acc - 1/K) / (1 - 1/K), beside raw accuracy.
The takehome's "dip at K=3" is checked with CIs and by rerunning K = 2, 3, 4 with another seed
(new inits, teachers and noise).

Regenerate plots/topic_a_num_classes.png and results/topic_a_num_classes.json (resumes finished
points). The committed figure is the full version, 25 runs with both opt-in controls: 10-22 min
per point on one core (larger K slower), 12 points (about 3.5 h on one core); without the controls
it is about 2 h at 25 runs, 42 min at 10:

    python topic_a_num_classes.py --runs 25 --fixed-count 15 --cross-control
    python topic_a_num_classes.py --runs 10                 # lighter, no fixed-count or cross-model student
    python topic_a_num_classes.py --plot-only [results/<file>.json]   # redraw only, seconds
"""
from __future__ import annotations

import numpy as np

import topic_a_utils as U

KS = list(range(2, 11))
NOISE_STUDENTS = ("aux only", "all logits", "class only")


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_num_classes.py")
    g.add_argument("--ks", type=int, nargs="+", default=KS, help=f"numbers of classes K (default {KS})")
    g.add_argument("--dip-ks", type=int, nargs="*", default=[2, 3, 4],
                   help="K values rerun with --seed + 1 to test the dip (default 2 3 4; empty skips)")
    g.add_argument("--no-controls", action="store_true",
                   help="skip the fixed-aux-ratio teachers and the real-image students")
    g.add_argument("--fixed-count", type=int, default=0,
                   help="aux logits of the fixed-aux-count control at every K (default 0: not run; the "
                        "full version uses 15, the fixed ratio's count at K = 10)")
    g.add_argument("--cross-control", action="store_true",
                   help="add the cross-model aux-only student (another run's init) at every point")
    g.add_argument("--plot-only", nargs="?", const="", default=None, metavar="JSON",
                   help="redraw the PNG from a finished results JSON (default: this script's file in "
                        "--results-dir), no training")
    a = U.parse_common(p, argv)
    if any(not 2 <= k <= 10 for k in a.ks + a.dip_ks):
        p.error("K must be in 2..10")
    if a.fixed_count < 0:
        p.error("--fixed-count must be 0 (off) or a positive number of aux logits")
    if a.cross_control and a.runs < 2:
        p.error("--cross-control needs --runs >= 2 (a derangement pairs every run with another)")
    return a


def relative_to_chance(acc, k):
    return ((np.asarray(acc) - 1 / k) / (1 - 1 / k)).tolist()


def main(argv=None):
    a = parse_args(argv)
    if a.plot_only is not None:
        d = U.load_finished(a.plot_only or f"{a.results_dir}/topic_a_num_classes.json")
        a.runs, a.ks, a.dip_ks, a.seed = d["config"]["runs"], d["config"]["ks"], d["config"]["dip_ks"], d["config"]["seed"]
        return plot(d["summary"], a)
    S = U.setup(a)
    test_full = S.test
    sweep = U.Sweep(f"{a.results_dir}/topic_a_num_classes.json",
                    {"ks": a.ks, "dip_ks": a.dip_ks, "controls": not a.no_controls, "runs": a.runs,
                     "seed": a.seed, "teacher": S.tc_teacher.as_dict(), "student": S.tc_student.as_dict(),
                     "data": S.data_desc,
                     # opt-in controls enter the key only when on, so the committed 10-run file still resumes
                     **({"fixed_count": a.fixed_count} if a.fixed_count else {}),
                     **({"cross_control": True} if a.cross_control else {})}, a, S.t0)
    n_noise = len(S.train)  # noise images per epoch: the same number of steps at every K

    def teacher_k(k, n_aux=3, seed=a.seed):
        train = S.train.classes(k)
        cfg = U.MLPConfig(n_classes=k, n_aux=n_aux)
        desc = {**S.data_desc, "n_classes": k, "n_train": len(train)}
        ref, teacher = U.setup_teacher(S, cfg, train, desc, seed=seed)
        return cfg, train, ref, teacher

    def noise_point(k, seed):
        cfg, train, ref, teacher = teacher_k(k, seed=seed)
        test = test_full.classes(k)
        specs = [U.StudentSpec("aux only", ref, cfg.aux_idx), U.StudentSpec("all logits", ref, cfg.all_idx),
                 U.StudentSpec("class only", ref, cfg.class_idx)]
        if a.cross_control:
            cross = U.cross_model_init(ref, a.runs, seed)
            specs.append(U.StudentSpec("cross-model aux only", cross, cfg.aux_idx))
        res = U.distill_scores(teacher, specs, U.UniformNoise(seed, n_noise), S.tc_student, test,
                               not a.no_progress)
        res["teacher"] = {"acc": teacher.accuracy(test).tolist()}
        res["reference"] = {"acc": ref.accuracy(test).tolist()}
        if not a.no_controls and seed == a.seed:
            epochs = max(1, round(S.tc_student.epochs * n_noise / len(train)))
            tc = U.TrainConfig(epochs, S.tc_student.lr, S.tc_student.batch_size)
            res.update(U.distill_scores(teacher, [U.StudentSpec("real, aux only", ref, cfg.aux_idx)],
                                        U.RealImages(train, seed, "distill-order"), tc, test, not a.no_progress))
            res["real, aux only"]["epochs"] = epochs
            n_aux = round(1.5 * k)
            if n_aux == 3:
                res["fixed aux ratio"] = res["aux only"]
            else:
                cfg2, _, ref2, teacher2 = teacher_k(k, n_aux)
                res.update(U.distill_scores(teacher2, [U.StudentSpec("fixed aux ratio", ref2, cfg2.aux_idx)],
                                            U.UniformNoise(seed, n_noise), S.tc_student, test, not a.no_progress))
            res["fixed aux ratio"]["n_aux"] = n_aux
            if a.fixed_count:
                if a.fixed_count == 3:
                    res["fixed aux count"] = res["aux only"]
                else:
                    cfg3, _, ref3, teacher3 = teacher_k(k, a.fixed_count)
                    res.update(U.distill_scores(teacher3, [U.StudentSpec("fixed aux count", ref3, cfg3.aux_idx)],
                                                U.UniformNoise(seed, n_noise), S.tc_student, test,
                                                not a.no_progress))
                res["fixed aux count"]["n_aux"] = a.fixed_count
        for v in res.values():
            v["rel_chance"] = relative_to_chance(v["acc"], k)
        return res

    for k in a.ks:
        sweep.run(f"K={k}", lambda: noise_point(k, a.seed))
    for k in a.dip_ks:
        sweep.run(f"K={k} seed={a.seed + 1}", lambda: noise_point(k, a.seed + 1))

    P = sweep.points
    names = list(P[f"K={a.ks[0]}"])
    summary = {m: {n: [U.mean_ci(P[f"K={k}"][n][m]) for k in a.ks] for n in names} for m in ("acc", "rel_chance")}
    summary["dip_rerun"] = {n: [U.mean_ci(P[f"K={k} seed={a.seed + 1}"][n]["acc"]) for k in a.dip_ks]
                            for n in NOISE_STUDENTS}
    summary["paired"] = paired_differences(P, a)
    summary["paired_rel_chance"] = paired_differences(P, a, "rel_chance")
    sweep.save(summary=summary, peak_rss_mb=round(U.peak_rss_mb()))
    plot(summary, a)


def paired_differences(P, a, metric: str = "acc") -> dict:
    """Differences run by run between students that share their hidden-layer init draw (every
    student and teacher at every K starts from the same seeded draw; only output rows differ):
    per K, the student minus its cross-model control, the fixed aux count minus the fixed ratio and
    minus 3 aux logits, and each K minus K = ks[0] for the aux-only and fixed-count students;
    for the dip, K = 3 minus its neighbours in both seeds. metric: "acc" or "rel_chance" (accuracy
    relative to chance, which takes the falling chance level out of the K - K=2 differences)."""
    def diff(p, q):
        return U.paired_ci(p[metric], q[metric])
    pts = [P[f"K={k}"] for k in a.ks]
    out = {}
    for x, y in (("aux only", "cross-model aux only"), ("fixed aux count", "fixed aux ratio"),
                 ("fixed aux count", "aux only"), ("fixed aux ratio", "aux only")):
        if x in pts[0] and y in pts[0]:
            out[f"{x} - {y}"] = [diff(p[x], p[y]) for p in pts]
    for x in ("aux only", "fixed aux count", "fixed aux ratio"):
        if x in pts[0]:
            out[f"{x}: K - K={a.ks[0]}"] = [diff(p[x], pts[0][x]) for p in pts]
    if {2, 3, 4} <= set(a.dip_ks) and {2, 3, 4} <= set(a.ks):
        out["dip"] = {}
        for seed, name in ((a.seed, "K={}"), (a.seed + 1, "K={} seed=" + str(a.seed + 1))):
            out["dip"][f"seed {seed}"] = {s: {f"3 - {k}": diff(P[name.format(3)][s], P[name.format(k)][s])
                                              for k in (2, 4)} for s in NOISE_STUDENTS}
    return out


def plot(summary, a):
    plt = U._plt()
    n = f"n = {a.runs} runs per point"
    colors = {"aux only": U.STUDENT_COLORS["aux only"], "all logits": U.STUDENT_COLORS["all logits"],
              "class only": "tab:brown", "real, aux only": "tab:olive", "fixed aux ratio": "tab:cyan",
              "fixed aux count": "tab:pink", "cross-model aux only": U.STUDENT_COLORS["cross-model aux only"]}
    labels = {"aux only": "aux only (3 aux logits)", "fixed aux ratio": "fixed aux ratio (round(1.5 K) aux logits)",
              "fixed aux count": "fixed aux count (15 aux logits)"}

    def pick(metric, names):
        return {labels.get(k, k): summary[metric][k] for k in names if k in summary[metric]}
    cols = {labels.get(k, k): c for k, c in colors.items()}
    fig, axes = plt.subplots(2, 2, figsize=(15, 11))
    students = ["aux only", "all logits", "class only", "real, aux only", "cross-model aux only"]
    U.sweep_plot(a.ks, pick("acc", students), None, "Test accuracy on digits 0..K-1", "number of classes K",
                 chance=[1 / k for k in a.ks], ax=axes[0, 0], n_label=n, colors=cols)
    U.sweep_plot(a.ks, pick("rel_chance", students), None, "The same, relative to chance: (acc - 1/K) / (1 - 1/K)",
                 "number of classes K", ylabel="accuracy above chance (0 = chance, 1 = perfect)",
                 chance=0.0, ax=axes[0, 1], n_label=n, colors=cols)
    U.sweep_plot(a.ks, pick("rel_chance", ["aux only", "fixed aux ratio", "fixed aux count"]), None,
                 "Aux count vs aux share: aux-only students of three teachers, relative to chance",
                 "number of classes K", ylabel="accuracy above chance (0 = chance, 1 = perfect)",
                 ax=axes[1, 0], n_label=n, colors=cols)
    for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
        ax.set_xticks(a.ks)
        ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))  # below: no data covered
    ax = axes[1, 1]  # the two seeds side by side per K, one colour per student, no overlapping bands
    dx = {a.seed: -0.12, a.seed + 1: 0.12}
    for i, s in enumerate(NOISE_STUDENTS):
        c = colors[s]
        for seed, pts, mk, ls in ((a.seed, [summary["acc"][s][a.ks.index(k)] for k in a.dip_ks], "o", "-"),
                                  (a.seed + 1, summary["dip_rerun"][s], "s", "--")):
            x = np.array(a.dip_ks) + dx[seed] + (i - 1) * 0.03
            m = np.array([p["mean"] for p in pts])
            err = [m - np.array([p["ci_low"] for p in pts]), np.array([p["ci_high"] for p in pts]) - m]
            ax.errorbar(x, m, yerr=err, color=c, marker=mk, ls=ls, ms=4, capsize=3, label=f"{s}, seed {seed}")
    ax.set_xlabel("number of classes K (seed {0} left, seed {1} right of each K)".format(a.seed, a.seed + 1))
    ax.set_ylabel("MNIST test accuracy")
    ax.set_title(f"Is there a dip at K=3? Two seeds (new inits, teachers, noise)\nmarkers: mean; bars: 95% t-CI; {n}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.set_xticks(a.dip_ks)
    fig.suptitle("Number of classes: MNIST MLP 784-256-256-(K+aux), uniform-noise students (5 epochs x 60000)",
                 fontsize=11)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_num_classes.png")
    print(f"wrote {a.plots_dir}/topic_a_num_classes.png")


if __name__ == "__main__":
    U.run_main(main)

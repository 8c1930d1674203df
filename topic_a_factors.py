"""Comments & Extensions factors: hidden width, number of aux logits, depth, and Fashion-MNIST.

"Comments & Extensions of Subliminal Learning" (section 2) reports: more neurons per layer ->
less subliminal learning; more aux logits -> more; more or fewer layers -> about the same;
Fashion-MNIST -> still works. We vary one factor at a time around the baseline
(784-256-256-(10+3), MNIST, teacher 5 epochs on real images, students 5 epochs on uniform noise,
Adam 3e-4, KL), with a teacher per point trained from that point's own seeded init:
  width    hidden width of both layers, WIDTHS;
  aux      number of aux logits, AUX;
  depth    number of hidden layers of width 256, DEPTHS;
  dataset  MNIST vs Fashion-MNIST (teacher trained and students tested on the dataset; the
           students still see only uniform noise).
Per point: teacher, reference (untrained init), aux-only and all-logits students, and the bound
on any aux-only student (teacher hidden layers + init digit rows; see topic_a_mechanism.py); with
--cross-control also the cross-model control (the aux-only student from another run's init, a
derangement as in A.1). Paired differences between neighbouring values of each factor (x[i+1] minus
x[i], run r against run r): the runs share their seeds (init generator, data order, noise draws),
though where the shapes differ not the init values themselves.

Regenerate plots/topic_a_factors.png and results/topic_a_factors.json (25 runs with the control:
about 1.9 h on one core of the 2-core CPU, 2 to 24 min per point; resumes finished points, and
processes given different --factors can share the file, one per core). The earlier 5-run sweep
without the control is kept as results/topic_a_factors_5runs.json:

    python topic_a_factors.py --runs 25 --cross-control
"""
from __future__ import annotations

import numpy as np

import topic_a_utils as U

WIDTHS = [64, 128, 256, 512]
AUX = [1, 3, 10, 30]
DEPTHS = [1, 2, 3, 4]
DATASETS = ["mnist", "fashion"]
FACTORS = ("width", "aux", "depth", "dataset")
SERIES = ("teacher", "bound", "all logits", "aux only", "reference")


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_factors.py")
    g.add_argument("--factors", nargs="+", choices=FACTORS, default=list(FACTORS),
                   help="which factors to sweep (default all)")
    g.add_argument("--cross-control", action="store_true",
                   help="add the cross-model aux-only student (another run's init) at every point")
    g.add_argument("--plot-only", action="store_true", help="redraw the PNG from the results JSON on disk")
    a = U.parse_common(p, argv)
    if a.cross_control and a.runs < 2:
        p.error("--cross-control needs --runs >= 2 (a derangement pairs every run with another)")
    return a


def point(S: U.Setup, cfg: U.MLPConfig, train: U.Dataset, test: U.Dataset, desc: dict) -> dict:
    a = S.args
    ref, teacher = U.setup_teacher(S, cfg, train, desc)
    specs = [U.StudentSpec("aux only", ref, cfg.aux_idx), U.StudentSpec("all logits", ref, cfg.all_idx)]
    if a.cross_control:
        specs.append(U.StudentSpec("cross-model aux only", U.cross_model_init(ref, a.runs, a.seed),
                                   cfg.aux_idx))
    return U.scores_with_bound(ref, teacher, specs, U.UniformNoise(a.seed, len(train)), S.tc_student, test,
                               not a.no_progress)


def main(argv=None):
    a = parse_args(argv)
    xs = {"width": WIDTHS, "aux": AUX, "depth": DEPTHS, "dataset": DATASETS}
    if a.plot_only:
        d = U.load_finished(f"{a.results_dir}/topic_a_factors.json")
        a.runs = d["config"]["runs"]
        return plot(d["summary"], xs, a)
    if a.dataset != "mnist":
        raise U.UserError("topic_a_factors.py sweeps the dataset itself; leave --dataset at mnist")
    S = U.setup(a)
    sweep = U.Sweep(f"{a.results_dir}/topic_a_factors.json",
                    {"runs": a.runs, "seed": a.seed, "teacher": S.tc_teacher.as_dict(),
                     "student": S.tc_student.as_dict(), "data": S.data_desc,
                     **({"cross_control": True} if a.cross_control else {})}, a, S.t0)
    xs = {"width": WIDTHS, "aux": AUX, "depth": DEPTHS, "dataset": DATASETS}

    def name(f, x):  # the baseline point is shared by every factor
        return "baseline" if (f, x) in (("width", 256), ("aux", 3), ("depth", 2), ("dataset", "mnist")) else f"{f}={x}"

    for f in a.factors:
        for x in xs[f]:
            if f == "dataset":
                train = S.train if x == "mnist" else U.load_dataset(x, "train", a.data_dir, None, a.n_train)
                test = S.test if x == "mnist" else U.load_dataset(x, "test", a.data_dir, None, a.n_test)
                desc = {**S.data_desc, "dataset": x}
                sweep.run(name(f, x), lambda: point(S, U.MLPConfig(), train, test, desc))
                continue
            cfg = {"width": lambda w: U.MLPConfig(hidden=(w, w)), "aux": lambda k: U.MLPConfig(n_aux=k),
                   "depth": lambda d: U.MLPConfig(hidden=(256,) * d)}[f](x)
            sweep.run(name(f, x), lambda: point(S, cfg, S.train, S.test, S.data_desc))
    P = sweep.points
    series = SERIES + (("cross-model aux only",) if a.cross_control else ())
    summary = {f: {s: [U.mean_ci(P[name(f, x)][s]["acc"]) for x in xs[f]] for s in series}
               for f in a.factors}
    # neighbouring values, run r against run r (shared seeds): "x[i+1] - x[i]" per student
    paired = {f: {s: U.paired_steps(xs[f], lambda x, f=f, s=s: P[name(f, x)][s]["acc"]) for s in ("aux only", "bound")}
              for f in a.factors}
    summary_ratio = {f: [U.mean_ci([st / t for st, t in zip(P[name(f, x)]["aux only"]["acc"],
                                                           P[name(f, x)]["bound"]["acc"])]) for x in xs[f]]
                     for f in a.factors}
    # the aux-only student over its cross-model control, run by run (same teacher and noise)
    extra = {"aux_minus_cross": {f: [U.paired_ci(P[name(f, x)]["aux only"]["acc"],
                                                 P[name(f, x)]["cross-model aux only"]["acc"])
                                     for x in xs[f]] for f in a.factors}} if a.cross_control else {}
    if a.cross_control:  # the control against the untrained init it started from (another run's), run by run
        perm = U.cross_model_pairing(a.runs, a.seed).tolist()
        extra["cross_minus_its_init"] = {
            f: [U.paired_ci(P[name(f, x)]["cross-model aux only"]["acc"],
                            [P[name(f, x)]["reference"]["acc"][j] for j in perm]) for x in xs[f]]
            for f in a.factors}
    sweep.save(summary=summary, aux_over_bound=summary_ratio, paired_neighbours=paired, **extra,
               peak_rss_mb=round(U.peak_rss_mb()))
    for f in a.factors:
        for k, v in paired[f]["aux only"].items():
            print(f"{f} {k}: aux only {v['mean']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] (paired, n = {v['n']})")
    plot(summary, xs, a)


def plot(summary, xs, a):
    plt = U._plt()
    n = f"n = {a.runs} runs per point"
    labels = {"width": ("hidden width (both layers)", "Width: 784-w-w-13"),
              "aux": ("number of aux logits", "Aux logits: 784-256-256-(10+m)"),
              "depth": ("number of hidden layers d (width 256)", "Depth: 784-(256 x d)-13"),
              "dataset": ("dataset (teacher training and test set)", "Dataset: MNIST vs Fashion-MNIST")}
    fs = list(summary)
    cols = min(2, len(fs))
    rows = (len(fs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 5 * rows), squeeze=False)
    for ax in axes.flat[len(fs):]:
        ax.set_visible(False)
    for ax, f in zip(axes.flat, fs):
        if f == "dataset":  # two categories: grouped markers with CIs, no line between them
            for j, srs in enumerate(summary[f]):
                pts = summary[f][srs]
                m = np.array([p["mean"] for p in pts])
                err = [m - np.array([p["ci_low"] for p in pts]), np.array([p["ci_high"] for p in pts]) - m]
                x = np.arange(len(xs[f])) + (j - (len(summary[f]) - 1) / 2) * 0.1
                ax.errorbar(x, m, yerr=err, fmt="o", ms=5, capsize=4, color=U.student_color(srs) or f"C{j}", label=srs)
            ax.axhline(0.1, color="gray", ls="--", lw=1, label="chance")
            ax.set_xticks(range(len(xs[f])))
            ax.set_xticklabels(["MNIST", "Fashion-MNIST"])
            ax.set_xlim(-0.6, len(xs[f]) - 0.4)
            ax.set_xlabel(labels[f][0])
            ax.set_ylabel("test accuracy on the teacher's dataset")
            ax.set_title(f"{labels[f][1]}\nmarkers: mean; bars: 95% t-CI; {n}", fontsize=10)
            ax.grid(alpha=0.3)
        else:
            U.sweep_plot(xs[f], summary[f], None, labels[f][1], labels[f][0], ax=ax, n_label=n, chance=0.1,
                         logx=f in ("width", "aux"))
            ax.set_xticks(xs[f])
            ax.set_xticklabels([str(v) for v in xs[f]])
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=6)
    fig.suptitle("Comments & Extensions factors, one at a time around the baseline MLP 784-256-256-13\n"
                 "students see only uniform noise (5 epochs x 60000); bound = teacher hidden layers + init digit rows",
                 fontsize=11)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_factors.png")
    print(f"wrote {a.plots_dir}/topic_a_factors.png")


if __name__ == "__main__":
    U.run_main(main)

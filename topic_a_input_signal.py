"""Takehome step 2, experiment 3: how much real signal should the distillation inputs carry?

Distillation inputs are alpha * (real MNIST training image) + (1 - alpha) * N(0, sigma_pixel^2),
sigma_pixel the per-pixel std of the training set (pixels that never vary get no noise). alpha = 0
is pure noise, alpha = 1 the real images (their labels are never used). Aux-only and all-logits
students start from the shared init and learn from the same cached teacher as topic_a.py; beside
them at every point the cross-model control (the aux-only student from another run's init, a
derangement as in A.1).
Per alpha we also measure, on 5000 distillation inputs: the teacher's aux-digit logit coupling
(mean |Pearson r| over the 3 x 10 logit pairs, and the R^2 of the digit logits on the aux logits),
and the effective dimension of the inputs (PCA components for 95% of the variance; participation
ratio).

Causal test of the takehome's dimension hypothesis (last panel): at fixed alpha = 0.5 the noise is confined to a random k-dimensional subspace (its own per run) with the
same total variance as the per-pixel noise, k in {16, 64, 256, 784}: the input's dimension changes,
its content (alpha, the images, the noise energy) does not.

Control for the "mean image / digit structure" explanation (--control-alphas): no digit at all,
x = alpha * (MNIST mean image) + sqrt(alpha^2 + (1 - alpha)^2) * N(0, sigma_pixel^2), which has the
same per-pixel mean and per-pixel variance (so the same energy) as the alpha mixture, but none of
the digits' correlations between pixels.

Regenerate plots/topic_a_input_signal.png and results/topic_a_input_signal.json (25 runs: 7-10 min
per point on one core of the 2-core CPU, 13 points, about 1.8 h; resumes finished points, so a rerun
after a code change to the summary or figure takes seconds):

    python topic_a_input_signal.py --runs 25
"""
from __future__ import annotations

import numpy as np

import topic_a_utils as U

ALPHAS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
DIMS = [16, 64, 256, 784]
DIM_ALPHAS = [0.5]
CONTROL_ALPHAS = [0.5, 1.0]
STUDENTS = ("aux only", "all logits", "cross-model aux only")


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_input_signal.py")
    g.add_argument("--alphas", type=float, nargs="+", default=ALPHAS, help=f"mixing weights (default {ALPHAS})")
    g.add_argument("--dims", type=U.positive_int, nargs="+", default=DIMS,
                   help=f"noise subspace dimensions of the causal test (default {DIMS}; empty skips it)")
    g.add_argument("--dim-alphas", type=float, nargs="*", default=DIM_ALPHAS,
                   help=f"alphas at which the dimension is varied (default {DIM_ALPHAS})")
    g.add_argument("--control-alphas", type=float, nargs="*", default=CONTROL_ALPHAS,
                   help=f"alphas of the no-digit control, mean image + moment-matched noise (default {CONTROL_ALPHAS})")
    g.add_argument("--n-measure", type=U.positive_int, default=5000,
                   help="inputs used for coupling and PCA measurements (default 5000)")
    a = U.parse_common(p, argv)
    if any(not 0 <= x <= 1 for x in a.alphas + a.dim_alphas + a.control_alphas):
        p.error("alphas must lie in [0, 1]")
    if any(d > 784 for d in a.dims):
        p.error("--dims must be at most 784")
    return a


def no_digit_control(train: U.Dataset, alpha: float, seed: int) -> U.GaussianNoise:
    """alpha * mean image + sqrt(alpha^2 + (1 - alpha)^2) * N(0, sigma_pixel^2): the per-pixel mean and
    variance of MixedSource(train, alpha, N(0, sigma_pixel^2)), without any digit."""
    sigma = train.x.std(0)
    return U.GaussianNoise(seed, len(train), train.x.shape[1], std=sigma * (alpha ** 2 + (1 - alpha) ** 2) ** 0.5,
                           mean=alpha * train.x.mean(0), key="mean-image-control")


def main(argv=None):
    a = parse_args(argv)
    S = U.setup(a)
    cfg = U.MLPConfig()
    ref, teacher = U.setup_teacher(S, cfg)
    sigma = S.train.x.std(0)  # per-pixel std of the training set
    sigma_rms = float(sigma.pow(2).mean().sqrt())
    cross = U.cross_model_init(ref, a.runs, a.seed)
    students = [U.StudentSpec("aux only", ref, cfg.aux_idx), U.StudentSpec("all logits", ref, cfg.all_idx),
                U.StudentSpec("cross-model aux only", cross, cfg.aux_idx)]
    sweep = U.Sweep(f"{a.results_dir}/topic_a_input_signal.json",
                    {"alphas": a.alphas, "dims": a.dims, "dim_alphas": a.dim_alphas, "runs": a.runs,
                     "control_alphas": a.control_alphas, "students": list(STUDENTS),
                     "seed": a.seed, "teacher": S.tc_teacher.as_dict(), "student": S.tc_student.as_dict(),
                     "data": S.data_desc, "n_measure": a.n_measure}, a, S.t0)

    def point(source):
        x = U.first_batch(source, a.runs, a.n_measure)
        res = U.distill_scores(teacher, students, source, S.tc_student, S.test, not a.no_progress)
        res["coupling"] = U.aux_class_coupling(teacher, x)
        res["effective_dim_95"] = U.effective_dim(x)
        res["participation_ratio"] = U.participation_ratio(x)
        return res

    for alpha in a.alphas:
        noise = U.GaussianNoise(a.seed, std=sigma, key="pixel-noise")
        sweep.run(f"alpha={alpha:g}", lambda: point(U.MixedSource(S.train, alpha, noise, a.seed)))
    for alpha in a.dim_alphas:
        for k in a.dims:
            noise = U.SubspaceNoise(a.seed, k, std=sigma_rms, key="subspace-noise")
            sweep.run(f"alpha={alpha:g} dim={k}", lambda: point(U.MixedSource(S.train, alpha, noise, a.seed)))
    for alpha in a.control_alphas:
        sweep.run(f"alpha={alpha:g} mean image + noise", lambda: point(no_digit_control(S.train, alpha, a.seed)))

    P = sweep.points
    main_pts = [P[f"alpha={x:g}"] for x in a.alphas]
    summary = {
        "students": {s: [U.mean_ci(p[s]["acc"]) for p in main_pts] for s in STUDENTS},
        "mean_image_control": {
            "alphas": a.control_alphas,
            "students": {s: [U.mean_ci(P[f"alpha={x:g} mean image + noise"][s]["acc"]) for x in a.control_alphas]
                         for s in STUDENTS},
            # paired by run: the same init, teacher and alpha, digits replaced by moment-matched noise
            "minus_real_mixture": {f"alpha={x:g}": {s: U.paired_ci(
                P[f"alpha={x:g} mean image + noise"][s]["acc"], P[f"alpha={x:g}"][s]["acc"]) for s in STUDENTS}
                for x in a.control_alphas if f"alpha={x:g}" in P},
            # against zero-mean noise with the per-pixel sigma (alphas[0] = 0): at alpha = 1 the two
            # inputs differ only by the mean image, at other alphas also by the noise scale
            "minus_first_alpha": {s: [U.paired_ci(P[f"alpha={x:g} mean image + noise"][s]["acc"],
                                                  main_pts[0][s]["acc"]) for x in a.control_alphas]
                                  for s in STUDENTS},
            "aux_minus_cross": [U.paired_ci(P[f"alpha={x:g} mean image + noise"]["aux only"]["acc"],
                                            P[f"alpha={x:g} mean image + noise"]["cross-model aux only"]["acc"])
                                for x in a.control_alphas],
            "effective_dim_95": [P[f"alpha={x:g} mean image + noise"]["effective_dim_95"] for x in a.control_alphas]},
        # the subliminal effect over its control, paired by run (same teacher and inputs, other init)
        "aux_minus_cross": [U.paired_ci(p["aux only"]["acc"], p["cross-model aux only"]["acc"])
                            for p in main_pts],
        # each alpha against alpha = alphas[0], run by run (same inits and teacher)
        "minus_first_alpha": {s: [U.paired_ci(p[s]["acc"], main_pts[0][s]["acc"]) for p in main_pts]
                              for s in STUDENTS},
        "coupling": {m: [U.mean_ci(p["coupling"][m]) for p in main_pts] for m in ("mean_abs_r", "r2")},
        "effective_dim_95": [p["effective_dim_95"] for p in main_pts],
        "participation_ratio": [p["participation_ratio"] for p in main_pts],
        "dim_test": {f"alpha={x:g}": {
            "students": {s: [U.mean_ci(P[f"alpha={x:g} dim={k}"][s]["acc"]) for k in a.dims]
                         for s in STUDENTS},
            "effective_dim_95": [P[f"alpha={x:g} dim={k}"]["effective_dim_95"] for k in a.dims]}
            for x in a.dim_alphas},
        "sigma_pixel_rms": sigma_rms,
    }
    sweep.save(summary=summary, peak_rss_mb=round(U.peak_rss_mb()))
    plot(summary, a)


def plot(summary, a):
    plt = U._plt()
    n = f"n = {a.runs} runs per point"
    fig, axes = plt.subplots(2, 2, figsize=(13, 10.5))
    U.sweep_plot(a.alphas, summary["students"], None, "Student accuracy vs real signal in the inputs",
                 "alpha (input = alpha * real + (1 - alpha) * N(0, sigma_pixel^2))", chance=0.1,
                 ax=axes[0, 0], n_label=n)
    mc = summary["mean_image_control"]
    for j, (s, pts) in enumerate(mc["students"].items()):
        xs = np.array(mc["alphas"]) + 0.012 * (j - 1)  # dodged so the three students' markers do not overlap
        axes[0, 0].errorbar(xs, [p["mean"] for p in pts], yerr=[p["half_width"] for p in pts], fmt="D", ms=6,
                            mfc="white", color=U.student_color(s), capsize=3,
                            label=f"{s}: no digit (mean image + matched noise)")
    axes[0, 0].legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.13))  # below: no data covered
    U.sweep_plot(a.alphas, {"mean |r| over aux x digit logit pairs": summary["coupling"]["mean_abs_r"],
                            "R^2 of digit logits on aux logits": summary["coupling"]["r2"]}, None,
                 "Teacher: coupling of aux and digit logits on the inputs", "alpha",
                 ylabel="coupling", ax=axes[0, 1], n_label=n,  # not students: colours outside the student palette
                 colors={"mean |r| over aux x digit logit pairs": "tab:brown",
                         "R^2 of digit logits on aux logits": "tab:olive"})
    ax = axes[1, 0]
    ax.plot(a.alphas, summary["effective_dim_95"], "o-", color="#444444", label="PCA components for 95% variance")
    ax.plot(a.alphas, summary["participation_ratio"], "s--", color="tab:cyan", label="participation ratio")
    ax.set_yscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel("effective dimension of the inputs")
    ax.set_title(f"Input dimension vs alpha ({a.n_measure} inputs; one estimate per alpha)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    series = {f"{s}, alpha={x}": v["students"][s] for x, v in summary["dim_test"].items()
              for s in STUDENTS}
    U.sweep_plot(a.dims, {k.replace("alpha=alpha=", "alpha="): v for k, v in series.items()}, None,
                 "Causal test: noise confined to a k-dim subspace, alpha fixed",
                 "noise subspace dimension k (same total noise variance)", chance=0.1, logx=True,
                 ax=axes[1, 1], n_label=n)
    axes[1, 1].set_xticks(a.dims)
    d95 = summary["dim_test"][f"alpha={a.dim_alphas[0]:g}"]["effective_dim_95"] if a.dim_alphas else []
    axes[1, 1].set_xticklabels([f"{k}\n(PCA-95%: {d})" for k, d in zip(a.dims, d95)] if d95 else [str(k) for k in a.dims],
                               fontsize=8)
    fig.suptitle("MNIST MLP 784-256-256-(10+3), teacher 5 epochs, students 5 epochs on mixed inputs", fontsize=11)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_input_signal.png")
    print(f"wrote {a.plots_dir}/topic_a_input_signal.png")


if __name__ == "__main__":
    U.run_main(main)

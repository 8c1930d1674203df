"""Takehome step 3, question 2: which distillation inputs carry subliminal learning best, and why?

One script, one distillation-input mechanism (topic_a_utils input sources), five families and one control:
  variance   i.i.d. Gaussian noise, std in STDS;
  blur       Gaussian noise blurred with a Gaussian of std sigma pixels, rescaled to unit pixel variance;
  subspace   Gaussian noise in a random k-dimensional subspace (own per run), same total variance;
  spectrum   random-phase noise with the power spectrum (and mean image) of MNIST blurred by sigma;
  blurred    MNIST training images blurred by sigma (labels unused);
  spectrum-no-mean   the spectrum family without the MNIST mean image (zero-mean random-phase
             noise with the same power spectrum): the control for the explanation that the mean image
             is what makes spectrum-matched noise fail (not used to choose or test the predictor);
and a figure of the radial power spectra of these families (--study spectra, no training).
Every point distils an aux-only student from the same cached teacher as topic_a.py, and beside it
in the same batches the cross-model control (the aux-only student from another run's init, a
derangement as in A.1), and records both test accuracies after every epoch, so one run gives both
the takehome's 5-epoch budget and a longer one (--epochs, default 20; Adam at a constant learning rate, so the first 5 epochs are
exactly the 5-epoch run). Per point we also measure candidate predictors on 5000 inputs: the
effective dimension of the inputs (PCA-95% and participation ratio), the participation ratio of
the teacher's last hidden layer on them, and the teacher's aux-digit logit coupling (R^2).
The predictor is chosen on the variance/blur/subspace families and tested on spectrum/blurred.

Regenerate plots/topic_a_noise_spectrum*.png and results/topic_a_noise_spectrum.json (10 runs and
20 epochs with the control: about 10 min per point on one core, 24 points; minutes on a GPU);
resumes finished points. The earlier 3-run, 12-epoch sweep without the control is kept as
results/topic_a_noise_spectrum_3runs.json:

    python topic_a_noise_spectrum.py --runs 10 --epochs 20 --study all
    python topic_a_noise_spectrum.py --study spectra      # the spectra figure alone, seconds

To use two cores, run disjoint families in two shells on the same file (each with
OMP_NUM_THREADS=1), e.g. `for s in variance blur subspace; do python topic_a_noise_spectrum.py
--runs 10 --epochs 20 --study $s; done` in one and spectrum, blurred, spectrum-no-mean in the other,
then the --study all command once more: every point is on disk, so it only writes the summary and
the figures.
"""
from __future__ import annotations

import numpy as np
import torch

import topic_a_utils as U

STDS = [0.25, 0.5, 1.0, 2.0, 4.0]
SIGMAS = [0.0, 0.5, 1.0, 2.0, 4.0]
DIMS = [8, 32, 128, 392, 784]
IMG_SIGMAS = [0.0, 1.0, 2.0]
FIT = ("variance", "blur", "subspace")
HELD_OUT = ("spectrum", "blurred")
CONTROLS = ("spectrum-no-mean",)
STUDIES = FIT + HELD_OUT + CONTROLS


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_noise_spectrum.py")
    g.add_argument("--study", choices=[*STUDIES, "spectra", "all"], default="all",
                   help="which family to run (default all; 'spectra' only draws the spectra figure)")
    g.add_argument("--epochs", type=U.positive_int, default=20,
                   help="distillation epochs; accuracy is recorded after every epoch (default 20)")
    g.add_argument("--n-measure", type=U.positive_int, default=5000, help="inputs for the predictors (default 5000)")
    g.add_argument("--plot-only", action="store_true",
                   help="redraw topic_a_noise_spectrum.png from the results file (give the run's --runs and --epochs)")
    a = U.parse_common(p, argv)
    if a.epochs < a.student_epochs:
        p.error("--epochs must be at least --student-epochs (the short budget is read off the long run)")
    if a.runs < 2 and a.study != "spectra":
        p.error("--runs must be at least 2: the cross-model control pairs every run with another")
    return a


def families(S: U.Setup) -> dict[str, list[tuple[str, float, U.InputSource]]]:
    """(label, x value, source) per family; sources are built lazily by the caller's study choice."""
    a, n = S.args, len(S.train)
    mean_img = S.train.x.mean(0)
    out = {
        "variance": [(f"std={s:g}", s, U.GaussianNoise(a.seed, n, std=s)) for s in STDS],
        "blur": [(f"sigma={s:g}", s, U.BlurredNoise(a.seed, s, n)) for s in SIGMAS],
        "subspace": [(f"dim={k}", k, U.SubspaceNoise(a.seed, k, n)) for k in DIMS],
        "spectrum": [(f"sigma={s:g}", s, U.SpectrumNoise(a.seed, U.power_spectrum(U.blur(S.train.x[:20000], s)),
                                                         mean=U.blur(mean_img, s), n_per_epoch=n,
                                                         label=f"MNIST blurred sigma={s:g}")) for s in IMG_SIGMAS],
        "blurred": [(f"sigma={s:g}", s, U.BlurredImages(S.train, a.seed, s, "distill-order")) for s in IMG_SIGMAS],
        "spectrum-no-mean": [(f"sigma={s:g}", s, U.SpectrumNoise(a.seed, U.power_spectrum(U.blur(S.train.x[:20000], s)),
                                                                  mean=None, n_per_epoch=n,
                                                                  label=f"MNIST blurred sigma={s:g}"))
                              for s in IMG_SIGMAS],
    }
    return out


def main(argv=None):
    a = parse_args(argv)
    if a.plot_only and a.study != "spectra":
        d = U.load_finished(f"{a.results_dir}/topic_a_noise_spectrum.json")
        if d["config"]["runs"] != a.runs or d["config"]["epochs"] != a.epochs:
            raise U.UserError(f"the results file holds --runs {d['config']['runs']} --epochs {d['config']['epochs']}; "
                              f"give those with --plot-only")
        return plot_results(d["summary"], a)
    S = U.setup(a)
    fams = families(S)
    if a.study == "spectra":
        return plot_spectra(S, fams, a)
    cfg = U.MLPConfig()
    ref, teacher = U.setup_teacher(S, cfg)
    cross = U.cross_model_init(ref, a.runs, a.seed)
    tc = U.TrainConfig(a.epochs, a.lr, a.batch_size)
    sweep = U.Sweep(f"{a.results_dir}/topic_a_noise_spectrum.json",
                    {"runs": a.runs, "seed": a.seed, "teacher": S.tc_teacher.as_dict(), "epochs": a.epochs,
                     "lr": a.lr, "batch": a.batch_size, "data": S.data_desc, "n_measure": a.n_measure}, a, S.t0)
    todo = STUDIES if a.study == "all" else (a.study,)
    for fam in todo:
        for label, xval, src in fams[fam]:
            def point(src=src):
                curve, cross_curve = [], []

                def record(ep, ms):
                    curve.append(ms["aux only"].accuracy(S.test).tolist())
                    cross_curve.append(ms["cross-model aux only"].accuracy(S.test).tolist())
                U.distill(teacher, [U.StudentSpec("aux only", ref, cfg.aux_idx),
                                    U.StudentSpec("cross-model aux only", cross, cfg.aux_idx)], src, tc,
                          progress=not a.no_progress, callback=record)
                x = U.first_batch(src, a.runs, a.n_measure)
                h2 = teacher.activations(x)[-2]
                return {"acc_by_epoch": curve, "cross_acc_by_epoch": cross_curve, "effective_dim_95": U.effective_dim(x),
                        "participation_ratio": U.participation_ratio(x),
                        "teacher_h2_participation_ratio": float(np.mean([U.participation_ratio(h2[r])
                                                                         for r in range(min(5, a.runs))])),
                        "coupling_r2": U.aux_class_coupling(teacher, x)["r2"].tolist(),
                        "source": src.describe()}
            sweep.run(f"{fam} {label}", point)
    summary = summarise(sweep.points, fams, a)
    sweep.save(summary=summary, peak_rss_mb=round(U.peak_rss_mb()))
    plot_results(summary, a)
    plot_spectra(S, fams, a)


WHITE = "blur sigma=0"  # white Gaussian noise, unit std: the reference of summary["minus_white"]
PREDICTORS = ("effective_dim_95", "participation_ratio", "teacher_h2_participation_ratio", "coupling_r2")


def summarise(points, fams, a):
    from scipy import stats
    out = {"families": {}, "predictors": {}}
    short, long_ = a.student_epochs - 1, a.epochs - 1
    budgets = (("short", short), ("long", long_))  # epoch index of each budget
    rows = []
    for fam, items in fams.items():
        pts = [(label, x, points.get(f"{fam} {label}")) for label, x, _ in items]
        pts = [p for p in pts if p[2] is not None]
        if not pts:
            continue
        out["families"][fam] = {
            "x": [x for _, x, _ in pts], "labels": [lb for lb, _, _ in pts],
            "short": [U.mean_ci(p["acc_by_epoch"][short]) for _, _, p in pts],
            "long": [U.mean_ci(p["acc_by_epoch"][long_]) for _, _, p in pts],
            # the cross-model control and the student minus it, paired by run (same teacher and inputs)
            **{f"cross_{b}": [U.mean_ci(p["cross_acc_by_epoch"][ep]) for _, _, p in pts] for b, ep in budgets},
            **{f"aux_minus_cross_{b}": [U.paired_ci(p["acc_by_epoch"][ep], p["cross_acc_by_epoch"][ep])
                                        for _, _, p in pts] for b, ep in budgets},
            **{k: [float(np.mean(p[k])) for _, _, p in pts] for k in PREDICTORS}}
        for _, _, p in pts:
            rows.append((fam, float(np.mean(p["acc_by_epoch"][short])), float(np.mean(p["acc_by_epoch"][long_])),
                         {k: float(np.mean(p[k])) for k in PREDICTORS}))
    # the control, paired by run (same teacher, init and noise draws; only the mean image differs)
    out["no_mean_minus_spectrum"] = {
        budget: [U.paired_ci(points[f"spectrum-no-mean {lb}"]["acc_by_epoch"][ep],
                             points[f"spectrum {lb}"]["acc_by_epoch"][ep])
                 for lb, _, _ in fams["spectrum"]
                 if f"spectrum-no-mean {lb}" in points and f"spectrum {lb}" in points]
        for budget, ep in budgets}
    # each point of the fit families minus white Gaussian noise (blur sigma=0), paired by run (same
    # teacher and student inits): says which steps of blur, variance or dimension are findings
    white = points.get(WHITE)
    if white is not None:
        out["minus_white"] = {
            fam: {budget: [U.paired_ci(points[f"{fam} {lb}"]["acc_by_epoch"][ep], white["acc_by_epoch"][ep])
                           for lb, _, _ in fams[fam] if f"{fam} {lb}" in points]
                  for budget, ep in budgets}
            for fam in FIT if fam in fams}
    for k in PREDICTORS:
        fit = [(r[1], r[3][k]) for r in rows if r[0] in FIT]
        held = [(r[1], r[3][k]) for r in rows if r[0] in HELD_OUT]
        entry = {}
        for name, pts in (("fit", fit), ("held_out", held)):
            if len(pts) >= 3:
                rho = stats.spearmanr([p[1] for p in pts], [p[0] for p in pts])
                entry[name] = {"spearman": float(rho.statistic), "p": float(rho.pvalue), "n_points": len(pts)}
        out["predictors"][k] = entry
    return out


def plot_results(summary, a):
    plt = U._plt()
    fams = summary["families"]
    n_panels = len(fams) + 1
    cols = 3
    rows = (n_panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    n = f"n = {a.runs} runs per point"
    titles = {"variance": "Gaussian noise, varying std", "blur": "Gaussian noise blurred, rescaled to unit variance",
              "subspace": "Gaussian noise in a random k-dim subspace", "spectrum":
              "random-phase noise with blurred-MNIST spectrum\n(plus the MNIST mean image)",
              "blurred": "blurred MNIST training images",
              "spectrum-no-mean": "control: the same noise without the mean image"}
    xlabels = {"variance": "noise std", "blur": "blur sigma (pixels)", "subspace": "subspace dimension k",
               "spectrum": "blur sigma of the MNIST images whose spectrum is copied",
               "blurred": "blur sigma of the MNIST images",
               "spectrum-no-mean": "blur sigma of the MNIST images whose spectrum is copied"}
    for ax, (fam, v) in zip(axes.flat, fams.items()):
        se, le = f"{a.student_epochs} epochs", f"{a.epochs} epochs"
        U.sweep_plot(v["x"], {f"aux only, {se}": v["short"], f"aux only, {le}": v["long"],
                              f"cross-model control, {se}": v["cross_short"],
                              f"cross-model control, {le}": v["cross_long"]}, None,
                     titles[fam], xlabels[fam], chance=0.1, ax=ax, n_label=n,
                     logx=fam in ("variance", "subspace"),
                     colors={f"aux only, {se}": U.STUDENT_COLORS["aux only"], f"aux only, {le}": U.STUDENT_COLORS["aux only"],
                             f"cross-model control, {se}": U.STUDENT_COLORS["cross-model aux only"],
                             f"cross-model control, {le}": U.STUDENT_COLORS["cross-model aux only"]})
        for line in ax.get_lines():  # colour = student type, line style = budget (dashed: the short one)
            if line.get_label().endswith(se):
                line.set_linestyle("--")
                line.set_marker("s")
        ax.set_xticks(v["x"])
        ax.set_xticklabels([f"{x:g}" for x in v["x"]])
        ax.set_ylim(0, 1)
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()  # one shared legend below, so no panel's data hides under one
    if len(fams) + 1 < len(axes.flat):
        leg_ax = axes.flat[len(fams) + 1]
        leg_ax.set_visible(True)
        leg_ax.axis("off")
        leg_ax.legend(handles, labels, loc="center", fontsize=10, title="every family panel")
    ax = axes.flat[len(fams)]
    markers = "o^vDP*X"
    for i, (fam, v) in enumerate((f, v) for f, v in fams.items() if f not in CONTROLS):
        xd = np.array(v["effective_dim_95"], float)
        # points that share one dimension (the variance family: 698 for every std) spread apart a
        # little so none hides another; the x axis is logarithmic, so the spread is a factor
        k = len(xd)
        xd = xd * np.exp(0.06 * (np.arange(k) - (k - 1) / 2)) if len(set(xd)) < k else xd
        m = np.array([p["mean"] for p in v["short"]])
        lo = np.array([p["ci_low"] for p in v["short"]])
        hi = np.array([p["ci_high"] for p in v["short"]])
        ax.errorbar(xd, m, yerr=[m - lo, hi - m], fmt=markers[i % len(markers)], ms=6, capsize=3,
                    label=f"{fam} ({'fit' if fam in FIT else 'held out'})", color=f"C{i + 4}",
                    mfc="none" if fam not in FIT else f"C{i + 4}")
    ax.set_xscale("log")
    ax.set_xlabel("input dimension: PCA components for 95% of the variance")
    ax.set_ylabel(f"aux-only student accuracy ({a.student_epochs} epochs)")
    pr = summary["predictors"]["effective_dim_95"]
    txt = "; ".join(f"{k} rho {v['spearman']:.2f} (p {v['p']:.2f}, {v['n_points']} points)" for k, v in pr.items())
    ax.set_title(f"Does input dimension predict accuracy? (filled: fit families, open: held out;\n"
                 f"95% t-CI; points of one dimension spread apart)\nSpearman: {txt}", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(f"Aux-only student and its cross-model control by distillation-input family (MNIST MLP 784-256-256-(10+3), teacher "
                 f"{a.teacher_epochs} epochs; student at {a.student_epochs} and {a.epochs} epochs of 60000 inputs)",
                 fontsize=11)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_noise_spectrum.png")
    print(f"wrote {a.plots_dir}/topic_a_noise_spectrum.png")


def plot_spectra(S, fams, a):
    """Left: radial power spectra with the mean image removed (the shape of the fluctuations).
    Right: what the left hides, each family's constant offset (the energy of its mean image) beside
    its fluctuation energy."""
    plt = U._plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(17, 6), gridspec_kw={"width_ratios": [1.5, 1]})
    curves = {"MNIST": S.train.x[:5000]}
    pick = {"blurred": ("sigma=1", "sigma=2"), "blur": ("sigma=0", "sigma=1", "sigma=2"), "subspace": ("dim=32",),
            "spectrum": ("sigma=1",), "spectrum-no-mean": ("sigma=1",)}
    for fam, labels in pick.items():
        for label, _, src in fams[fam]:
            if label in labels:
                curves[f"{fam} {label}"] = U.first_batch(src, 1, 5000)
    curves["uniform U[-1,1]"] = U.first_batch(U.UniformNoise(a.seed, 5000), 1, 5000)
    if "blur sigma=0" in curves:  # white noise: flat at 1, like the subspace line it covers
        curves["blur sigma=0 (white; flat, covers subspace dim=32)"] = curves.pop("blur sigma=0")
    order = sorted(curves, key=lambda k: k.startswith("spectrum"))  # the matched noise last, on top
    for i, name in enumerate(order):
        f, prof = U.radial_profile(U.power_spectrum(curves[name]))
        if name.startswith("spectrum"):  # markers only: the line they copy stays visible beneath
            ax.plot(f[1:], prof[1:], ls="none", marker="x" if "no-mean" not in name else "+", ms=9, mew=1.8,
                    label=name + " (markers only)", color="k" if "no-mean" not in name else "C9", zorder=5)
        else:
            ax.plot(f[1:], prof[1:], ls="-" if name.split(" ")[0] in ("blurred", "MNIST") else ":", marker="o", ms=3,
                    label=name, color=f"C{i % 10}")
    ax.set_yscale("log")
    ax.set_xlabel("spatial frequency |f| (cycles per pixel)")
    ax.set_ylabel("mean power per pixel (mean image removed)")
    ax.set_title("Radial power spectra of the distillation-input families (5000 images each), mean image removed\n"
                 "spectrum-matched noise (x, +) lies on the blurred images it copies", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    names = list(curves)
    off = [float(curves[k].mean(0).pow(2).mean()) for k in names]
    fluct = [float(curves[k].var(0).mean()) for k in names]
    y = np.arange(len(names))
    ax2.barh(y - 0.2, off, 0.4, color="C3", label="mean image: mean over pixels of (pixel mean)^2")
    ax2.barh(y + 0.2, fluct, 0.4, color="C7", label="fluctuations: mean over pixels of the pixel variance")
    ax2.set_yticks(y)
    ax2.set_yticklabels(names, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("energy per pixel (log axis)")
    ax2.set_title("What the spectra leave out: each family's constant offset\n(its mean image) beside its "
                  "fluctuations; MNIST, blurred MNIST and\nspectrum-matched noise carry it, zero-mean noise does not",
                  fontsize=10)
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax2.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_noise_spectrum_spectra.png")
    print(f"wrote {a.plots_dir}/topic_a_noise_spectrum_spectra.png")


if __name__ == "__main__":
    U.run_main(main)

"""Pre-registered prediction 7: does noise on the teacher's logits weaken subliminal learning?

Gaussian noise is added to the teacher's logits before distillation, fresh for every batch, with
std = level x sigma_r, where sigma_r is the std of teacher run r's matched logits (over the first
batch's examples and those logits). Students, all distilled on uniform noise from the same cached
teacher as topic_a.py (5 + 5 epochs, 25 runs):
  aux only             matches the 3 aux logits, noise on the aux logits (the subliminal student);
  all logits           matches all 13 logits, noise on all 13 logits;
  cross-model aux only the aux-only student from another run's init (a derangement, as in A.1), the
                       same noise: the control that makes the aux-only result subliminal.
Level 0 is the noise-free distillation of topic_a.py. Paired differences against level 0 (same
inits, same inputs; only the added noise differs) with 95% t-CIs.

Regenerate plots/topic_a_logit_noise.png and results/topic_a_logit_noise.json (about 25 min on
the 2-core CPU at 25 runs; resumes finished levels):

    python topic_a_logit_noise.py
"""
from __future__ import annotations

import numpy as np

import topic_a_utils as U

LEVELS = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
STUDENTS = ("aux only", "all logits", "cross-model aux only")


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_logit_noise.py")
    g.add_argument("--levels", type=float, nargs="+", default=LEVELS,
                   help=f"noise std as a multiple of the teacher logits' std (default {LEVELS})")
    g.add_argument("--plot-only", action="store_true", help="redraw the PNG from the results JSON on disk")
    a = U.parse_common(p, argv)
    if any(v < 0 for v in a.levels):
        p.error("--levels must be >= 0")
    if 0.0 not in a.levels:
        p.error("--levels must include 0 (the paired differences are against it)")
    return a


def main(argv=None):
    a = parse_args(argv)
    path = f"{a.results_dir}/topic_a_logit_noise.json"
    if a.plot_only:
        d = U.load_finished(path)
        return plot(d["config"]["levels"], d["summary"], d["paired_vs_0"], d["config"]["runs"], a)
    S = U.setup(a)
    cfg = U.MLPConfig()
    ref, teacher = U.setup_teacher(S, cfg)
    pairing = U.derangement(a.runs, U.generator(a.seed, "pairing"))
    cross = ref.index(pairing)
    sweep = U.Sweep(path, {"levels": a.levels, "runs": a.runs, "seed": a.seed, "teacher": S.tc_teacher.as_dict(),
                           "student": S.tc_student.as_dict(), "data": S.data_desc,
                           "pairing": pairing.tolist()}, a, S.t0)
    for level in a.levels:
        specs = [U.StudentSpec("aux only", ref, cfg.aux_idx, level),
                 U.StudentSpec("all logits", ref, cfg.all_idx, level),
                 U.StudentSpec("cross-model aux only", cross, cfg.aux_idx, level)]
        sweep.run(f"level={level:g}", lambda specs=specs: U.distill_scores(
            teacher, specs, U.UniformNoise(a.seed, len(S.train)), S.tc_student, S.test, not a.no_progress))
    pts = [sweep.points[f"level={v:g}"] for v in a.levels]
    summary = {st: [U.mean_ci(p[st]["acc"]) for p in pts] for st in STUDENTS}
    zero = sweep.points["level=0"]
    paired = {st: [U.mean_ci(np.array(p[st]["acc"]) - np.array(zero[st]["acc"])) for p in pts] for st in STUDENTS}
    sweep.save(summary=summary, paired_vs_0=paired, peak_rss_mb=round(U.peak_rss_mb()))
    for st in STUDENTS:
        print(f"{st:<22}" + " ".join(f"{v['mean']:.3f}" for v in summary[st]))
    plot(a.levels, summary, paired, a.runs, a)


def plot(levels, summary, paired, runs, a):
    plt = U._plt()
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    x = [max(v, 0.1) if v == 0 else v for v in levels]
    for ax, data, ylabel, title in (
            (axes[0], summary, "MNIST test accuracy", "Student accuracy vs noise on the teacher's logits"),
            (axes[1], paired, "accuracy minus the same student at level 0 (paired)",
             "Paired difference against no noise (same inits and inputs)")):
        for st in STUDENTS:
            pts = data[st]
            m = np.array([p["mean"] for p in pts])
            lo, hi = np.array([p["ci_low"] for p in pts]), np.array([p["ci_high"] for p in pts])
            c = U.STUDENT_COLORS[st]
            ax.plot(x, m, marker="o", ms=4, color=c, label=st)
            ax.fill_between(x, lo, hi, alpha=0.2, color=c)
        ax.axhline(0.1 if data is summary else 0.0, color="gray", ls="--", lw=1,
                   label="chance (0.1)" if data is summary else "no change")
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels(["0" if v == 0 else f"{v:g}" for v in levels])
        ax.set_xlabel("noise std / std of the teacher's matched logits (log axis; 0 drawn at the left)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\nlines: mean; bands: 95% t-CI; n = {runs} runs per point", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Prediction 7: Gaussian noise on the teacher's logits before distillation (MNIST MLP "
                 "784-256-256-(10+3), uniform-noise inputs, 5 + 5 epochs)", fontsize=10)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_logit_noise.png")
    print(f"wrote {a.plots_dir}/topic_a_logit_noise.png")


if __name__ == "__main__":
    U.run_main(main)

"""Takehome step 2, experiment 1: how different can the student's init be from the teacher's?

The student starts from the shared reference init plus Gaussian noise whose std is scale x (the
std of that initialised weight tensor, per run). Conditions:
  all parameters   - every weight matrix perturbed (biases start at 0, so they stay 0);
  hidden only      - W0, W1 perturbed, the output layer (digit and aux rows) kept shared.
The perturbation noise is the same draw at every scale (only its size changes), and hidden-only
uses exactly the W0, W1 noise of all-parameters, so conditions differ only in what they perturb.
Aux-only and all-logits students are distilled on uniform noise from the same cached teacher as
topic_a.py. After distillation we also measure, on test images, the cosine similarity and linear
CKA between the student's and the teacher's hidden activations (layers 1 and 2).

Regenerate plots/topic_a_shared_init_perturb.png and results/topic_a_shared_init_perturb.json
(about 40 min on a 2-core CPU with a 180 GFLOP/s sgemm at 25 runs, about 15 min at 10 runs; resumes
finished scales). The committed figure was made with 10 runs to fit this session's CPU budget:

    python topic_a_shared_init_perturb.py --runs 10
"""
from __future__ import annotations

import numpy as np

import topic_a_utils as U

SCALES = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
CONDITIONS = {  # name -> (perturbed tensors in canonical draw order, students)
    "all parameters": (None, ("aux only", "all logits")),
    "hidden only": (["W0", "W1"], ("aux only", "all logits")),
}


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_shared_init_perturb.py")
    g.add_argument("--scales", type=float, nargs="+", default=SCALES,
                   help=f"perturbation scales, in units of each tensor's init std (default {SCALES})")
    g.add_argument("--n-sim", type=U.positive_int, default=5000,
                   help="test images used for the student-teacher activation similarity (default 5000)")
    g.add_argument("--plot-only", action="store_true", help="redraw the PNG from the results JSON on disk")
    a = U.parse_common(p, argv)
    if any(s < 0 for s in a.scales):
        p.error("--scales must be >= 0")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.plot_only:
        d = U.load_finished(f"{a.results_dir}/topic_a_shared_init_perturb.json")
        a.runs = d["config"]["runs"]
        return plot(d["config"]["scales"], d["summary"], d["similarity"], d["reference_vs_teacher"],
                    d["paired_vs_scale_0"], d["hidden_only_minus_all"], a)
    S = U.setup(a)
    cfg = U.MLPConfig()
    ref, teacher = U.setup_teacher(S, cfg)
    x_sim = S.test.x[:a.n_sim]
    idx = {"aux only": cfg.aux_idx, "all logits": cfg.all_idx}
    sweep = U.Sweep(f"{a.results_dir}/topic_a_shared_init_perturb.json",
                    {"scales": a.scales, "conditions": {k: v[0] for k, v in CONDITIONS.items()},
                     "runs": a.runs, "seed": a.seed, "teacher": S.tc_teacher.as_dict(),
                     "student": S.tc_student.as_dict(), "data": S.data_desc, "n_sim": a.n_sim}, a, S.t0)
    for scale in a.scales:
        def point(scale=scale):
            specs = []
            conds = CONDITIONS if scale > 0 else {"all parameters": CONDITIONS["all parameters"]}
            for cond, (names, studs) in conds.items():
                init = ref.perturbed(scale, names, U.generator(a.seed, "perturb")) if scale > 0 else ref
                specs += [U.StudentSpec(f"{cond} | {st}", init, idx[st]) for st in studs]
            res = U.distill_scores(teacher, specs, U.UniformNoise(a.seed, len(S.train)), S.tc_student,
                                   S.test, not a.no_progress,
                                   measure=lambda n, m: U.representation_similarity(m, teacher, x_sim))
            if scale == 0:  # unperturbed: every condition is the same student
                for cond, (_, studs) in CONDITIONS.items():
                    for st in studs:
                        res[f"{cond} | {st}"] = res[f"all parameters | {st}"]
            return res
        sweep.run(f"scale={scale:g}", point)

    scales = a.scales
    pts = [sweep.points[f"scale={s:g}"] for s in scales]
    summary = {name: [U.mean_ci(p[name]["acc"]) for p in pts] for name in pts[0]}
    sim = {name: {m: [U.mean_ci(p[name][m]) for p in pts] for m in ("cos_1", "cos_2", "cka_1", "cka_2")}
           for name in pts[0]}
    base = {k: U.mean_ci(v) for k, v in U.representation_similarity(ref, teacher, x_sim).items()}
    # the output head's share: same W0, W1 noise, with vs without W2 perturbed (paired per run)
    head_share = {st: [U.mean_ci(np.array(p[f"hidden only | {st}"]["acc"]) - np.array(p[f"all parameters | {st}"]["acc"]))
                       for p in pts] for st in ("aux only", "all logits")}
    # each scale against scale 0: the same runs, inits and inputs; only the perturbation differs
    zero = sweep.points["scale=0"]
    paired = {name: [U.mean_ci(np.array(p[name]["acc"]) - np.array(zero[name]["acc"])) for p in pts] for name in pts[0]}
    sweep.save(summary=summary, similarity=sim, reference_vs_teacher=base, hidden_only_minus_all=head_share,
               paired_vs_scale_0=paired, peak_rss_mb=round(U.peak_rss_mb()))
    plot(scales, summary, sim, base, paired, head_share, a)
    for name, s in summary.items():
        print(f"{name:<28}" + " ".join(f"{v['mean']:.3f}" for v in s))


def plot(scales, summary, sim, base, paired, head_share, a):
    """Colour = student type (the Topic A palette), line style = what is perturbed; the two
    conditions are drawn slightly apart on the x axis so neither hides the other."""
    plt = U._plt()
    fig, axes = plt.subplots(1, 3, figsize=(21, 7.8))
    styles = {"all parameters": ("-", "o", 0.97), "hidden only": ("--", "s", 1.03)}
    xs = np.array([max(s, 0.005) for s in scales])
    n = f"n = {a.runs} runs per point"

    def draw(ax, x, pts, color, ls, marker, label):
        m = np.array([p["mean"] for p in pts])
        lo, hi = np.array([p["ci_low"] for p in pts]), np.array([p["ci_high"] for p in pts])
        ax.errorbar(x, m, yerr=[m - lo, hi - m], color=color, ls=ls, marker=marker, ms=4, capsize=3, label=label)

    for name, pts in summary.items():
        cond, st = name.split(" | ")
        ls, mk, dx = styles[cond]
        draw(axes[0], xs * dx, pts, U.student_color(st), ls, mk, f"{st} student, {cond} perturbed")
        draw(axes[1], xs * dx, paired[name], U.student_color(st), ls, mk, f"{st} student, {cond} perturbed")
    axes[0].axhline(0.1, color="gray", ls=":", lw=1, label="chance")
    axes[0].set_ylabel("MNIST test accuracy")
    axes[0].set_title(f"Student accuracy vs init perturbation\nmarkers: mean; bars: 95% t-CI; {n}", fontsize=11)
    axes[1].axhline(0, color="gray", ls=":", lw=1)
    axes[1].set_ylabel("accuracy minus the same run at scale 0 (paired)")
    axes[1].set_title(f"Paired difference against scale 0 (same runs, inits, inputs)\n95% t-CI; {n}; "
                      f"a finding only where the bar excludes 0", fontsize=11)
    for cond, (ls, mk, dx) in styles.items():
        for m, mk2, lab in (("cka_2", mk, "linear CKA"), ("cos_2", None, "mean cosine")):
            cos_ls = ":" if cond == "all parameters" else "-."
            draw(axes[2], xs * dx, sim[f"{cond} | aux only"][m], U.student_color("aux only"),
                 ls if m == "cka_2" else cos_ls, mk2 or "x", f"aux-only student, {cond} perturbed: {lab}")
    for m, ls in (("cka_2", "-."), ("cos_2", (0, (1, 3)))):
        axes[2].axhline(base[m]["mean"], color="gray", ls=ls, lw=1.2,
                        label=f"undistilled shared init vs teacher: {'linear CKA' if m == 'cka_2' else 'mean cosine'}")
    axes[2].set_ylabel("similarity to the teacher, last hidden layer (test images)")
    axes[2].set_title(f"Aux-only student vs teacher representations\nmean, 95% t-CI; {n}", fontsize=11)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels(["0" if s == 0 else f"{s:g}" for s in scales], fontsize=10)
        ax.tick_params(axis="y", labelsize=10)
        ax.set_xlabel("perturbation scale (x init std of each tensor; log axis, 0 drawn at the left)", fontsize=10)
        ax.yaxis.label.set_size(10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)  # below: never over data
    fig.suptitle("Perturbing the student's shared init: MNIST MLP 784-256-256-(10+3), uniform-noise distillation, "
                 "5 + 5 epochs (colour: student type; solid: all parameters perturbed, dashed: hidden layers only)",
                 fontsize=12)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_shared_init_perturb.png")
    print(f"wrote {a.plots_dir}/topic_a_shared_init_perturb.png")


if __name__ == "__main__":
    U.run_main(main)

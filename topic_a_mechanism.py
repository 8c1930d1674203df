"""Takehome step 3, question 1: how does an aux-only student beat chance when its digit rows never
change? Measurements of this MLP's own weights and activations.

1. Bit-identity: after aux-only distillation the last layer's digit rows (W2[:10], b2[:10]) equal
   the shared init exactly, in every run.
2. Tracking during distillation (a checkpoint every --every batches of fresh uniform noise): for each
   hidden layer, linear CKA and mean cosine between the student's and the teacher's activations on
   test images; the cosine between the student's weight change (W_s - W_ref) and the teacher's
   (W_t - W_ref) and their norm ratio; the correlation of the student's digit logits with the
   teacher's; the student's test accuracy.
3. Decomposition of the teacher's own training: hybrids evaluated on the test set,
     teacher body + reference digit head   (the head an aux-only student is stuck with),
     reference body + teacher digit head,
   next to the teacher and the reference. The first is what a student that copied the teacher's
   hidden layers perfectly would score: an upper bound for any aux-only student of this teacher.

Regenerate plots/topic_a_mechanism.png and results/topic_a_mechanism.json (about 6 min on the
2-core CPU at 25 runs, using the cached teacher of topic_a.py):

    python topic_a_mechanism.py --runs 25
"""
from __future__ import annotations

import numpy as np
import torch

import topic_a_utils as U


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_mechanism.py")
    g.add_argument("--every", type=U.positive_int, default=15, help="batches between checkpoints (default 15)")
    g.add_argument("--n-eval", type=U.positive_int, default=2000, help="test images for the similarities (default 2000)")
    g.add_argument("--plot-only", action="store_true", help="redraw the PNG from results/topic_a_mechanism.json")
    return U.parse_common(p, argv)


@torch.no_grad()
def checkpoint(student, teacher, ref, x, test):
    sim = U.representation_similarity(student, teacher, x)
    out = {k: v.tolist() for k, v in sim.items()}
    for l in range(student.n_layers - 1):
        ds = (student.weights[l] - ref.weights[l]).flatten(1)
        dt = (teacher.weights[l] - ref.weights[l]).flatten(1)
        out[f"update_cos_{l + 1}"] = torch.nn.functional.cosine_similarity(ds, dt, dim=1).tolist()
        out[f"update_norm_ratio_{l + 1}"] = (ds.norm(dim=1) / dt.norm(dim=1)).tolist()
    k = student.cfg.n_classes
    zs, zt = student.logits(x)[..., :k], teacher.logits(x)[..., :k]
    zs, zt = zs - zs.mean(1, keepdim=True), zt - zt.mean(1, keepdim=True)
    r = (zs * zt).sum(1) / (zs.norm(dim=1) * zt.norm(dim=1)).clamp_min(1e-12)  # per run and digit logit
    out["digit_logit_corr"] = r.mean(1).tolist()
    out["acc"] = student.accuracy(test).tolist()
    return out


def main(argv=None):
    a = parse_args(argv)
    if a.plot_only:
        res = U.load_finished(f"{a.results_dir}/topic_a_mechanism.json", "decomposition")
        a.runs = res["provenance"].get("n_runs", a.runs)
        return plot(res, a)
    S = U.setup(a)
    cfg = U.MLPConfig()
    ref, teacher = U.setup_teacher(S, cfg)
    x = S.test.x[:a.n_eval]
    n_steps = S.tc_student.epochs * U.UniformNoise(a.seed, len(S.train)).n_batches(a.batch_size)
    chunks = max(1, n_steps // a.every)
    # fresh noise per batch: an "epoch" of --every batches is only a checkpoint interval
    src = U.UniformNoise(a.seed, a.every * a.batch_size)
    tc = U.TrainConfig(chunks, a.lr, a.batch_size)
    track = [{"step": 0, **checkpoint(ref, teacher, ref, x, S.test)}]
    student = U.distill(teacher, [U.StudentSpec("aux only", ref, cfg.aux_idx)], src, tc, progress=not a.no_progress,
                        callback=lambda ep, ms: track.append({"step": (ep + 1) * a.every,
                                                              **checkpoint(ms["aux only"], teacher, ref, x, S.test)}))
    student = student["aux only"]
    k = cfg.n_classes
    identical = [bool(torch.equal(student.weights[-1][r, :k], ref.weights[-1][r, :k]) and
                      torch.equal(student.biases[-1][r, :k], ref.biases[-1][r, :k])) for r in range(a.runs)]
    decomposition = {
        "reference": ref.accuracy(S.test), "teacher": teacher.accuracy(S.test),
        "teacher body + reference digit head (bound)": U.hybrid(teacher, ref, k).accuracy(S.test),
        "reference body + teacher digit head": U.hybrid(ref, teacher, k).accuracy(S.test),
        "aux-only student": student.accuracy(S.test),
        "student body + teacher digit head": U.hybrid(student, teacher, k).accuracy(S.test),
    }
    summary = U.summarize(decomposition)
    frac = np.array(decomposition["aux-only student"]) / np.array(decomposition["teacher body + reference digit head (bound)"])
    res = {"provenance": U.provenance(a, S.t0), "digit_rows_bit_identical": identical,
           "decomposition": summary, "student_over_bound": U.mean_ci(frac), "track": track,
           "n_steps": chunks * a.every, "peak_rss_mb": round(U.peak_rss_mb())}
    U.save_json(f"{a.results_dir}/topic_a_mechanism.json", res)
    print(f"digit rows bit-identical in {sum(identical)}/{a.runs} runs")
    U.print_table(summary, "decomposition (test accuracy)")
    print(f"student / bound: {res['student_over_bound']['mean']:.3f}")
    plot(res, a)


def plot(res, a):
    """Each similarity measure on its own axis (CKA, update cosine, logit correlation are different
    quantities); legends under the axes; every reference line labelled."""
    plt = U._plt()
    tr = res["track"]
    steps = [t["step"] for t in tr]
    fig = plt.figure(figsize=(20, 11))
    gs = fig.add_gridspec(2, 3)
    axes = [fig.add_subplot(gs[0, k]) for k in range(3)] + [fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[1, 1:])]
    n = f"n = {a.runs} runs"
    xl = f"distillation step (batches of {a.batch_size})"
    panels = ((axes[0], {f"layer {l}": [U.mean_ci(t[f"cka_{l}"]) for t in tr] for l in (1, 2)},
               "Student-teacher linear CKA (test images)", "linear CKA"),
              (axes[1], {f"W{l - 1}": [U.mean_ci(t[f"update_cos_{l}"]) for t in tr] for l in (1, 2)},
               "Update alignment: cosine of student - init and teacher - init\n(per hidden unit, mean)",
               "cosine of the weight updates"),
              (axes[2], {"digit logits": [U.mean_ci(t["digit_logit_corr"]) for t in tr]},
               "Student-teacher correlation of the 10 digit logits\n(centred, per test image, mean)", "correlation"))
    for ax, series, title, ylabel in panels:
        U.sweep_plot(steps, series, None, title, xl, ylabel=ylabel, ax=ax, n_label=n, markers=False)
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    ax = axes[3]
    U.sweep_plot(steps, {"aux-only student": [U.mean_ci(t["acc"]) for t in tr]}, None,
                 "Aux-only student accuracy during distillation", xl, chance=0.1, ax=ax, n_label=n, markers=False)
    bound = res["decomposition"]["teacher body + reference digit head (bound)"]["mean"]
    ax.axhline(bound, color="C2", ls=":", lw=2, label=f"bound: teacher body + reference digit head ({bound:.3f}; green bar, right)")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1)
    ax = axes[4]
    d = res["decomposition"]
    names = list(d)
    ax.barh(range(len(names)), [d[k]["mean"] for k in names], xerr=[d[k]["half_width"] for k in names],
            color=[f"C{i}" for i in range(len(names))], alpha=0.8, capsize=4)
    for i, k in enumerate(names):
        ax.text(d[k]["mean"] + d[k]["half_width"] + 0.01, i, f"{d[k]['mean']:.3f}", va="center", fontsize=9)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=9)
    ax.invert_yaxis()
    ax.axvline(0.1, color="gray", ls="--", lw=1, label="chance (0.1)")
    ax.set_xlim(0, 1.08)
    ax.legend(fontsize=9, loc="lower right")
    ax.set_xlabel("MNIST test accuracy")
    ax.set_title(f"Which part of the teacher carries the digits?\nbars: mean, 95% t-CI, {n}", fontsize=10)
    fig.suptitle("Mechanism: MLP 784-256-256-(10+3), aux-only distillation on uniform noise; bands: 95% t-CI "
                 f"over {n}", fontsize=12)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_mechanism.png")
    print(f"wrote {a.plots_dir}/topic_a_mechanism.png")


if __name__ == "__main__":
    U.run_main(main)

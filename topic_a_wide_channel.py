"""Bonus 2: an output channel wider than the hidden layer, as a transformer's vocabulary is wider
than its residual stream.

MLP 784-h-h-(10 + m) with a narrow hidden width h (default 64) and m aux logits, m from 1 to far
past h. Per m: a teacher trained on MNIST digits (aux logits never trained), an aux-only student
distilled on uniform noise (5 epochs, KL on the m aux logits) from the shared init, its cross-model
control (the same student from another run's init, a derangement as in A.1), and the bound
(teacher hidden layers + init digit rows, see topic_a_mechanism.py). Once m >= h the aux logits
are a full-rank linear view of the last hidden layer, so the student can in principle read the
whole teacher representation off them; the question is whether transfer keeps rising past h.
Neighbouring values of m are compared run by run (paired: shared seeds, though not the same init
values, since the shapes differ), and each student against its control.

Regenerate plots/topic_a_wide_channel.png and results/topic_a_wide_channel.json (about 22 min on
one core of the 2-core CPU at 25 runs; resumes finished points):

    python topic_a_wide_channel.py --runs 25
"""
from __future__ import annotations

import topic_a_utils as U

AUX = [1, 3, 16, 64, 256, 1024]
SERIES = ("teacher", "bound", "aux only", "cross-model aux only", "reference")


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_wide_channel.py")
    g.add_argument("--hidden", type=U.positive_int, default=64, help="hidden width of both layers (default 64)")
    g.add_argument("--aux", type=U.positive_int, nargs="+", default=AUX, help=f"numbers of aux logits (default {AUX})")
    return U.parse_common(p, argv)


def main(argv=None):
    a = parse_args(argv)
    S = U.setup(a)
    sweep = U.Sweep(f"{a.results_dir}/topic_a_wide_channel.json",
                    {"runs": a.runs, "seed": a.seed, "hidden": a.hidden, "teacher": S.tc_teacher.as_dict(),
                     "student": S.tc_student.as_dict(), "data": S.data_desc}, a, S.t0)

    def point(m):
        cfg = U.MLPConfig(hidden=(a.hidden, a.hidden), n_aux=m)
        ref, teacher = U.setup_teacher(S, cfg)
        cross = U.cross_model_init(ref, a.runs, a.seed)
        return U.scores_with_bound(ref, teacher, [U.StudentSpec("aux only", ref, cfg.aux_idx),
                                                  U.StudentSpec("cross-model aux only", cross, cfg.aux_idx)],
                                   U.UniformNoise(a.seed, len(S.train)), S.tc_student, S.test, not a.no_progress)

    for m in a.aux:
        sweep.run(f"aux={m}", lambda m=m: point(m))
    P = {m: sweep.points[f"aux={m}"] for m in a.aux}
    summary = {s: [U.mean_ci(P[m][s]["acc"]) for m in a.aux] for s in SERIES}
    ratio = [U.mean_ci([x / b for x, b in zip(P[m]["aux only"]["acc"], P[m]["bound"]["acc"])]) for m in a.aux]
    # neighbouring m, run r against run r (shared seeds; the shapes differ, so not the init values), and
    # the aux-only student over its cross-model control (same teacher and noise batches)
    paired = U.paired_steps(a.aux, lambda m: P[m]["aux only"]["acc"])
    minus_cross = [U.paired_ci(P[m]["aux only"]["acc"], P[m]["cross-model aux only"]["acc"]) for m in a.aux]
    sweep.save(summary=summary, aux_over_bound=ratio, paired_neighbours=paired, aux_minus_cross=minus_cross)
    for k, v in paired.items():
        print(f"m {k}: aux only {v['mean']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] (paired, n = {v['n']})")
    plt = U._plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    n = f"n = {a.runs} runs per point"
    U.sweep_plot(a.aux, summary, None, f"MLP 784-{a.hidden}-{a.hidden}-(10+m), students on uniform noise",
                 "number of aux logits m (log scale)", ax=axes[0], n_label=n, chance=0.1, logx=True)
    U.sweep_plot(a.aux, {"aux-only student / bound": ratio}, None, "Share of the bound the student reaches",
                 "number of aux logits m (log scale)", ylabel="student accuracy / bound accuracy", ax=axes[1],
                 n_label=n, logx=True)
    for ax in axes:
        ax.axvline(a.hidden, color="k", ls=":", lw=1, label=f"m = hidden width ({a.hidden})")
        ax.legend(fontsize=8)
    fig.suptitle("Bonus 2: an output channel wider than the hidden layer", fontsize=11)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_wide_channel.png")
    print(f"wrote {a.plots_dir}/topic_a_wide_channel.png")


if __name__ == "__main__":
    U.run_main(main)

"""Bonus 1: the shared initialisation is a capable pretrained model, not random weights.

LLM teachers and students share a pretrained base, not a random draw. Toy version: the seeded
random init (784-256-256-13) is first pretrained on another task, then the usual pipeline runs on
top of it: teacher = pretrained model trained on MNIST digits (5 epochs), student = pretrained model
distilled on the teacher's 3 aux logits of uniform noise (5 epochs). Shared inits compared:
  random                the takehome's setup (topic_a.py);
  Fashion-MNIST         pretrained on Fashion-MNIST's 10 classes (same 10 class logits) for --pretrain-epochs;
  MNIST, permuted labels  pretrained on MNIST images with a fixed random relabelling of the digits
                        (features of the very same images, wrong head).
Per init: accuracy of the init itself, the teacher, the aux-only student, its cross-model control
(the same student started from another run's init of the same kind, a derangement as in A.1), and
the bound (teacher hidden layers + init digit rows); the student's gain over its own init is what
transfer bought. Each pretrained init against random: the paired difference of that gain (run r
starts from the same random draw in every condition), with 95% t-CIs.

Regenerate plots/topic_a_pretrained_init.png and results/topic_a_pretrained_init.json (about 28 min
on one core of the 2-core CPU at 25 runs; resumes finished points):

    python topic_a_pretrained_init.py --runs 25
"""
from __future__ import annotations

import numpy as np
import torch

import topic_a_utils as U

INITS = ("random", "Fashion-MNIST", "MNIST, permuted labels")
SERIES = ("init", "teacher", "bound", "aux only", "cross-model aux only")


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_pretrained_init.py")
    g.add_argument("--pretrain-epochs", type=U.positive_int, default=5, help="epochs of pretraining (default 5)")
    return U.parse_common(p, argv)


def main(argv=None):
    a = parse_args(argv)
    S = U.setup(a)
    cfg = U.MLPConfig()
    sweep = U.Sweep(f"{a.results_dir}/topic_a_pretrained_init.json",
                    {"runs": a.runs, "seed": a.seed, "pretrain_epochs": a.pretrain_epochs,
                     "teacher": S.tc_teacher.as_dict(), "student": S.tc_student.as_dict(), "data": S.data_desc},
                    a, S.t0)
    tc_pre = U.TrainConfig(a.pretrain_epochs, a.lr, a.batch_size)

    def pretrain_data(name):
        if name == "Fashion-MNIST":
            return U.load_dataset("fashion", "train", a.data_dir, None, a.n_train)
        perm = torch.randperm(10, generator=U.generator(a.seed, "label-permutation"))
        while bool((perm == torch.arange(10)).any()):  # a derangement: no digit keeps its label
            perm = torch.randperm(10, generator=U.generator(a.seed, "label-permutation", int(perm[0])))
        return U.Dataset(S.train.x, perm[S.train.y])

    def point(name):
        ref = U.Ensemble.init(cfg, a.runs, U.generator(a.seed, "init"), a.device)
        if name != "random":
            ref = U.train_classifier(ref, U.RealImages(pretrain_data(name), a.seed, "pretrain-order"), tc_pre,
                                     not a.no_progress, desc="pretrain")
        teacher = U.train_classifier(ref, U.RealImages(S.train, a.seed, "teacher-order"), S.tc_teacher,
                                     not a.no_progress)
        cross = U.cross_model_init(ref, a.runs, a.seed)
        res = U.scores_with_bound(ref, teacher, [U.StudentSpec("aux only", ref, cfg.aux_idx),
                                                 U.StudentSpec("cross-model aux only", cross, cfg.aux_idx)],
                                  U.UniformNoise(a.seed, len(S.train)), S.tc_student, S.test, not a.no_progress)
        res["init"] = res.pop("reference")  # here the shared init is the (pretrained) starting model
        return res

    for name in INITS:
        sweep.run(name, lambda name=name: point(name))
    P = sweep.points
    summary = {n: U.summarize({s: P[n][s]["acc"] for s in SERIES}) for n in INITS}
    gain = {n: U.mean_ci(np.array(P[n]["aux only"]["acc"]) - np.array(P[n]["init"]["acc"])) for n in INITS}
    share = {n: U.mean_ci((np.array(P[n]["aux only"]["acc"]) - np.array(P[n]["init"]["acc"]))
                          / (np.array(P[n]["bound"]["acc"]) - np.array(P[n]["init"]["acc"]))) for n in INITS}
    g = {n: np.array(P[n]["aux only"]["acc"]) - np.array(P[n]["init"]["acc"]) for n in INITS}
    paired = {n: U.mean_ci(g[n] - g["random"]) for n in INITS if n != "random"}
    # is there less to copy? the bound of each pretrained init against random's, run by run
    bound_paired = {n: U.paired_ci(P[n]["bound"]["acc"], P["random"]["bound"]["acc"]) for n in INITS if n != "random"}
    sweep.save(summary=summary, student_gain_over_init=gain, gain_share_of_bound_gain=share,
               paired_gain_minus_random=paired, paired_bound_minus_random=bound_paired)
    U.print_table({f"{n}: {s}": summary[n][s] for n in INITS for s in SERIES})
    plot(summary, gain, a)


def plot(summary, gain, a):
    plt = U._plt()
    fig, ax = plt.subplots(figsize=(12, 5.6))
    w = 0.16
    x = np.arange(len(INITS))
    off = (len(SERIES) - 1) / 2
    for j, s in enumerate(SERIES):
        m = np.array([summary[n][s]["mean"] for n in INITS])
        e = np.array([summary[n][s]["half_width"] for n in INITS])
        ax.bar(x + (j - off) * w, m, w, yerr=e, capsize=4, color=U.student_color(s) or "tab:brown", alpha=0.8,
               edgecolor="k", label={"init": "shared init itself", "bound": "bound (teacher body + init digit rows)",
                                     "aux only": "aux-only student",
                                     "cross-model aux only": "cross-model aux-only (control)"}.get(s, s))
        for xi, mi, ei in zip(x, m, e):
            ax.text(xi + (j - off) * w, mi + ei + 0.015, f"{mi:.2f}", ha="center", fontsize=7)
    ax.set_xticks(x)
    names = {"MNIST, permuted labels": "MNIST, deranged labels"}
    ax.set_xticklabels([f"{names.get(n, n)}\nstudent gain over init: {gain[n]['mean']:+.3f}\n"
                        f"[{gain[n]['ci_low']:+.3f}, {gain[n]['ci_high']:+.3f}] (95% t-CI)" for n in INITS], fontsize=9)
    ax.set_ylabel("MNIST test accuracy")
    ax.set_ylim(0, 1.22)
    ax.axhline(0.1, color="gray", ls="--", lw=1, label="chance")
    ax.legend(fontsize=8, loc="upper center", ncol=6)
    ax.set_title(f"Bonus 1: shared init = random vs pretrained ({a.pretrain_epochs} epochs); teacher 5 epochs on "
                 f"MNIST, student 5 epochs on uniform noise (aux logits)\nbars: mean; error bars: 95% t-CI; "
                 f"n = {a.runs} runs", fontsize=10)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_pretrained_init.png")
    print(f"wrote {a.plots_dir}/topic_a_pretrained_init.png")


if __name__ == "__main__":
    U.run_main(main)

"""Takehome step 3, question 3: push the aux-only student's MNIST accuracy as high as it goes,
keeping 10 digit and 3 aux logits. Everything else may change.

What limits the student (topic_a_mechanism.py): its digit rows are frozen at the shared init, so
it can at best reach the accuracy of "teacher body + reference digit head". A normally trained
teacher puts part of what it learns into its own digit rows, which no aux-only student can copy.
Levers, as named configurations (CONFIGS):
  teacher   freeze_class_head: train the teacher through its hidden layers only (its digit rows stay
            at the shared init), so the bound becomes the teacher's own accuracy; teacher epochs/lr;
  student   distillation epochs, learning rate, temperature, loss (kl/mse), batch size;
  inputs    uniform noise (default), Gaussian, blurred Gaussian noise (sigma pixels);
  model     hidden width, init scale.
--search runs the configurations of SEARCH with --search-runs runs, each with its cross-model
control (resumable, every result logged to results/topic_a_maximize_search.json); without it the
script runs one configuration (--config, default the best found) with --runs runs and writes
results/topic_a_maximize.json and plots/topic_a_maximize.png (another --config:
topic_a_maximize_<config>.*): the student during distillation and at the end, next to its bound,
its teacher and its cross-model control. The common training flags (--teacher-epochs,
--student-epochs, --lr, --batch-size) are ignored: the configuration sets them.

    python topic_a_maximize.py --search --search-runs 5     # the logged search, each configuration with its
                                                            # cross-model control (~31 min on one core)
    python topic_a_maximize.py --runs 25                    # the best configuration, 25 runs, with its
                                                            # control (~45 min on one core)
"""
from __future__ import annotations

import time

import numpy as np

import topic_a_utils as U

BASE = {"freeze_class_head": False, "teacher_epochs": 5, "teacher_lr": 3e-4, "student_epochs": 5,
        "student_lr": 3e-4, "schedule": "constant", "temperature": 1.0, "loss": "kl", "batch_size": 1024,
        "noise": "uniform", "noise_sigma": 0.0, "hidden": 256, "init_scale": 1.0}
FROZEN10 = {"freeze_class_head": True, "teacher_epochs": 10, "teacher_lr": 1e-3}
CONFIGS = {
    "takehome baseline": {},
    "baseline teacher, student 40 ep lr 1e-3 mse": {"student_epochs": 40, "student_lr": 1e-3, "loss": "mse"},
    "frozen-head teacher": {"freeze_class_head": True},
    "frozen-head teacher 10 ep lr 1e-3": FROZEN10,
    "frozen10, student 40 ep lr 1e-3 kl": {**FROZEN10, "student_epochs": 40, "student_lr": 1e-3},
    "frozen10, student 40 ep lr 1e-3 kl T=4": {**FROZEN10, "student_epochs": 40, "student_lr": 1e-3,
                                               "temperature": 4.0},
    "frozen10, student 40 ep lr 1e-3 mse": {**FROZEN10, "student_epochs": 40, "student_lr": 1e-3, "loss": "mse"},
    "frozen10, student 40 ep lr 1e-3 mse cosine": {**FROZEN10, "student_epochs": 40, "student_lr": 1e-3,
                                                   "loss": "mse", "schedule": "cosine"},
    "frozen10, student 40 ep lr 3e-3 mse cosine": {**FROZEN10, "student_epochs": 40, "student_lr": 3e-3,
                                                   "loss": "mse", "schedule": "cosine"},
    "frozen10, student 40 ep lr 1e-3 mse cosine, gaussian noise": {**FROZEN10, "student_epochs": 40,
                                                                   "student_lr": 1e-3, "loss": "mse",
                                                                   "schedule": "cosine", "noise": "gaussian"},
    "frozen10, student 30 ep lr 1e-3 mse cosine": {**FROZEN10, "student_epochs": 30, "student_lr": 1e-3,
                                                   "loss": "mse", "schedule": "cosine"},
    "frozen-head teacher 20 ep lr 1e-3, student 40 ep lr 1e-3 mse cosine, blur 1": {
        "freeze_class_head": True, "teacher_epochs": 20, "teacher_lr": 1e-3, "student_epochs": 40,
        "student_lr": 1e-3, "loss": "mse", "schedule": "cosine", "noise": "blurred", "noise_sigma": 1.0},
    "frozen-head teacher 20 ep lr 1e-3, student 40 ep lr 1e-3 mse cosine": {
        "freeze_class_head": True, "teacher_epochs": 20, "teacher_lr": 1e-3, "student_epochs": 40,
        "student_lr": 1e-3, "loss": "mse", "schedule": "cosine"},
}
# What the committed search ran at --search-runs 5 (the other configurations remain runnable with
# --config; the two 25-run results are topic_a_maximize*.json).
SEARCH = ["takehome baseline", "baseline teacher, student 40 ep lr 1e-3 mse", "frozen-head teacher",
          "frozen-head teacher 10 ep lr 1e-3", "frozen10, student 40 ep lr 1e-3 kl",
          "frozen10, student 40 ep lr 1e-3 mse cosine"]
BEST = "frozen10, student 40 ep lr 1e-3 kl"


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_maximize.py")
    g.add_argument("--config", choices=list(CONFIGS), default=BEST, help=f"configuration to run (default {BEST!r})")
    g.add_argument("--search", action="store_true", help="run every configuration of SEARCH (resumable)")
    g.add_argument("--search-runs", type=U.positive_int, default=5, help="runs per configuration in --search (default 5)")
    g.add_argument("--plot-only", action="store_true",
                   help="with --search: redraw topic_a_maximize_search.png from its results file")
    a = U.parse_common(p, argv)
    if a.search and a.search_runs < 2:
        p.error("--search-runs must be at least 2")
    return a


def source_for(c: dict, seed: int, n: int) -> U.InputSource:
    if c["noise"] == "uniform":
        return U.UniformNoise(seed, n)
    if c["noise"] == "gaussian":
        return U.GaussianNoise(seed, n)
    if c["noise"] == "blurred":
        return U.BlurredNoise(seed, c["noise_sigma"], n)
    raise U.UserError(f"unknown noise {c['noise']!r}")


def out_name(config: str) -> str:
    """topic_a_maximize for the best configuration, topic_a_maximize_<config> for any other."""
    if config == BEST:
        return "topic_a_maximize"
    return "topic_a_maximize_" + "".join(c if c.isalnum() else "_" for c in config).strip("_")


def run_config(S: U.Setup, name: str, runs: int, curve: bool = True, cross: bool = False) -> dict:
    """Teacher (cached), aux-only student, and the bound, for one configuration. With ``curve`` the
    student's test accuracy is also recorded after every distillation epoch. With ``cross`` the
    cross-model control is distilled beside it: the same student from another run's init (a
    derangement, as in A.1), in the same batches."""
    a = S.args
    c = {**BASE, **CONFIGS[name]}
    cfg = U.MLPConfig(hidden=(c["hidden"], c["hidden"]))
    tc_t = U.TrainConfig(c["teacher_epochs"], c["teacher_lr"], c["batch_size"])
    ref, teacher, _ = U.reference_and_teacher(cfg, runs, a.seed, S.train, tc_t, a.device, a.cache_dir, S.data_desc,
                                              c["init_scale"], not a.no_progress, c["freeze_class_head"])
    tc_s = U.TrainConfig(c["student_epochs"], c["student_lr"], c["batch_size"])
    per_epoch = []
    cb = (lambda ep, ms: per_epoch.append(ms["aux only"].accuracy(S.test).tolist())) if curve else None
    specs = [U.StudentSpec("aux only", ref, cfg.aux_idx)]
    if cross:
        specs.append(U.StudentSpec("cross-model aux only", U.cross_model_init(ref, runs, a.seed),
                                   cfg.aux_idx))
    out = U.distill(teacher, specs, source_for(c, a.seed, len(S.train)), tc_s, kind=c["loss"],
                    temperature=c["temperature"], progress=not a.no_progress, callback=cb, schedule=c["schedule"])
    r = {"config": c, "student": out["aux only"].accuracy(S.test).tolist(), "teacher": teacher.accuracy(S.test).tolist(),
         "bound": U.hybrid(teacher, ref).accuracy(S.test).tolist(), "student_per_epoch": per_epoch}
    if cross:
        r["cross-model control"] = out["cross-model aux only"].accuracy(S.test).tolist()
    return r


def main(argv=None):
    a = parse_args(argv)
    if a.search and a.plot_only:
        d = U.load_finished(f"{a.results_dir}/topic_a_maximize_search.json")
        a.search_runs = d["config"]["runs"]
        return plot_search(d["summary"], a)
    S = U.setup(a)
    if a.search:
        sweep = U.Sweep(f"{a.results_dir}/topic_a_maximize_search.json",
                        {"runs": a.search_runs, "seed": a.seed, "data": S.data_desc, "cross_control": True}, a, S.t0)
        for name in SEARCH:
            sweep.run(name, lambda name=name: run_config(S, name, a.search_runs, cross=True))
        table = {n: {**{k: U.mean_ci(p[k]) for k in ("student", "cross-model control", "bound", "teacher")},
                     "student minus control": U.paired_ci(p["student"], p["cross-model control"])}
                 for n, p in sweep.points.items()}
        sweep.save(summary=table)
        for n, s in sorted(table.items(), key=lambda kv: -kv[1]["student"]["mean"]):
            st, c = s["student"], s["cross-model control"]
            print(f"{st['mean']:.4f} [{st['ci_low']:.4f}, {st['ci_high']:.4f}]  control {c['mean']:.4f} "
                  f"[{c['ci_low']:.4f}, {c['ci_high']:.4f}]  bound {s['bound']['mean']:.4f}  {n}")
        plot_search(table, a)
        return
    t = time.time()
    r = run_config(S, a.config, a.runs, cross=True)
    summary = U.summarize({"aux-only student": r["student"], "cross-model aux only": r["cross-model control"],
                           "bound (teacher body + init digit head)": r["bound"], "teacher": r["teacher"]})
    frac = np.array(r["student"]) / np.array(r["bound"])
    curve = [U.mean_ci(v) for v in r["student_per_epoch"]]
    U.save_json(f"{a.results_dir}/{out_name(a.config)}.json", {
        "provenance": U.provenance(a, S.t0), "config_name": a.config, "config": r["config"], "summary": summary,
        "student_over_bound": U.mean_ci(frac), "student_per_epoch": curve, "per_run": r,
        "distill_wall_s": round(time.time() - t, 1)})
    U.print_table(summary, f"{a.config} ({a.runs} runs)")
    print(f"student / bound: {U.mean_ci(frac)['mean']:.4f}")
    plot_best(summary, curve, r["config"], a)


def plot_best(summary, curve, c, a):
    plt = U._plt()
    fig, axes = plt.subplots(1, 2, figsize=(16, 5.5), gridspec_kw={"width_ratios": [1.2, 1]})
    n = f"n = {a.runs} runs"
    U.sweep_plot(list(range(1, len(curve) + 1)), {"aux-only student": curve}, None,
                 "Aux-only student during distillation", "distillation epoch (60000 noise images each)",
                 ax=axes[0], n_label=n, markers=False)
    for key, color, ls in (("teacher", U.STUDENT_COLORS["teacher"], "--"),
                           ("bound (teacher body + init digit head)", U.STUDENT_COLORS["bound"], ":")):
        s = summary[key]
        axes[0].axhline(s["mean"], color=color, ls=ls, label=f"{key}: {s['mean']:.4f}")
        axes[0].axhspan(s["ci_low"], s["ci_high"], color=color, alpha=0.15)
    axes[0].axhline(0.95, color="gray", lw=1.2, label="target 0.95 (CI lower bound)")
    axes[0].set_ylim(0.5, 1.0)
    axes[0].legend(fontsize=8, loc="lower right")
    U.bar_chart(summary, None, "Final accuracy; cross-model control: another run's init", n_label=n, ax=axes[1],
                chance=0.1, colors=[U.STUDENT_COLORS[k] for k in ("aux only", "cross-model aux only", "bound", "teacher")])
    desc = (f"teacher: {'frozen digit rows, ' if c['freeze_class_head'] else ''}{c['teacher_epochs']} ep, lr "
            f"{c['teacher_lr']:g}; student: {c['loss']}, {c['student_epochs']} ep, lr {c['student_lr']:g} "
            f"{c['schedule']}, {c['noise']} noise")
    fig.suptitle(f"Maximised aux-only MNIST student (10 digit + 3 aux logits, 784-{c['hidden']}-{c['hidden']}-13)\n"
                 f"{desc}", fontsize=11)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/{out_name(a.config)}.png")
    print(f"wrote {a.plots_dir}/{out_name(a.config)}.png")


def plot_search(table, a):
    plt = U._plt()
    names = list(table)
    readable = {"takehome baseline": "takehome baseline (teacher 5 ep lr 3e-4; student KL 5 ep lr 3e-4)",
                "baseline teacher, student 40 ep lr 1e-3 mse": "baseline teacher; student MSE 40 ep lr 1e-3",
                "frozen-head teacher": "teacher with frozen digit rows (5 ep lr 3e-4); baseline student",
                "frozen-head teacher 10 ep lr 1e-3": "teacher with frozen digit rows, 10 ep lr 1e-3; baseline student",
                "frozen10, student 40 ep lr 1e-3 kl": "frozen-row teacher 10 ep lr 1e-3; student KL 40 ep lr 1e-3",
                "frozen10, student 40 ep lr 1e-3 mse cosine":
                    "frozen-row teacher 10 ep lr 1e-3; student MSE 40 ep lr 1e-3, cosine decay"}
    fig, ax = plt.subplots(figsize=(12, 0.8 * len(names) + 2.5))
    y = np.arange(len(names))[::-1]
    rows = ((-0.18, "student", "aux only", "aux-only student"),
            (0.0, "cross-model control", "cross-model aux only", "cross-model control (another run's init)"),
            (0.18, "bound", "bound", "bound: teacher body + init digit head"))
    for yy in y[:-1]:  # a line between configurations: each row's three points belong to its label
        ax.axhline(yy - 0.5, color="0.85", lw=0.8)
    for off, key, kind, label in rows:
        m = np.array([table[n][key]["mean"] for n in names])
        lo = m - np.array([table[n][key]["ci_low"] for n in names])
        hi = np.array([table[n][key]["ci_high"] for n in names]) - m
        ax.errorbar(m, y - off, xerr=[lo, hi], fmt="o", color=U.STUDENT_COLORS[kind], capsize=3, label=label)
    ax.set_yticks(y)
    ax.set_yticklabels([readable.get(n, n) for n in names], fontsize=9)
    ax.set_ylim(y.min() - 0.5, y.max() + 0.5)
    ax.set_xlabel("MNIST test accuracy")
    ax.axvline(0.1, color="gray", lw=0.8, ls=":", label="chance 0.1")
    ax.grid(alpha=0.3, axis="x")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax.set_title(f"Search for the highest aux-only accuracy (frozen digit rows: the teacher's digit rows stay at the "
                 f"shared init)\nunless stated: teacher 5 epochs lr 3e-4, student KL 5 epochs lr 3e-4, uniform noise; "
                 f"ep = epochs\npoints: mean; bars: 95% t-CI; n = {a.search_runs} runs per configuration "
                 f"(a selection step; the picks are rerun at 25 runs)", fontsize=9)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_maximize_search.png")
    print(f"wrote {a.plots_dir}/topic_a_maximize_search.png")


if __name__ == "__main__":
    U.run_main(main)

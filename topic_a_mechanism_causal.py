"""Takehome step 3, question 1, answered causally: which parameter matrices carry the digits.

The standard aux-only student of A.1 (MLP 784-256-256-(10+3), KL on the 3 aux logits of fresh
uniform noise, 5 epochs of 59 batches of 1024, Adam lr 3e-4, 25 runs) is distilled again with a hook
on every step (topic_a_utils ``StepIntervention``), each condition beside its cross-model control
(the same intervention on a student started from another run's init, A.1's derangement):

1. Alignment, per step and per matrix (W0, b0, W1, b1, the aux rows, all trainable parameters):
   cosine of the update Adam applied with (a) the teacher's total update (teacher - init) and
   (b) the trait descent direction, minus the gradient of the teacher's own loss (digit
   cross-entropy) on a fixed random subset of --trait-images MNIST training images, at the
   student's weights before the step. Recorded at the first --track-first steps and every
   --track-every steps after.
2. Interventions (rows of CONDITIONS): freezing (only W0 and b0 trained; only W1 and b1; only the aux
   rows; both hidden layers with the aux rows frozen; frozen blocks stay bit-identical); projection
   of the applied update, per run over all trainable parameters, removing its component along the
   trait gradient when the step is aligned with the trait (the anchor's rule) or always, against
   removing the same share of the step along a random direction (same cosine with the step, at the
   same steps); keep-only (each matrix's update projected onto that matrix's teacher update; the aux
   rows, which the teacher never moves, stay free). Transplants (no training, rows of TRANSPLANTS):
   the init plus the plain student's change in W0 only, in W1 only, ..., read through the init
   digit rows. Every condition is paired run by run with the plain aux-only student (same inits,
   same noise), and its distillation loss on held-out noise is compared the same way.
3. --study predictor (see the docstring of ``predictor``): the early update cosine with the
   teacher's update, after --early-steps steps, against the final aux-only accuracy as a fraction
   of the bound, over the conditions of the other Topic A experiments.

Regenerate plots/topic_a_mechanism_causal.png and results/topic_a_mechanism_causal.json (every
condition at 25 runs; resumable, each condition written as it finishes; --conditions splits the
table over two processes sharing the file, one per core):

    python topic_a_mechanism_causal.py --runs 25

(--intervention-runs N runs the interventions on the plain student's first N runs only; a later
call with more reruns them, replacing them). The predictor, item 3
(results/topic_a_mechanism_causal_predictor.json, plots/topic_a_mechanism_causal_predictor.png):

    python topic_a_mechanism_causal.py --study predictor --runs 3
"""
from __future__ import annotations


import numpy as np
import torch

import topic_a_utils as U

# name -> the intervention of the same-init student and of its cross-model control
CONDITIONS = {
    "plain": {},
    "train W0 only": {"train": ("W0", "b0")},
    "train W1 only": {"train": ("W1", "b1")},
    "train aux rows only": {"train": ("aux",)},
    "aux rows frozen": {"train": ("W0", "b0", "W1", "b1")},
    "keep teacher direction": {"project": "keep teacher direction"},
    "trait projected out (if aligned)": {"project": "trait if aligned"},
    "random direction projected out (if aligned)": {"project": "random if aligned"},
    "trait projected out (always)": {"project": "trait always"},
}
# name -> the blocks of the plain student's change added to the init (no training)
TRANSPLANTS = {
    "init + W0 change": ("W0",),
    "init + W1 change": ("W1",),
    "init + W0 and W1 changes": ("W0", "W1"),
    "init + all changes but the aux rows": ("W0", "b0", "W1", "b1"),
}
STUDENTS = ("same init", "cross-model")

# ---- item 3: the predictor across experiments --------------------------------------------------
# experiment -> (results file, the role of its conditions: "form" = the step-2 experiments the
# predictor's form is chosen on, "held out" = where it is tested). Rows of predictor_rows().
EXPERIMENTS = {
    "A.4": ("topic_a_shared_init_perturb.json", "form"),
    "A.6": ("topic_a_input_signal.json", "form"),
    "A.5": ("topic_a_num_classes.json", "form"),
    "A.14": ("topic_a_logit_noise.json", "held out"),
    "A.8": ("topic_a_noise_spectrum.json", "held out"),
    "A.13": ("topic_a_wide_channel.json", "held out"),
    "A.10": ("topic_a_factors.json", "held out"),
    "A.12": ("topic_a_pretrained_init.json", "held out"),
}
EARLY_BLOCKS = ("first hidden W", "last hidden W", "hidden")


def predictor_rows() -> list[dict]:
    """One row per condition already in results/: where its final aux-only accuracy is and the
    recipe to rerun its first steps. Conditions identical to the baseline (A.4 scale 0) appear once."""
    rows = []

    def row(exp, point, acc_path, **recipe):
        rows.append({"experiment": exp, "point": point, "acc_path": acc_path, "recipe": recipe})
    for scale in (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4):
        for cond, names in (("all parameters", None), ("hidden only", ["W0", "W1"])):
            if scale == 0 and cond == "hidden only":
                continue
            row("A.4", f"scale={scale:g} {cond}", [f"scale={scale:g}", f"{cond} | aux only", "acc"],
                perturb=(scale, names))
    for alpha in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        row("A.6", f"alpha={alpha:g}", [f"alpha={alpha:g}", "aux only", "acc"], source=("mixed", alpha))
    for k in (16, 64, 256, 784):
        row("A.6", f"alpha=0.5 dim={k}", [f"alpha=0.5 dim={k}", "aux only", "acc"], source=("mixed-subspace", 0.5, k))
    for alpha in (0.5, 1.0):
        row("A.6", f"alpha={alpha:g} mean image + noise", [f"alpha={alpha:g} mean image + noise", "aux only", "acc"],
            source=("no-digit", alpha))
    for k in range(2, 10):
        row("A.5", f"K={k}", [f"K={k}", "aux only", "acc"], n_classes=k)
    for level in (0.25, 0.5, 1.0, 2.0, 4.0):
        row("A.14", f"level={level:g}", [f"level={level:g}", "aux only", "acc"], target_noise=level)
    import topic_a_noise_spectrum as NS
    for fam, xs, lab in (("variance", NS.STDS, "std"), ("blur", NS.SIGMAS, "sigma"), ("subspace", NS.DIMS, "dim"),
                         ("spectrum", NS.IMG_SIGMAS, "sigma"), ("blurred", NS.IMG_SIGMAS, "sigma"),
                         ("spectrum-no-mean", NS.IMG_SIGMAS, "sigma")):
        for x in xs:
            label = f"{lab}={x:g}"
            row("A.8", f"{fam} {label}", [f"{fam} {label}", "acc_by_epoch", 4], source=("family", fam, label))
    for m in (1, 3, 16, 64, 256, 1024):
        row("A.13", f"aux={m}", [f"aux={m}", "aux only", "acc"], hidden=(64, 64), n_aux=m)
    for name, cfg in (("width=64", {"hidden": (64, 64)}), ("width=128", {"hidden": (128, 128)}),
                      ("aux=1", {"n_aux": 1}), ("aux=10", {"n_aux": 10}), ("aux=30", {"n_aux": 30}),
                      ("depth=1", {"hidden": (256,)}), ("depth=3", {"hidden": (256,) * 3}),
                      ("dataset=fashion", {"dataset": "fashion"}), ("depth=4", {"hidden": (256,) * 4}),
                      ("width=512", {"hidden": (512, 512)})):
        row("A.10", name, [name, "aux only", "acc"], **cfg)
    for name in ("Fashion-MNIST", "MNIST, permuted labels"):
        row("A.12", name, [name, "aux only", "acc"], pretrain=name)
    return rows


def early_point(r: dict, S, a, teacher_std, data_cache: dict) -> dict:
    """Rerun the first --early-steps steps of one condition at --runs runs: its teacher (trained by
    that experiment's recipe, cached), its student init and inputs; the cumulative update cosine
    with the teacher's update at steps 1, 5, 10 and --early-steps, and the bound (teacher body +
    the student init's digit rows)."""
    rc = r["recipe"]
    seed, runs = a.seed, a.runs
    k = rc.get("n_classes", 10)
    dataset = rc.get("dataset", "mnist")
    if (dataset, k) not in data_cache:
        tr = S.train if dataset == "mnist" else U.load_dataset(dataset, "train", a.data_dir, None, a.n_train)
        te = S.test if dataset == "mnist" else U.load_dataset(dataset, "test", a.data_dir, None, a.n_test)
        data_cache[(dataset, k)] = (tr.classes(k), te.classes(k)) if k < 10 else (tr, te)
    train, test = data_cache[(dataset, k)]
    cfg = U.MLPConfig(hidden=tuple(rc.get("hidden", (256, 256))), n_classes=k, n_aux=rc.get("n_aux", 3))
    desc = {**S.data_desc, "dataset": dataset, **({"n_classes": k, "n_train": len(train)} if k < 10 else {})}
    if "pretrain" in rc:
        ref = U.Ensemble.init(cfg, runs, U.generator(seed, "init"), a.device)
        if rc["pretrain"] == "Fashion-MNIST":
            pre = U.load_dataset("fashion", "train", a.data_dir, None, a.n_train)
        else:
            perm = torch.randperm(10, generator=U.generator(seed, "label-permutation"))
            while bool((perm == torch.arange(10)).any()):
                perm = torch.randperm(10, generator=U.generator(seed, "label-permutation", int(perm[0])))
            pre = U.Dataset(S.train.x, perm[S.train.y])
        ref = U.train_classifier(ref, U.RealImages(pre, seed, "pretrain-order"), S.tc_teacher, False, desc="pretrain")
        teacher = U.train_classifier(ref, U.RealImages(S.train, seed, "teacher-order"), S.tc_teacher, False)
    elif cfg == U.MLPConfig() and dataset == "mnist":
        ref, teacher = teacher_std
    else:
        ref, teacher = U.setup_teacher(S, cfg, train, desc)
    init = ref
    if "perturb" in rc and rc["perturb"][0] > 0:
        init = ref.perturbed(rc["perturb"][0], rc["perturb"][1], U.generator(seed, "perturb"))
    src = rc.get("source", ("uniform",))
    if src[0] == "uniform":
        source = U.UniformNoise(seed, len(train))
    elif src[0] == "mixed":
        source = U.MixedSource(S.train, src[1], U.GaussianNoise(seed, std=S.train.x.std(0), key="pixel-noise"), seed)
    elif src[0] == "mixed-subspace":
        sigma_rms = float(S.train.x.std(0).pow(2).mean().sqrt())
        source = U.MixedSource(S.train, src[1], U.SubspaceNoise(seed, src[2], std=sigma_rms, key="subspace-noise"), seed)
    elif src[0] == "no-digit":
        import topic_a_input_signal as IS
        source = IS.no_digit_control(S.train, src[1], seed)
    else:
        import topic_a_noise_spectrum as NS
        source = dict((lab, s) for lab, _, s in NS.families(S)[src[1]])[src[2]]
    upd = [t - r_ for t, r_ in zip(teacher.params(), ref.params())]
    steps = sorted({1, 5, 10, a.early_steps})
    hook = U.EarlyAlignment(cfg, init, upd, steps)
    U.distill(teacher, [U.StudentSpec("aux only", init, cfg.aux_idx, rc.get("target_noise", 0.0), hook=hook)],
              source, S.tc_student, progress=False, max_steps=a.early_steps)
    return {"cos": {str(st): c for st, c in hook.cos.items()},
            "bound": U.hybrid(teacher, init).accuracy(test).tolist(), "chance": 1.0 / k}


def predictor_analysis(points: dict, rows: list[dict], a) -> dict:
    """Target: the final aux-only accuracy (mean over the experiment's runs, from results/) as a
    fraction of the bound above chance, (acc - 1/K) / (bound - 1/K). Candidate predictors: the mean
    cumulative update cosine with the teacher's update, per block and step. The form (block, step)
    is the one with the largest Spearman on the step-2 experiments (A.4-A.6); it is then tested on
    the held-out experiments: Spearman with a paired bootstrap 95% interval over conditions."""
    from scipy import stats
    table = []
    for r in rows:
        name = f"{r['experiment']} {r['point']}"
        if name not in points:
            continue
        d = U.load_json(f"{a.experiment_results}/{EXPERIMENTS[r['experiment']][0]}")
        if d is None:
            raise U.UserError(f"{a.experiment_results}/{EXPERIMENTS[r['experiment']][0]} not found: the predictor reads "
                              f"the final accuracies of {r['experiment']} from it (run that experiment, or pass --experiment-results)")
        acc = d["points"]
        for key in r["acc_path"]:
            acc = acc[key]
        pt = points[name]
        chance, bound = pt["chance"], float(np.mean(pt["bound"]))
        table.append({"condition": name, "experiment": r["experiment"], "role": EXPERIMENTS[r["experiment"]][1],
                      "acc": float(np.mean(acc)), "n_acc": len(acc), "bound": bound,
                      "fraction_of_bound": (float(np.mean(acc)) - chance) / (bound - chance),
                      # a student that never moves (one aux logit under KL has no gradient) has an undefined
                      # cosine; it is counted as 0 (no alignment) and flagged
                      "cos": {st: {b: float(np.nan_to_num(np.nanmean(v))) if np.isfinite(v).any() else 0.0
                                   for b, v in c.items()} for st, c in pt["cos"].items()},
                      "student_never_moved": not any(np.isfinite(v).any() for c in pt["cos"].values() for v in c.values())})

    def spearman_ci(x, y):
        x, y = np.asarray(x), np.asarray(y)
        rho = float(stats.spearmanr(x, y).statistic)
        if len(x) < 4:
            return {"rho": rho, "ci_low": float("nan"), "ci_high": float("nan"), "n": len(x)}
        bs = stats.bootstrap((x, y), lambda u, v: stats.spearmanr(u, v).statistic, paired=True, vectorized=False,
                             n_resamples=4999, method="percentile", random_state=np.random.default_rng(a.seed))
        lo, hi = bs.confidence_interval
        return {"rho": rho, "ci_low": float(lo), "ci_high": float(hi), "n": len(x)}

    form = [t for t in table if t["role"] == "form"]
    held = [t for t in table if t["role"] == "held out"]
    cands = {}
    for st in map(str, sorted({1, 5, 10, a.early_steps})):
        for b in EARLY_BLOCKS:
            if form and all(st in t["cos"] for t in form):
                cands[f"{b} @ step {st}"] = spearman_ci([t["cos"][st][b] for t in form], [t["fraction_of_bound"] for t in form])
    out = {"table": table, "form_candidates": cands}
    if not cands:
        return out
    best = max(cands, key=lambda c: cands[c]["rho"])
    b, st = best.split(" @ step ")
    out["form"] = {"block": b, "step": int(st), "form_set": cands[best]}
    if len(held) >= 4:
        out["held_out"] = spearman_ci([t["cos"][st][b] for t in held], [t["fraction_of_bound"] for t in held])
        out["all"] = spearman_ci([t["cos"][st][b] for t in table], [t["fraction_of_bound"] for t in table])
        out["held_out_by_experiment"] = {
            e: spearman_ci([t["cos"][st][b] for t in held if t["experiment"] == e],
                           [t["fraction_of_bound"] for t in held if t["experiment"] == e])
            for e in dict.fromkeys(t["experiment"] for t in held)
            if sum(t["experiment"] == e for t in held) >= 3}
    return out


def predictor(a) -> None:
    path = f"{a.results_dir}/topic_a_mechanism_causal_predictor.json"
    rows = [r for r in predictor_rows() if r["experiment"] in a.experiments]
    if a.plot_only:
        res = U.load_finished(path, "analysis")
        return plot_predictor(res, a)
    S = U.setup(a)
    teacher_std = U.setup_teacher(S, U.MLPConfig())
    config = {"runs": a.runs, "seed": a.seed, "early_steps": a.early_steps, "teacher": S.tc_teacher.as_dict(),
              "student": S.tc_student.as_dict(), "version": 1}
    sweep = U.Sweep(path, config, a, S.t0)
    data_cache = {}
    for r in rows:
        sweep.run(f"{r['experiment']} {r['point']}", lambda r=r: early_point(r, S, a, teacher_std, data_cache))
    sweep.save(analysis=predictor_analysis(sweep.points, predictor_rows(), a))
    res = U.load_json(path)
    an = res["analysis"]
    if "form" in an:
        print(f"form: {an['form']}")
        if "held_out" in an:
            print(f"held out: {an['held_out']}")
    plot_predictor(res, a)


def plot_predictor(res, a):
    plt = U._plt()
    an = res["analysis"]
    if "form" not in an:
        print("no form chosen yet (no form-set conditions); nothing to plot")
        return
    b, st = an["form"]["block"], str(an["form"]["step"])
    fig, ax = plt.subplots(figsize=(10, 7))
    markers = dict(zip(EXPERIMENTS, "osD^vP*X"))
    rows = predictor_rows()
    for e in EXPERIMENTS:
        pts = [t for t in an["table"] if t["experiment"] == e]
        if not pts:
            continue
        role = EXPERIMENTS[e][1]
        runs = sorted({t["n_acc"] for t in pts})
        epochs = {r["acc_path"][2] + 1 for r in rows if r["experiment"] == e and r["acc_path"][1] == "acc_by_epoch"}
        at = f", after epoch {min(epochs)}" if epochs else ""
        ax.scatter([t["cos"][st][b] for t in pts], [t["fraction_of_bound"] for t in pts], marker=markers[e], s=45,
                   facecolors="none" if role == "held out" else None, edgecolors=f"C{list(EXPERIMENTS).index(e)}",
                   color=f"C{list(EXPERIMENTS).index(e)}",
                   label=f"{e} ({role}, {len(pts)} conditions; accuracy over {'/'.join(map(str, runs))} runs{at})")
    never = [t for t in an["table"] if t.get("student_never_moved")]
    if never:
        ax.scatter([t["cos"][st][b] for t in never], [t["fraction_of_bound"] for t in never], marker="x", s=90, color="k",
                   label=f"student never moved (a single aux logit under KL has no gradient): cosine counted as 0 ({len(never)})")
    f, h = an["form"]["form_set"], an.get("held_out")
    txt = f"form set (A.4-A.6): Spearman {f['rho']:+.2f} [{f['ci_low']:+.2f}, {f['ci_high']:+.2f}], n = {f['n']} conditions"
    if h:
        txt += f"\nheld out: Spearman {h['rho']:+.2f} [{h['ci_low']:+.2f}, {h['ci_high']:+.2f}], n = {h['n']} conditions"
    ax.text(0.02, 0.98, txt + "\n[95% paired bootstrap intervals over conditions]", transform=ax.transAxes, va="top", fontsize=9,
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="gray"))
    ax.axhline(0, color="gray", ls="--", lw=1, label="chance")
    ax.set_xlabel(f"early predictor: cosine of the student's change after {st} steps with the teacher's update ({b}),\n"
                  f"mean over {res['provenance']['n_runs']} reruns of each condition (no interval drawn per point)")
    ax.set_ylabel("final aux-only accuracy as a fraction of the bound above chance\n(acc - 1/K) / (bound - 1/K), from each experiment's results")
    ax.set_title("Does the early update alignment predict how much transfers? One point per condition of the other "
                 "Topic A experiments\nfilled: the form-fixing set; open: held out", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_mechanism_causal_predictor.png")
    print(f"wrote {a.plots_dir}/topic_a_mechanism_causal_predictor.png")


def parse_args(argv=None):
    p = U.base_parser(__doc__)
    g = p.add_argument_group("topic_a_mechanism_causal.py")
    g.add_argument("--conditions", default=",".join(CONDITIONS),
                   help="comma-separated rows of CONDITIONS to run (default all; 'plain' always runs first)")
    g.add_argument("--trait-images", type=U.positive_int, default=1024,
                   help="MNIST training images (a fixed random subset) for the trait gradient (default 1024: it is "
                        "computed at every step of the projection conditions, and costs about one distillation step)")
    g.add_argument("--intervention-runs", type=U.positive_int, default=None,
                   help="run every condition but 'plain' on the first N of the --runs runs only (the same "
                        "inits, teacher runs, cross-model inits and noise, so still paired run by run with the "
                        "plain student's first N runs; default: all --runs)")
    g.add_argument("--track-first", type=int, default=20, help="record the alignment at each of the first N steps (default 20)")
    g.add_argument("--track-every", type=U.positive_int, default=10, help="... and every N steps after (default 10)")
    g.add_argument("--n-eval-noise", type=U.positive_int, default=4096,
                   help="held-out uniform-noise inputs for the final distillation loss (default 4096)")
    g.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    g.add_argument("--study", choices=("interventions", "predictor"), default="interventions",
                   help="interventions (items 1-2, default) or predictor (item 3: early update cosine vs final "
                        "transfer over the other Topic A experiments' conditions)")
    g.add_argument("--early-steps", type=U.positive_int, default=20,
                   help="predictor: distillation steps rerun per condition (default 20)")
    g.add_argument("--experiments", default=",".join(EXPERIMENTS),
                   help=f"predictor: which experiments' conditions (default all: {','.join(EXPERIMENTS)})")
    g.add_argument("--experiment-results", default=str(U.REPO / "results"),
                   help="predictor: where the other experiments' results JSONs are read from (default results/)")
    a = U.parse_common(p, argv)
    a.experiments = [e.strip() for e in a.experiments.split(",") if e.strip()]
    if set(a.experiments) - set(EXPERIMENTS):
        p.error(f"--experiments: unknown {sorted(set(a.experiments) - set(EXPERIMENTS))}; choose from {list(EXPERIMENTS)}")
    a.conditions = [c.strip() for c in a.conditions.split(",") if c.strip()]
    bad = [c for c in a.conditions if c not in CONDITIONS]
    if bad:
        p.error(f"--conditions: unknown {bad}; choose from {list(CONDITIONS)}")
    a.conditions = ["plain"] + [c for c in a.conditions if c != "plain"]
    return a


def results_path(a) -> str:
    return f"{a.results_dir}/topic_a_mechanism_causal.json"


def r5(v):
    return [round(float(x), 5) for x in v]


@torch.no_grad()
def heldout_loss(model: U.Ensemble, t_logits: torch.Tensor, x: torch.Tensor, idx) -> list[float]:
    """Each run's KL on the aux logits over shared held-out noise x (N, n_in)."""
    s = model.logits(x)
    return U.distill_loss_per_run(s[..., idx], t_logits[..., idx]).tolist()


def transplant(init: U.Ensemble, student: U.Ensemble, blocks) -> U.Ensemble:
    """The init with the student's values in the named blocks (its digit rows are the init's)."""
    m = init.clone()
    pb = U.param_blocks(init.cfg)
    for name in blocks:
        for i, rows in pb[name]:
            if rows is None:
                m.params()[i].copy_(student.params()[i])
            else:
                m.params()[i][:, rows] = student.params()[i][:, rows]
    return m


def run_condition(name, S, ref, cross_init, teacher, trait, a) -> dict:
    cfg = ref.cfg
    spec = CONDITIONS[name]
    n = a.runs if name == "plain" or not a.intervention_runs else min(a.intervention_runs, a.runs)
    if n < a.runs:  # the first n runs: identical inits, teacher runs and (row-wise drawn) noise
        idx = list(range(n))
        ref, cross_init, teacher = ref.index(idx), cross_init.index(idx), teacher.index(idx)
    upd = [t - r for t, r in zip(teacher.params(), ref.params())]  # run r's teacher update, for both students
    needs_trait = name == "plain" or (spec.get("project") or "").startswith(("trait", "random"))
    track = lambda step: step <= a.track_first or step % a.track_every == 0  # noqa: E731
    hooks = {s: U.StepIntervention(cfg, upd, trait if needs_trait else None, train=spec.get("train"),
                                   project=spec.get("project"), track_steps=track,
                                   seed=U.derive_seed(a.seed, name, s))
             for s in STUDENTS}
    inits = {"same init": ref, "cross-model": cross_init}
    specs = [U.StudentSpec(s, inits[s], cfg.aux_idx, hook=hooks[s]) for s in STUDENTS]
    source = U.UniformNoise(a.seed, n_per_epoch=len(S.train))
    trained = U.distill(teacher, specs, source, S.tc_student, progress=not a.no_progress)
    x_eval = torch.rand(a.n_eval_noise, cfg.n_in, generator=U.generator(a.seed, "held-out noise")) * 2 - 1
    t_eval = teacher.logits(x_eval)
    k = cfg.n_classes
    out = {}
    for s, m in trained.items():
        h = hooks[s]
        loss = np.asarray(h.loss)  # (steps, runs)
        w = max(1, min(5, loss.shape[0]))  # windows of 5 steps (fewer in tiny runs)
        nw = loss.shape[0] // w
        rec = {
            "acc": m.accuracy(S.test).tolist(),
            "heldout_loss": heldout_loss(m, t_eval, x_eval, cfg.aux_idx),
            "train_loss_window": w,
            "train_loss": [r5(row) for row in loss[:nw * w].reshape(nw, w, -1).mean(1)],
            "digit_rows_bit_identical": [bool(torch.equal(m.weights[-1][r, :k], inits[s].weights[-1][r, :k]) and
                                              torch.equal(m.biases[-1][r, :k], inits[s].biases[-1][r, :k]))
                                         for r in range(n)],
            "runs": n,
            "track": [{kk: (v if kk == "step" else r5(v)) for kk, v in t.items()} for t in h.track],
        }
        if h.removed:
            rec["removed_share"] = r5(np.asarray(h.removed).mean(0))  # per run, mean over steps
            rec["projected_share_of_steps"] = r5((np.asarray(h.removed) > 0).mean(0))
        if name == "plain":
            rec["transplants"] = {t: transplant(inits[s], m, blocks).accuracy(S.test).tolist()
                                  for t, blocks in TRANSPLANTS.items()}
        out[s] = rec
    return out


def summarize(points: dict, bound: np.ndarray) -> dict:
    """Accuracies, paired differences against the plain student (same init) and against the plain
    cross-model student (its control), held-out loss differences, alignment summaries."""
    plain = points["plain"]
    summ = {"conditions": {}, "transplants": {}, "alignment": {}}
    for name, pt in points.items():
        row = {}
        for s in STUDENTS:
            acc = np.asarray(pt[s]["acc"])
            n = len(acc)  # paired with the plain student's first n runs (the same runs)
            row[s] = {"acc": U.mean_ci(acc), "n": n,
                      "plain_acc_same_runs": U.mean_ci(plain[s]["acc"][:n]),
                      "acc_over_bound": U.mean_ci(acc / bound[:n]) if s == "same init" else None,
                      "minus_plain": U.paired_ci(acc, plain[s]["acc"][:n]),
                      "heldout_loss": U.mean_ci(pt[s]["heldout_loss"]),
                      "heldout_loss_minus_plain": U.paired_ci(pt[s]["heldout_loss"], plain[s]["heldout_loss"][:n]),
                      "heldout_loss_over_plain": U.mean_ci(np.divide(pt[s]["heldout_loss"], plain[s]["heldout_loss"][:n])),
                      "digit_rows_bit_identical": int(sum(pt[s]["digit_rows_bit_identical"]))}
            if "removed_share" in pt[s]:
                row[s]["removed_share"] = U.mean_ci(pt[s]["removed_share"])
                row[s]["projected_share_of_steps"] = U.mean_ci(pt[s]["projected_share_of_steps"])
        summ["conditions"][name] = row
    for t in TRANSPLANTS:
        summ["transplants"][t] = {s: {"acc": U.mean_ci(plain[s]["transplants"][t]),
                                      "minus_plain": U.paired_ci(plain[s]["transplants"][t], plain[s]["acc"])}
                                  for s in STUDENTS}
    for s in STUDENTS:  # per-step alignment of the plain students: mean over tracked steps, per run
        tr = plain[s]["track"]
        al = {}
        for key in tr[0]:
            if key == "step" or not np.isfinite(tr[0][key]).any():
                continue
            v = np.array([t[key] for t in tr], dtype=float)  # (steps, runs)
            kind, block = key.split("/")
            al.setdefault(kind, {})[block] = {"mean_over_steps": U.mean_ci(v.mean(0)), "first_step": U.mean_ci(v[0]),
                       "last_step": U.mean_ci(v[-1]), "share_of_steps_positive": U.mean_ci((v > 0).mean(0)),
                       "first_20_steps": U.mean_ci(v[:20].mean(0))}
        summ["alignment"][s] = al
        # same minus cross-model, run by run
    summ["alignment"]["same minus cross-model"] = {
        kind: {block: U.paired_ci(np.array([t[f"{kind}/{block}"] for t in plain["same init"]["track"]]).mean(0),
                                  np.array([t[f"{kind}/{block}"] for t in plain["cross-model"]["track"]]).mean(0))
               for block in blocks}
        for kind, blocks in summ["alignment"]["same init"].items()}
    return summ


def main(argv=None):
    a = parse_args(argv)
    if a.study == "predictor":
        return predictor(a)
    path = results_path(a)
    if a.plot_only:
        res = U.load_finished(path, "summary")
        a.runs = res["provenance"].get("n_runs", a.runs)
        return plot(res, a)
    torch.manual_seed(a.seed)
    S = U.setup(a)
    cfg = U.MLPConfig()
    ref, teacher = U.setup_teacher(S, cfg)
    cross_init = U.cross_model_init(ref, a.runs, a.seed)
    trait = U.TraitGradient(S.train, a.trait_images, a.seed, cfg.n_classes)
    config = {"runs": a.runs, "seed": a.seed, "teacher": S.tc_teacher.as_dict(), "student": S.tc_student.as_dict(),
              "data": S.data_desc, "trait_images": a.trait_images, "track_first": a.track_first,
              "track_every": a.track_every, "n_eval_noise": a.n_eval_noise, "version": 1}
    sweep = U.Sweep(path, config, a, S.t0)
    bound = U.hybrid(teacher, ref).accuracy(S.test)
    for name in a.conditions:
        have = sweep.points.get(name, {}).get("same init", {}).get("runs")
        want = a.runs if name == "plain" or not a.intervention_runs else min(a.intervention_runs, a.runs)
        if have is not None and have < want:  # on disk with fewer runs: rerun with more, replacing it
            sweep.replace(name, lambda: run_condition(name, S, ref, cross_init, teacher, trait, a),
                          why=f"rerun with {want} runs (had {have})")
            continue
        sweep.run(name, lambda: run_condition(name, S, ref, cross_init, teacher, trait, a))
    summary = summarize(sweep.points, bound)
    sweep.save(summary=summary, bound=U.mean_ci(bound), teacher=U.mean_ci(teacher.accuracy(S.test)),
               reference=U.mean_ci(ref.accuracy(S.test)),
               cross_model_pairing=U.cross_model_pairing(a.runs, a.seed).tolist(),
               conditions_table={k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                                 for k, v in CONDITIONS.items()},
               transplants_table={k: list(v) for k, v in TRANSPLANTS.items()},
               peak_rss_mb=round(U.peak_rss_mb()))
    res = U.load_json(path)
    for name, row in summary["conditions"].items():
        d, c = row["same init"], row["cross-model"]
        print(f"{name:<46} acc {d['acc']['mean']:.3f}  minus plain {d['minus_plain']['mean']:+.3f} "
              f"[{d['minus_plain']['ci_low']:+.3f}, {d['minus_plain']['ci_high']:+.3f}]   cross {c['acc']['mean']:.3f} "
              f"({c['minus_plain']['mean']:+.3f})  held-out loss {d['heldout_loss_minus_plain']['mean']:+.2e}")
    plot(res, a)


def plot(res, a):
    plt = U._plt()
    pts = res["points"]
    summ = res["summary"]
    n = f"n = {res['provenance']['n_runs']} runs"
    n_int = min(len(pts[k]["same init"]["acc"]) for k in pts)
    ns = sorted({len(pts[k]["same init"]["acc"]) for k in pts if k != "plain"})
    n_c = n if ns == [res["provenance"]["n_runs"]] else \
        f"n per row ({' or '.join(map(str, ns))} runs; fewer than {res['provenance']['n_runs']}: the plain student's first runs)"
    fig = plt.figure(figsize=(20, 12))
    gs = fig.add_gridspec(2, 3, width_ratios=[1, 1, 1.1])
    ax_t, ax_g, ax_l = (fig.add_subplot(gs[0, k]) for k in range(3))
    ax_b = fig.add_subplot(gs[1, :2])
    ax_x = fig.add_subplot(gs[1, 2])
    blocks = [("W0", "C0"), ("W1", "C1"), ("trainable", "black")]  # b0, b1 are in the JSON (noisier, small)
    for ax, kind, title in ((ax_t, "teacher_cos", "(a) Cosine of each step's update with the teacher's update\n(teacher - init), per matrix"),
                            (ax_g, "trait_cos", f"(b) Cosine of each step's update with the trait direction\n(- gradient of digit cross-entropy on {res['config']['trait_images']:,} fixed MNIST train images)")):
        for s, ls in (("same init", "-"), ("cross-model", "--")):
            tr = pts["plain"][s]["track"]
            steps = [t["step"] for t in tr]
            for b, col in blocks:
                key = f"{kind}/{b}"
                if key not in tr[0]:
                    continue
                v = np.array([t[key] for t in tr], dtype=float)
                ci = [U.mean_ci(row) for row in v]
                m = np.array([c["mean"] for c in ci])
                ax.plot(steps, m, ls=ls, color=col, lw=1.3,
                        label=f"{b if b != 'trainable' else 'all trainable'} ({'same init' if s == 'same init' else 'cross-model control'})")
                ax.fill_between(steps, [c["ci_low"] for c in ci], [c["ci_high"] for c in ci], color=col, alpha=0.15)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xlabel("distillation step (batch of 1024 uniform-noise images)")
        ax.set_ylabel("cosine")
        ax.set_title(f"{title}\nplain aux-only student; lines: mean, bands: 95% t-CI; {n}", fontsize=9.5)
        ax.legend(fontsize=7.5, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
        ax.grid(alpha=0.3)
    # training loss curves
    for name, col in (("plain", "black"), ("trait projected out (if aligned)", "C3"),
                      ("trait projected out (always)", "C1"), ("random direction projected out (if aligned)", "C2"),
                      ("keep teacher direction", "C4")):
        if name not in pts:
            continue
        L = np.array(pts[name]["same init"]["train_loss"], dtype=float)[:, :n_int]
        w = pts[name]["same init"]["train_loss_window"]
        x = (np.arange(L.shape[0]) + 1) * w
        ci = [U.mean_ci(row) for row in L]
        ax_l.plot(x, [c["mean"] for c in ci], color=col, label=name)
        ax_l.fill_between(x, [c["ci_low"] for c in ci], [c["ci_high"] for c in ci], color=col, alpha=0.15)
    ax_l.set_yscale("log")
    ax_l.set_xlabel("distillation step")
    ax_l.set_ylabel("KL on the 3 aux logits (training batch, mean of 5 steps)")
    ax_l.set_title(f"(c) Does the intervention slow distillation?\nsame-init students; mean, 95% t-CI; n = {n_int} runs",
                   fontsize=9.5)
    ax_l.legend(fontsize=7.5, loc="upper right")
    lines = [f"final KL on 4,096 held-out noise inputs: plain {summ['conditions']['plain']['same init']['heldout_loss']['mean']:.1e};",
             "minus plain, paired [95% t-CI]:"]
    for name in summ["conditions"]:
        if name != "plain" and (name.startswith(("trait", "random", "keep"))):
            d = summ["conditions"][name]["same init"]["heldout_loss_minus_plain"]
            short = name.replace(" projected out", "").replace(" direction", "").replace("keep teacher direction", "keep-only")
            lines.append(f"{short}: {d['mean']:+.1e} [{d['ci_low']:+.1e}, {d['ci_high']:+.1e}]")
    ax_l.text(0.0, -0.14, "\n".join(lines), transform=ax_l.transAxes, fontsize=7.5, va="top",
              bbox=dict(facecolor="white", alpha=0.85, edgecolor="gray"))
    ax_l.grid(alpha=0.3)
    # paired differences: interventions and transplants
    rows = [(f"{k} (n = {v['same init']['n']})", v["same init"]["minus_plain"], v["cross-model"]["minus_plain"])
            for k, v in summ["conditions"].items() if k != "plain"]
    rows += [(f"transplant: {k} (n = {v['same init']['acc']['n']})", v["same init"]["minus_plain"],
              v["cross-model"]["minus_plain"]) for k, v in summ["transplants"].items()]
    ys = np.arange(len(rows))
    for off, j, col, lab in ((-0.18, 1, "tab:blue", "same-init student minus plain aux-only student"),
                             (0.18, 2, "tab:red", "cross-model control minus plain cross-model student")):
        m = np.array([r[j]["mean"] for r in rows])
        e = np.array([r[j]["half_width"] for r in rows])
        ax_b.barh(ys + off, m, height=0.34, xerr=e, color=col, alpha=0.75, capsize=3, label=lab)
        pad = 0.01 * max(abs(r[k]["mean"]) + r[k]["half_width"] for r in rows for k in (1, 2))
        for y, mm, ee in zip(ys + off, m, e):
            ax_b.text(mm + (ee + pad if mm >= 0 else -ee - pad), y, f"{mm:+.3f}", va="center",
                      ha="left" if mm >= 0 else "right", fontsize=7.5)
    ax_b.set_yticks(ys)
    ax_b.set_yticklabels([r[0] for r in rows], fontsize=8.5)
    ax_b.invert_yaxis()
    ax_b.axvline(0, color="black", lw=0.8)
    plain_acc = summ["conditions"]["plain"]["same init"]["acc"]["mean"]
    ax_b.axvline(0.1 - plain_acc, color="gray", ls="--", lw=1, label=f"chance (0.1) minus plain student ({plain_acc:.3f})")
    ax_b.set_xlabel("paired difference in MNIST test accuracy (same runs, inits and noise)")
    ax_b.set_title("(d) What each intervention costs: paired difference against the plain student, with its cross-model control\n"
                   "bars: mean, error bars: 95% t-CI of the paired differences; n per row in its label", fontsize=9.5)
    ax_b.legend(fontsize=8, loc="lower left")
    ax_b.grid(alpha=0.3, axis="x")
    # accuracies
    names = list(summ["conditions"])
    acc = [summ["conditions"][k]["same init"]["acc"] for k in names]
    cacc = [summ["conditions"][k]["cross-model"]["acc"] for k in names]
    ys = np.arange(len(names))
    ax_x.barh(ys - 0.18, [c["mean"] for c in acc], height=0.34, xerr=[c["half_width"] for c in acc], color="tab:blue",
              alpha=0.75, capsize=3, label="same init (aux only)")
    ax_x.barh(ys + 0.18, [c["mean"] for c in cacc], height=0.34, xerr=[c["half_width"] for c in cacc], color="tab:red",
              alpha=0.75, capsize=3, label="cross-model control")
    ax_x.axvline(res["bound"]["mean"], color="tab:green", ls=":", lw=2, label=f"bound ({res['bound']['mean']:.3f})")
    ax_x.axvline(0.1, color="gray", ls="--", lw=1, label="chance")
    ax_x.set_yticks(ys)
    ax_x.set_yticklabels([f"{k} (n = {summ['conditions'][k]['same init']['n']})" for k in names], fontsize=8)
    ax_x.invert_yaxis()
    ax_x.set_xlim(0, 1)
    ax_x.set_xlabel("MNIST test accuracy")
    ax_x.set_title("(e) Accuracy of each condition\nbars: mean, 95% t-CI; n per row in its label", fontsize=9.5)
    ax_x.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.suptitle("Which matrices carry the digits? MLP 784-256-256-(10+3), KL on 3 aux logits of uniform noise, "
                 "5 epochs x 59 steps; every intervention acts on the update Adam applied\n"
                 f"plain student and transplants: {n}; interventions: {n_c}", fontsize=12)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_a_mechanism_causal.png")
    print(f"wrote {a.plots_dir}/topic_a_mechanism_causal.png")


if __name__ == "__main__":
    U.run_main(main)

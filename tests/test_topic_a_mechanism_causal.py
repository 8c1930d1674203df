"""The step hook of the ensemble engine (topic_a_mechanism_causal.py): projections leave no
component along their direction, freezing keeps blocks bit-identical, the trait gradient is
autograd's, and a hook that changes nothing changes nothing."""
import pytest
import torch
import torch.nn.functional as F

import topic_a_utils as U

SMALL = U.MLPConfig(n_in=20, hidden=(16, 12), n_classes=4, n_aux=3)
R = 3


def tiny_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 20, generator=g) * 2 - 1
    return U.Dataset(x, (x @ torch.randn(20, 4, generator=g)).argmax(1))


def setup_tiny():
    data = tiny_data()
    ref = U.Ensemble.init(SMALL, R, U.generator(0, "init"))
    teacher = U.train_classifier(ref, U.RealImages(data, 0), U.TrainConfig(3, 1e-2, 32), progress=False)
    upd = [t - r for t, r in zip(teacher.params(), ref.params())]
    return data, ref, teacher, upd


def distill(ref, teacher, hook, steps=4):
    src = U.UniformNoise(0, n_per_epoch=64 * steps, n_in=20)
    spec = U.StudentSpec("s", ref, SMALL.aux_idx, hook=hook)
    return U.distill(teacher, [spec], src, U.TrainConfig(1, 1e-2, 64), progress=False)["s"]


class Capture(U.StepHook):
    """Wraps a hook and keeps the update it leaves, and the trait direction at that step."""

    def __init__(self, inner, trait):
        self.inner, self.trait, self.deltas, self.dirs = inner, trait, [], []

    def __call__(self, step, model, before, delta, loss):
        changed = self.inner(step, model, before, delta, loss)
        m0 = U.Ensemble(model.cfg, before[:model.n_layers], before[model.n_layers:])
        self.dirs.append([-g for g in self.trait(m0)])
        self.deltas.append([d.clone() for d in delta])
        return changed

    def restore(self, params, before):
        self.inner.restore(params, before)


def test_trait_gradient_equals_autograd():
    data, ref, teacher, _ = setup_tiny()
    trait = U.TraitGradient(data, 40, seed=1, n_classes=4)
    got = trait(teacher)
    m = teacher.clone().requires_grad_()
    loss = sum(F.cross_entropy(m(trait.x)[r, :, :4], trait.y) for r in range(R))
    ref_grads = torch.autograd.grad(loss, m.params())
    for a, b in zip(got, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert got[-1].abs().sum() > 0  # the digit biases get a gradient ...
    assert torch.all(got[2][:, 4:] == 0)  # ... the aux rows none (the loss is on digit logits)


def test_projection_leaves_no_component_along_the_trait_gradient():
    data, ref, teacher, upd = setup_tiny()
    trait = U.TraitGradient(data, 64, seed=1, n_classes=4)
    block = U.trainable_block(SMALL)
    for project in ("trait always", "trait if aligned"):
        cap = Capture(U.StepIntervention(SMALL, upd, trait, project=project), trait)
        distill(ref, teacher, cap)
        assert len(cap.deltas) == 4
        for d, g in zip(cap.deltas, cap.dirs):
            dot = U.block_dot(d, g, block)
            assert torch.all(dot.abs() < 1e-6), dot
            if project == "trait always":  # relative to the sizes too
                cos = U.block_cos(d, g, block)
                assert torch.all(cos.abs() < 1e-5), cos
            assert U.block_dot(d, d, block).min() > 0  # the rest of the step is still there


def test_project_out_on_large_vectors():
    g = torch.Generator().manual_seed(3)
    a = [torch.randn(R, 50, 40, generator=g), torch.randn(R, 50, generator=g)]
    d = [torch.randn(R, 50, 40, generator=g), torch.randn(R, 50, generator=g)]
    block = [(0, None), (1, None)]
    before = U.block_dot(a, d, block)
    coef = U.project_out(a, d, block, mask=torch.tensor([True, False, True]))
    after = U.block_dot(a, d, block)
    assert abs(after[0]) < 1e-6 * before.abs().max() * 10 and abs(after[2]) < 1e-4
    assert after[1] == before[1] and coef[1] == 0  # masked-off run untouched


def test_freezing_keeps_blocks_bit_identical():
    _, ref, teacher, upd = setup_tiny()
    for train in (("W1", "b1"), ("aux",), ("W0", "b0", "W1", "b1")):
        hook = U.StepIntervention(SMALL, upd, None, train=train)
        s = distill(ref, teacher, hook)
        for name, block in U.param_blocks(SMALL).items():
            for (i, rows) in block:
                a, b = s.params()[i], ref.params()[i]
                a, b = (a, b) if rows is None else (a[:, rows], b[:, rows])
                if name in train:
                    assert not torch.equal(a, b), name
                else:
                    assert torch.equal(a, b), (train, name)


def test_keep_only_follows_the_teacher_direction():
    data, ref, teacher, upd = setup_tiny()
    trait = U.TraitGradient(data, 64, seed=1, n_classes=4)
    cap = Capture(U.StepIntervention(SMALL, upd, None, project="keep teacher direction"), trait)
    distill(ref, teacher, cap)
    for name, block in U.param_blocks(SMALL).items():
        if name in ("aux", "digit"):
            continue
        for d in cap.deltas:
            cos = U.block_cos(d, upd, block)
            assert torch.all((cos.abs() - 1).abs() < 1e-4), (name, cos)


def test_random_control_removes_the_same_share():
    data, ref, teacher, upd = setup_tiny()
    trait = U.TraitGradient(data, 64, seed=1, n_classes=4)
    hook = U.StepIntervention(SMALL, upd, trait, project="random if aligned")
    g = torch.Generator().manual_seed(5)
    delta = [torch.randn(p.shape, generator=g) for p in ref.params()]
    cos = torch.tensor([0.3, 0.0, 0.9], dtype=torch.float64)
    r = hook._random_like(delta, cos)
    block = U.trainable_block(SMALL)
    torch.testing.assert_close(U.block_cos(r, delta, block), cos, atol=1e-5, rtol=0)
    for i, rows in U.param_blocks(SMALL)["digit"]:
        assert torch.all(r[i][:, rows] == 0)


def test_hook_without_intervention_changes_nothing_and_tracks():
    data, ref, teacher, upd = setup_tiny()
    trait = U.TraitGradient(data, 64, seed=1, n_classes=4)
    plain = distill(ref, teacher, None)
    hook = U.StepIntervention(SMALL, upd, trait, track_steps=lambda s: s % 2 == 1)
    hooked = distill(ref, teacher, hook)
    for a, b in zip(plain.params(), hooked.params()):
        assert torch.equal(a, b)  # bit-identical: a hook that only records never rewrites the step
    assert len(hook.loss) == 4 and len(hook.track) == 2
    rec = hook.track[0]
    assert rec["step"] == 1 and len(rec["teacher_cos/W0"]) == R
    assert all(abs(c) <= 1 for c in rec["trait_cos/trainable"])
    assert all(c != c for c in rec["teacher_cos/aux"])  # the teacher never moves its aux rows: undefined


def test_max_steps_and_early_alignment():
    """distill(max_steps=k) is the first k steps of the full run, and EarlyAlignment's cosine is
    that of the student's change so far with the teacher's update."""
    _, ref, teacher, upd = setup_tiny()
    hook = U.EarlyAlignment(SMALL, ref, upd, steps=[1, 2])
    src = U.UniformNoise(0, n_per_epoch=64 * 4, n_in=20)
    early = U.distill(teacher, [U.StudentSpec("s", ref, SMALL.aux_idx, hook=hook)], src, U.TrainConfig(1, 1e-2, 64),
                      progress=False, max_steps=2)["s"]
    assert sorted(hook.cos) == [1, 2]
    change = [p - r for p, r in zip(early.params(), ref.params())]
    blocks = U.param_blocks(SMALL)
    torch.testing.assert_close(torch.tensor(hook.cos[2]["W1"]), U.block_cos(change, upd, blocks["W1"]).float(),
                               rtol=0, atol=1e-6)
    # the same two steps, run by hand as a 2-step source
    two = U.distill(teacher, [U.StudentSpec("s", ref, SMALL.aux_idx)], U.UniformNoise(0, 64 * 2, n_in=20),
                    U.TrainConfig(1, 1e-2, 64), progress=False)["s"]
    for a, b in zip(early.params(), two.params()):
        assert torch.equal(a, b)


TINY = ["--runs", "3", "--n-train", "1024", "--n-test", "300", "--teacher-epochs", "1", "--student-epochs", "1",
        "--batch-size", "256", "--no-progress", "--no-cache"]


def run_script(args):
    import subprocess
    import sys
    from conftest import REPO
    return subprocess.run([sys.executable, str(REPO / "topic_a_mechanism_causal.py"), *args], capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_script_end_to_end_pairs_with_the_plain_students_first_runs_and_resumes(tmp_path, mnist_dir):
    import json
    import numpy as np
    args = [*TINY, "--intervention-runs", "2", "--trait-images", "128", "--n-eval-noise", "256",
            "--conditions", "train W1 only,trait projected out (if aligned)",
            "--data-dir", mnist_dir, "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path)]
    r = run_script(args)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "topic_a_mechanism_causal.json").read_text())
    P, S = res["points"], res["summary"]["conditions"]
    assert len(P["plain"]["same init"]["acc"]) == 3 and len(P["train W1 only"]["same init"]["acc"]) == 2
    for name in ("train W1 only", "trait projected out (if aligned)"):
        for s in ("same init", "cross-model"):
            d = np.subtract(P[name][s]["acc"], P["plain"][s]["acc"][:2])
            assert S[name][s]["minus_plain"]["mean"] == pytest.approx(d.mean())
            assert all(P[name][s]["digit_rows_bit_identical"])
    assert "trait_cos" in res["summary"]["alignment"]["same init"]
    assert (tmp_path / "topic_a_mechanism_causal.png").stat().st_size > 10_000
    r2 = run_script(args)
    assert r2.returncode == 0 and "done in" not in r2.stdout and "on disk, reused" in r2.stdout
    assert run_script(["--conditions", "nonsense"]).returncode == 2
    # asked for more runs than a condition on disk has: it is rerun with more and replaced
    more = [a if a != "2" else "3" for a in args]  # --intervention-runs 3
    more[more.index("--conditions") + 1] = "train W1 only"
    r3 = run_script(more)
    assert r3.returncode == 0 and "rerun with 3 runs (had 2)" in r3.stdout, r3.stderr
    res3 = json.loads((tmp_path / "topic_a_mechanism_causal.json").read_text())
    assert len(res3["points"]["train W1 only"]["same init"]["acc"]) == 3
    assert res3["points"]["train W1 only"]["same init"]["acc"][:2] == P["train W1 only"]["same init"]["acc"]
    assert res3["points"]["plain"] == P["plain"]


def test_predictor_end_to_end(tmp_path, mnist_dir):
    import json
    args = [*TINY, "--study", "predictor", "--experiments", "A.4,A.14", "--early-steps", "2",
            "--data-dir", mnist_dir, "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path)]
    r = run_script(args)
    assert r.returncode == 0, r.stderr
    an = json.loads((tmp_path / "topic_a_mechanism_causal_predictor.json").read_text())["analysis"]
    assert len(an["table"]) == 13 + 5
    assert an["form"]["block"] in ("first hidden W", "last hidden W", "hidden") and an["form"]["step"] in (1, 2)
    assert -1 <= an["held_out"]["rho"] <= 1 and an["held_out"]["n"] == 5
    assert (tmp_path / "topic_a_mechanism_causal_predictor.png").stat().st_size > 10_000

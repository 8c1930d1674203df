import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import topic_a_utils as U

SMALL = U.MLPConfig(n_in=20, hidden=(16, 12), n_classes=4, n_aux=3)


def tiny_data(n=96, n_in=20, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, n_in, generator=g) * 2 - 1
    w = torch.randn(n_in, k, generator=g)
    return U.Dataset(x, (x @ w).argmax(1))


def test_init_matches_spec():
    cfg = U.MLPConfig()
    e = U.Ensemble.init(cfg, 8, U.generator(0, "init"))
    for w, b, fan_in in zip(e.weights, e.biases, cfg.sizes[:-1]):
        assert torch.all(b == 0)
        assert abs(w.std().item() * math.sqrt(fan_in) - 1) < 0.03
        assert abs(w.mean().item()) < 0.01
    assert [tuple(w.shape) for w in e.weights] == [(8, 256, 784), (8, 256, 256), (8, 13, 256)]


def test_forward_equals_independent_torch_modules():
    e = U.Ensemble.init(SMALL, 3, U.generator(1, "init"))
    x = torch.randn(3, 5, 20)
    out, hidden = e(x, return_hidden=True)
    for r in range(3):
        h = x[r]
        for l, (w, b) in enumerate(zip(e.weights, e.biases)):
            h = F.linear(h, w[r], b[r])
            if l < 2:
                h = torch.relu(h)
                torch.testing.assert_close(hidden[l][r], h)
        torch.testing.assert_close(out[r], h)
    # a (B, n_in) input is shared by all runs
    torch.testing.assert_close(e(x[0]), torch.stack([e(x[0].expand(3, 5, 20))[r] for r in range(3)]))


def test_runs_train_independently():
    """Run r of an ensemble trains exactly as it would alone (up to float reassociation)."""
    data = tiny_data()
    ref = U.Ensemble.init(SMALL, 3, U.generator(2, "init"))
    tc = U.TrainConfig(epochs=2, lr=1e-2, batch_size=32)
    src = U.RealImages(data, seed=0)
    full = U.train_classifier(ref, src, tc, progress=False)
    # the same run 1 alone, fed the same per-run order: take run 1's slice of each batch
    alone = ref.index([1]).requires_grad_()
    opt = torch.optim.Adam(alone.params(), lr=tc.lr)
    for ep in range(tc.epochs):
        for x, y in src.epoch(ep, 3, tc.batch_size, "cpu"):
            loss = F.cross_entropy(alone(x[1:2])[0, :, :4], y[1])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(full.index([1]).params(), alone.params()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_teacher_training_leaves_aux_rows_untouched():
    data = tiny_data()
    ref = U.Ensemble.init(SMALL, 2, U.generator(3, "init"))
    t = U.train_classifier(ref, U.RealImages(data, 0), U.TrainConfig(2, 1e-2, 32), progress=False)
    assert torch.equal(t.weights[-1][:, 4:], ref.weights[-1][:, 4:])
    assert torch.equal(t.biases[-1][:, 4:], ref.biases[-1][:, 4:])
    assert not torch.equal(t.weights[-1][:, :4], ref.weights[-1][:, :4])
    assert (t.accuracy(data) > ref.accuracy(data)).all()


def test_aux_only_distillation_keeps_digit_rows_bit_identical():
    data = tiny_data()
    ref = U.Ensemble.init(SMALL, 3, U.generator(4, "init"))
    teacher = U.train_classifier(ref, U.RealImages(data, 0), U.TrainConfig(2, 1e-2, 32), progress=False)
    students = [U.StudentSpec("aux", ref, SMALL.aux_idx), U.StudentSpec("all", ref, SMALL.all_idx)]
    out = U.distill(teacher, students, U.UniformNoise(0, n_per_epoch=128, n_in=20),
                    U.TrainConfig(3, 1e-2, 32), progress=False)
    aux, full = out["aux"], out["all"]
    assert torch.equal(aux.weights[-1][:, :4], ref.weights[-1][:, :4])
    assert torch.equal(aux.biases[-1][:, :4], ref.biases[-1][:, :4])
    # ...while everything else that is upstream of the aux logits did move
    assert not torch.equal(aux.weights[-1][:, 4:], ref.weights[-1][:, 4:])
    assert not torch.equal(aux.weights[0], ref.weights[0])
    # the all-logits student does change its digit rows
    assert not torch.equal(full.weights[-1][:, :4], ref.weights[-1][:, :4])


def test_derangement_has_no_fixed_points_and_permutation_can():
    fixed_seen = False
    for s in range(300):
        n = 2 + s % 7
        d = U.derangement(n, U.generator(s, "pairing"))
        assert sorted(d.tolist()) == list(range(n))
        assert not (d == torch.arange(n)).any()
        p = U.permutation(n, U.generator(s, "pairing"))
        fixed_seen |= bool((p == torch.arange(n)).any())
    assert fixed_seen  # the legacy pairing really does pair some runs with themselves
    with pytest.raises(U.UserError):
        U.derangement(1, U.generator(0))


def test_derangement_is_uniform_over_derangements():
    counts = {}
    for s in range(4000):
        t = tuple(U.derangement(3, U.generator(s)).tolist())
        counts[t] = counts.get(t, 0) + 1
    assert set(counts) == {(1, 2, 0), (2, 0, 1)}
    assert abs(counts[(1, 2, 0)] / 4000 - 0.5) < 0.04


def test_index_reorders_runs():
    e = U.Ensemble.init(SMALL, 4, U.generator(5))
    r = e.index([2, 0, 3, 1])
    for new, old in enumerate([2, 0, 3, 1]):
        for a, b in zip(r.params(), e.params()):
            assert torch.equal(a[new], b[old])


def test_perturb_touches_only_named_tensors_with_asked_std():
    cfg = U.MLPConfig()
    e = U.Ensemble.init(cfg, 4, U.generator(6))
    p = e.perturbed(0.2, ["W0", "W1"], U.generator(7))
    for name, before in e.named_params().items():
        after = p.named_params()[name]
        if name in ("W0", "W1"):
            delta = (after - before).reshape(4, -1)
            want = 0.2 * before.reshape(4, -1).std(dim=1)
            torch.testing.assert_close(delta.std(dim=1), want, rtol=0.02, atol=0)
        else:
            assert torch.equal(after, before)
    with pytest.raises(U.UserError):
        e.perturbed(0.1, ["W9"], U.generator(0))


def test_distill_loss_matches_torch_kl_and_legacy_scaling():
    s = torch.randn(3, 8, 5)
    t = torch.randn(3, 8, 5)
    ours = U.distill_loss(s, t)
    per_run = sum(F.kl_div(F.log_softmax(s[r], -1), F.log_softmax(t[r], -1), reduction="batchmean",
                           log_target=True) for r in range(3))
    torch.testing.assert_close(ours, per_run)
    legacy = U.distill_loss(s, t, reduction="legacy_batchmean")
    circulating = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)
    torch.testing.assert_close(legacy, circulating)
    torch.testing.assert_close(legacy, ours * 8 / 3)  # batch/runs times too large
    # temperature: T^2-scaled KL of softened distributions
    torch.testing.assert_close(U.distill_loss(s, t, temperature=2.0),
                               4 * U.distill_loss(s / 2, t / 2))
    torch.testing.assert_close(U.distill_loss(s, t, kind="mse"), ((s - t) ** 2).mean(-1).mean(1).sum())


def test_noise_sources_are_seeded_per_batch():
    src = U.UniformNoise(seed=3, n_per_epoch=100, n_in=10)
    a = [x for x, _ in src.epoch(0, 2, 32, "cpu")]
    b = [x for x, _ in src.epoch(0, 2, 32, "cpu")]
    c = [x for x, _ in src.epoch(1, 2, 32, "cpu")]
    assert [x.shape for x in a] == [(2, 32, 10)] * 3 + [(2, 4, 10)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert a[0].min() >= -1 and a[0].max() <= 1 and abs(a[0].mean()) < 0.1
    assert not torch.equal(a[0][0], a[0][1])  # runs get different noise
    # fixed mode: the same set of images in every epoch, batches in a new order
    fx = U.UniformNoise(seed=3, n_per_epoch=96, n_in=10, fixed=True)
    e0 = torch.cat([x for x, _ in fx.epoch(0, 2, 32, "cpu")], 1)
    e1 = torch.cat([x for x, _ in fx.epoch(1, 2, 32, "cpu")], 1)
    key = lambda e: sorted(map(tuple, e[0].tolist()))
    assert key(e0) == key(e1) and not torch.equal(e0, e1)
    g = U.GaussianNoise(seed=1, n_per_epoch=4096, n_in=50, std=2.0)
    x = next(iter(g.epoch(0, 1, 4096, "cpu")))[0]
    assert abs(x.std().item() - 2.0) < 0.02


def test_real_images_each_run_own_order():
    data = tiny_data(n=40)
    src = U.RealImages(data, seed=0)
    xs, ys = zip(*src.epoch(0, 3, 16, "cpu"))
    x = torch.cat(xs, 1)
    y = torch.cat(ys, 1)
    for r in range(3):  # every run sees every example exactly once per epoch
        assert sorted(map(tuple, x[r].tolist())) == sorted(map(tuple, data.x.tolist()))
    assert not torch.equal(y[0], y[1])
    # the label travels with its image
    for r in range(3):
        idx = [int(torch.nonzero((data.x == x[r, i]).all(1))[0]) for i in range(40)]
        assert torch.equal(data.y[idx], y[r])


def test_mean_ci_is_t_interval():
    v = [0.5, 0.6, 0.55, 0.7, 0.4]
    s = U.mean_ci(v)
    sd = np.std(v, ddof=1)
    assert s["mean"] == pytest.approx(0.55)
    assert s["half_width"] == pytest.approx(2.7764451 * sd / math.sqrt(5), rel=1e-6)
    assert U.legacy_ci_half_width(v) == pytest.approx(1.96 * np.std(v) / math.sqrt(5))
    assert U.legacy_ci_half_width(v) < s["half_width"]


def test_teacher_cache_roundtrip(tmp_path):
    data = tiny_data()
    tc = U.TrainConfig(1, 1e-2, 32)
    args = (SMALL, 2, 0, data, tc, "cpu", tmp_path, {"dataset": "tiny"})
    ref1, t1, cached1 = U.reference_and_teacher(*args, progress=False)
    ref2, t2, cached2 = U.reference_and_teacher(*args, progress=False)
    assert (cached1, cached2) == (False, True)
    assert all(torch.equal(a, b) for a, b in zip(t1.params(), t2.params()))
    assert all(torch.equal(a, b) for a, b in zip(ref1.params(), ref2.params()))
    _, _, cached3 = U.reference_and_teacher(SMALL, 2, 1, data, tc, "cpu", tmp_path, {"dataset": "tiny"},
                                            progress=False)
    assert not cached3  # another seed is another teacher


@pytest.mark.parametrize("kind,T,reduction,idx", [("kl", 1.0, "per_run_mean", "aux"),
                                                  ("kl", 3.0, "legacy_batchmean", "all"),
                                                  ("mse", 1.0, "per_run_mean", "aux")])
def test_hand_written_backward_equals_autograd(kind, T, reduction, idx):
    """train_step's gradients (the buffers Adam reads) equal autograd's on the reference losses."""
    e = U.Ensemble.init(SMALL, 3, U.generator(7, "init"))
    t = U.Ensemble.init(SMALL, 3, U.generator(8, "init"))
    x = torch.randn(3, 6, 20)
    li = SMALL.aux_idx if idx == "aux" else SMALL.all_idx
    y = torch.randint(0, 4, (3, 6))
    with torch.no_grad():
        tl = t(x)
    for grad_fn, loss_fn in [
        (lambda z: U.distill_grad(z, tl, torch.tensor(li), kind, T, reduction),
         lambda z: U.distill_loss(z[..., li], tl[..., li], kind, T, reduction)),
        (lambda z: U.ce_grad(z, y, 4), lambda z: U.ce_loss(z, y, 4)),
    ]:
        ref = e.clone().requires_grad_()
        loss_fn(ref(x)).backward()
        m = e.clone()

        class NoStep:
            def step(self):
                pass
        U.make_optimizer(m, 1e-3)
        U.train_step(m, x, grad_fn, NoStep())
        for a, b in zip(m.params(), ref.params()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
        assert torch.equal(m.weights[0], e.weights[0])  # NoStep: weights untouched


def test_frozen_class_head_teacher_learns_through_its_body_only():
    data = tiny_data()
    ref = U.Ensemble.init(SMALL, 2, U.generator(9, "init"))
    t = U.train_classifier(ref, U.RealImages(data, 0), U.TrainConfig(3, 1e-2, 32), progress=False,
                           freeze_class_head=True)
    assert torch.equal(t.weights[-1], ref.weights[-1]) and torch.equal(t.biases[-1], ref.biases[-1])
    assert not torch.equal(t.weights[0], ref.weights[0])
    assert (t.accuracy(data) > ref.accuracy(data)).all()


def test_cosine_schedule_starts_at_full_rate_then_differs():
    """Cosine starts at the full learning rate (a one-step run equals the constant one) and then
    decays (a longer run differs); an unknown schedule is a clear error."""
    data = tiny_data()
    ref = U.Ensemble.init(SMALL, 2, U.generator(4, "init"))
    teacher = U.train_classifier(ref, U.RealImages(data, 0), U.TrainConfig(1, 1e-2, 32), progress=False)
    spec = [U.StudentSpec("aux", ref, SMALL.aux_idx)]
    src = U.UniformNoise(0, n_per_epoch=32, n_in=20)
    one = lambda s: U.distill(teacher, spec, src, U.TrainConfig(1, 1e-2, 32), progress=False, schedule=s)["aux"]
    assert torch.equal(one("cosine").weights[0], one("constant").weights[0])  # step 0: factor cos(0) = 1
    src4 = U.UniformNoise(0, n_per_epoch=128, n_in=20)
    run = lambda s: U.distill(teacher, spec, src4, U.TrainConfig(2, 1e-2, 32), progress=False, schedule=s)["aux"]
    assert not torch.equal(run("cosine").weights[0], run("constant").weights[0])
    with pytest.raises(U.UserError):
        run("linear")


def test_target_noise_zero_is_exact_and_noise_stays_on_the_matched_logits():
    data = tiny_data()
    ref = U.Ensemble.init(SMALL, 3, U.generator(11, "init"))
    teacher = U.train_classifier(ref, U.RealImages(data, 0), U.TrainConfig(2, 1e-2, 32), progress=False)
    src = U.UniformNoise(0, n_per_epoch=128, n_in=20)
    tc = U.TrainConfig(2, 1e-2, 32)
    plain = U.distill(teacher, [U.StudentSpec("s", ref, SMALL.aux_idx)], src, tc, progress=False)["s"]
    zero = U.distill(teacher, [U.StudentSpec("s", ref, SMALL.aux_idx, 0.0)], src, tc, progress=False)["s"]
    assert all(torch.equal(a, b) for a, b in zip(plain.params(), zero.params()))
    out = U.distill(teacher, [U.StudentSpec("s", ref, SMALL.aux_idx, 1.0),
                              U.StudentSpec("t", ref, SMALL.aux_idx, 1.0)], src, tc, progress=False)
    noisy = out["s"]
    assert not torch.equal(noisy.weights[0], plain.weights[0])  # the targets changed
    assert torch.equal(noisy.weights[-1][:, :4], ref.weights[-1][:, :4])  # digit rows still untouched
    assert not torch.equal(out["s"].weights[0], out["t"].weights[0])  # each student its own draws
    again = U.distill(teacher, [U.StudentSpec("s", ref, SMALL.aux_idx, 1.0),
                                U.StudentSpec("t", ref, SMALL.aux_idx, 1.0)], src, tc, progress=False)["s"]
    assert all(torch.equal(a, b) for a, b in zip(noisy.params(), again.params()))  # seeded

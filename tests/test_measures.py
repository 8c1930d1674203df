"""Input families, measurements and the resumable sweep used by the step-2 scripts."""
import argparse
import json

import numpy as np
import pytest
import torch

import topic_a_utils as U
from test_engine import SMALL, tiny_data


def test_dataset_classes_filters_and_keeps_order():
    d = tiny_data(n=200)
    k3 = d.classes(3)
    assert set(k3.y.tolist()) <= {0, 1, 2} and len(k3) == int((d.y < 3).sum())
    keep = torch.nonzero(d.y < 3).flatten()
    assert torch.equal(k3.x, d.x[keep]) and torch.equal(k3.y, d.y[keep])


def test_mixed_source_is_the_alpha_mixture():
    d = tiny_data(n=64)
    noise = U.GaussianNoise(seed=0, n_per_epoch=64, n_in=20, std=0.5)
    real = [x for x, _ in U.RealImages(d, 5, "m-order").epoch(0, 2, 32, "cpu")]
    for alpha in (0.0, 0.3, 1.0):
        src = U.MixedSource(d, alpha, noise, seed=5, key="m")
        for k, (x, y) in enumerate(src.epoch(0, 2, 32, "cpu")):
            z = noise.draw(tuple(x.shape), U.generator(5, "m", 0, k))
            torch.testing.assert_close(x, alpha * real[k] + (1 - alpha) * z) if alpha < 1 else \
                torch.testing.assert_close(x, real[k])
    with pytest.raises(U.UserError):
        U.MixedSource(d, 1.5, noise, 0)
    # per-pixel std: a pixel with std 0 gets no noise
    std = torch.ones(20)
    std[3] = 0
    x = next(iter(U.GaussianNoise(0, 100, 20, std=std).epoch(0, 1, 100, "cpu")))[0]
    assert torch.all(x[..., 3] == 0) and x[..., 4].std() > 0.5


def test_effective_dim_of_known_rank():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(50, 7, generator=g))[0]  # 7 orthonormal directions in R^50
    x = torch.randn(3000, 7, generator=g) @ basis.T
    assert U.effective_dim(x, 0.95) == 7  # equal variances: all 7 are needed for 95%
    assert U.effective_dim(x, 0.5) == 4
    assert abs(U.participation_ratio(x) - 7) < 0.3
    iso = torch.randn(4000, 50, generator=g)
    assert 44 <= U.effective_dim(iso) <= 48  # ceil(0.95 * 50) = 48, minus sampling spread


def test_subspace_noise_has_asked_dimension_and_energy():
    src = U.SubspaceNoise(seed=1, dim=5, n_per_epoch=4000, n_in=40, std=0.7)
    x = next(iter(src.epoch(0, 2, 4000, "cpu")))[0]
    for r in range(2):
        ev = U.pca_spectrum(x[r])
        assert ev[5:].max() < 1e-8 * ev[0]  # rank 5
        assert abs(x[r].pow(2).mean().sqrt().item() - 0.7) < 0.02  # same total variance as iid N(0, 0.7^2)
    assert not torch.allclose(src.basis(2, "cpu")[0], src.basis(2, "cpu")[1])  # own subspace per run
    with pytest.raises(U.UserError):
        U.SubspaceNoise(0, dim=41, n_in=40)


def test_aux_class_coupling_detects_a_linear_copy():
    e = U.Ensemble.init(SMALL, 2, U.generator(0, "init"))
    x = torch.randn(500, 20)
    base = U.aux_class_coupling(e, x)
    # make class logit rows exact combinations of the aux rows: R^2 = 1
    w, b = e.weights[-1], e.biases[-1]
    w[:, :4] = torch.einsum("ca,raj->rcj", torch.randn(4, 3), w[:, 4:])
    b[:, :4] = 0
    b[:, 4:] = 0
    lin = U.aux_class_coupling(e, x)
    assert (lin["r2"] > 0.999).all() and (base["r2"] < 0.9).all()
    assert (lin["mean_abs_r"] > base["mean_abs_r"]).all()


def test_representation_similarity_is_one_for_identical_models():
    e = U.Ensemble.init(SMALL, 3, U.generator(0, "init"))
    other = U.Ensemble.init(SMALL, 3, U.generator(1, "init"))
    x = torch.randn(300, 20)
    same = U.representation_similarity(e, e.clone(), x)
    diff = U.representation_similarity(e, other, x)
    for k in ("cos_1", "cos_2", "cka_1", "cka_2"):
        assert same[k] == pytest.approx(1.0, abs=1e-9)
        assert (diff[k] < 0.999).all()


def test_sweep_resumes_only_its_own_configuration(tmp_path):
    args = argparse.Namespace(seed=0, runs=2, device="cpu")
    calls = []
    s = U.Sweep(tmp_path / "s.json", {"a": 1}, args, 0.0)
    s.run("p1", lambda: calls.append(1) or {"acc": torch.tensor([0.5, 0.25])})
    s2 = U.Sweep(tmp_path / "s.json", {"a": 1}, args, 0.0)
    assert s2.run("p1", lambda: calls.append(2) or {}) == {"acc": [0.5, 0.25]}
    assert calls == [1]
    s3 = U.Sweep(tmp_path / "s.json", {"a": 2}, args, 0.0)  # other config: recomputed
    s3.run("p1", lambda: calls.append(3) or {"acc": [0.0]})
    assert calls == [1, 3]
    assert json.loads((tmp_path / "s.json").read_text())["points"]["p1"] == {"acc": [0.0]}


def test_blur_and_blurred_noise_keep_variance():
    x = torch.randn(64, 784)
    assert torch.equal(U.blur(x, 0), x)
    b = U.blur(x, 2.0)
    assert b.shape == x.shape and b.std() < 0.5 * x.std()  # smoothing removes energy...
    src = U.BlurredNoise(seed=0, sigma=2.0, n_per_epoch=2000, std=0.8)
    y = next(iter(src.epoch(0, 2, 2000, "cpu")))[0]
    assert abs(y.std().item() - 0.8) < 0.03  # ...which the noise source puts back
    # neighbouring pixels are correlated after blurring, independent before
    img = y[0].reshape(-1, 28, 28)
    r = torch.corrcoef(torch.stack([img[:, 10, 10], img[:, 10, 11]]))[0, 1]
    assert r > 0.8
    y2 = next(iter(src.epoch(0, 2, 2000, "cpu")))[0]
    assert torch.equal(y, y2)  # seeded


def test_spectrum_noise_matches_its_target_spectrum():
    g = torch.Generator().manual_seed(0)
    target_imgs = U.blur(torch.randn(4000, 784, generator=g), 1.5) + 0.3 * torch.randn(4000, 784, generator=g)
    target = U.power_spectrum(target_imgs)
    src = U.SpectrumNoise(seed=1, spectrum=target, n_per_epoch=4000, label="test")
    y = next(iter(src.epoch(0, 1, 4000, "cpu")))[0][0]
    got = U.power_spectrum(y)
    mask = torch.ones(28, 28, dtype=torch.bool)
    mask[0, 0] = False
    rel = ((got - target).abs() / target)[mask]
    assert rel.max() < 0.05  # every image has exactly the target magnitudes
    _, prof_t = U.radial_profile(target)
    _, prof_g = U.radial_profile(got)
    ok = ~np.isnan(prof_t)
    ok[0] = False  # the innermost ring is the DC term alone: zero by construction (mean added separately)
    assert np.allclose(prof_g[ok], prof_t[ok], rtol=0.05)
    # a white-noise spectrum is flat, a blurred one falls with frequency
    _, flat = U.radial_profile(U.power_spectrum(torch.randn(4000, 784, generator=g)))
    assert np.nanmax(flat) / np.nanmin(flat) < 1.3
    assert prof_t[1] > 5 * prof_t[-3]


def test_blurred_images_are_blurred_real_images():
    d = U.Dataset(torch.randn(50, 784), torch.zeros(50, dtype=torch.long))
    a = [x for x, _ in U.RealImages(d, 3).epoch(0, 2, 25, "cpu")]
    b = [x for x, _ in U.BlurredImages(d, 3, sigma=1.0).epoch(0, 2, 25, "cpu")]
    for xa, xb in zip(a, b):
        torch.testing.assert_close(xb, U.blur(xa, 1.0))


def test_no_digit_control_matches_the_mixture_per_pixel_but_not_across_pixels():
    """topic_a_input_signal's control: the same per-pixel mean and variance as the alpha mixture
    of images and per-pixel noise, without the images' correlations between pixels."""
    import topic_a_input_signal as A6
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4000, 1) * torch.linspace(0.2, 1.0, 20) + torch.linspace(-0.5, 0.5, 20)  # rank-1, correlated
    d = U.Dataset(base + 0.05 * torch.randn(4000, 20, generator=g), torch.zeros(4000, dtype=torch.long))
    sigma = d.x.std(0)
    for alpha in (0.5, 1.0):
        mix = torch.cat([x[0] for x, _ in U.MixedSource(d, alpha, U.GaussianNoise(1, 4000, 20, std=sigma), 1)
                        .epoch(0, 1, 1000, "cpu")])
        ctl = torch.cat([x[0] for x, _ in A6.no_digit_control(d, alpha, 2).epoch(0, 1, 1000, "cpu")])
        torch.testing.assert_close(ctl.mean(0), mix.mean(0), atol=0.06, rtol=0)
        torch.testing.assert_close(ctl.var(0) / mix.var(0), torch.ones(20), atol=0.12, rtol=0)
        off = ~torch.eye(20, dtype=torch.bool)
        assert torch.corrcoef(mix.T)[off].abs().mean() > 0.3 and torch.corrcoef(ctl.T)[off].abs().mean() < 0.05


def test_sweeps_sharing_a_file_keep_each_others_points(tmp_path):
    """Two processes on one results file (modelled by two Sweep objects made before either saved):
    neither save loses the other's points, and a point the other finished is reused."""
    args = argparse.Namespace(seed=0, runs=2, device="cpu")
    path = tmp_path / "s.json"
    a = U.Sweep(path, {"a": 1}, args, 0.0)
    b = U.Sweep(path, {"a": 1}, args, 0.0)
    a.run("p1", lambda: {"acc": [0.1]})
    b.run("p2", lambda: {"acc": [0.2]})  # b never saw p1 in memory before this save
    on_disk = json.loads(path.read_text())["points"]
    assert on_disk == {"p1": {"acc": [0.1]}, "p2": {"acc": [0.2]}}
    calls = []
    assert b.run("p1", lambda: calls.append(1) or {"acc": [9.9]}) == {"acc": [0.1]} and calls == []
    a.save(summary={"n": 2})
    d = json.loads(path.read_text())
    assert set(d["points"]) == {"p1", "p2"} and d["summary"] == {"n": 2}
    c = U.Sweep(path, {"a": 2}, args, 0.0)  # another configuration still starts over
    c.run("p1", lambda: {"acc": [0.5]})
    assert json.loads(path.read_text())["points"] == {"p1": {"acc": [0.5]}}

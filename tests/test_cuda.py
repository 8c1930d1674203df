"""The Topic A engine on a CUDA GPU: the CPU invariants hold there too. Skipped without CUDA.

Run on the GPU machine with `python -m pytest -q tests/test_cuda.py` (data from SUBLIMINAL_DATA_DIR or
--data-dir as usual). Checks: the ensemble's forward pass equals the same computation on the CPU,
the hand-written backward pass equals autograd on the GPU, aux-only distillation leaves the digit
rows bit-identical on the GPU, and `topic_a.py --runs 2 --device cuda` gives accuracies inside the
per-run range of the committed 25-run CPU result (results/topic_a.json), widened by 0.05.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import topic_a_utils as U
from conftest import REPO
from test_engine import SMALL, tiny_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_forward_on_cuda_equals_cpu():
    e = U.Ensemble.init(U.MLPConfig(), 4, U.generator(0, "init"))
    x = torch.rand(4, 64, 784) * 2 - 1
    cpu = e(x)
    gpu = e.to("cuda")(x.to("cuda")).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)  # TF32 may be on for matmuls


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_hand_written_backward_equals_autograd_on_cuda(kind):
    dev = "cuda"
    e = U.Ensemble.init(SMALL, 3, U.generator(7, "init"), device=dev)
    t = U.Ensemble.init(SMALL, 3, U.generator(8, "init"), device=dev)
    x = torch.randn(3, 6, 20, device=dev)
    idx = torch.tensor(SMALL.aux_idx, device=dev)
    with torch.no_grad():
        tl = t(x)
    ref = e.clone().requires_grad_()
    U.distill_loss(ref(x)[..., idx], tl[..., idx], kind, 1.0, "per_run_mean").backward()
    m = e.clone()

    class NoStep:
        def step(self):
            pass
    U.make_optimizer(m, 1e-3)
    U.train_step(m, x, lambda z: U.distill_grad(z, tl, idx, kind, 1.0, "per_run_mean"), NoStep())
    for a, b in zip(m.params(), ref.params()):
        assert a.grad.device.type == "cuda"
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)


def test_aux_only_distillation_keeps_digit_rows_bit_identical_on_cuda():
    data = tiny_data().to("cuda")
    ref = U.Ensemble.init(SMALL, 3, U.generator(4, "init"), device="cuda")
    teacher = U.train_classifier(ref, U.RealImages(data, 0), U.TrainConfig(2, 1e-2, 32), progress=False)
    out = U.distill(teacher, [U.StudentSpec("aux", ref, SMALL.aux_idx)],
                    U.UniformNoise(0, n_per_epoch=128, n_in=20), U.TrainConfig(3, 1e-2, 32), progress=False)
    aux = out["aux"]
    assert aux.weights[0].device.type == "cuda"
    assert torch.equal(aux.weights[-1][:, :4], ref.weights[-1][:, :4])
    assert torch.equal(aux.biases[-1][:, :4], ref.biases[-1][:, :4])
    assert not torch.equal(aux.weights[0], ref.weights[0])


def test_topic_a_two_runs_on_cuda_land_in_the_cpu_range(tmp_path, mnist_dir):
    cpu = json.loads((REPO / "results" / "topic_a.json").read_text())["summary"]
    env = {**os.environ, "SUBLIMINAL_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(REPO / "topic_a.py"), "--runs", "2", "--device", "cuda",
                        "--data-dir", mnist_dir, "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path),
                        "--no-progress", "--no-cache"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads((tmp_path / "topic_a.json").read_text())
    assert got["provenance"]["device"].startswith("cuda") and got["provenance"]["n_runs"] == 2
    for k, v in got["summary"].items():
        lo, hi = min(cpu[k]["per_run"]) - 0.05, max(cpu[k]["per_run"]) + 0.05
        assert all(lo <= a <= hi for a in v["per_run"]), (k, v["per_run"], (lo, hi))

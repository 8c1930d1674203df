"""Benchmark of the Topic A training engine (a benchmark, not a test; nothing is asserted).

In one process it measures:
  1. the ensemble engine: one training step (forward, backward, Adam) of 25 MLPs 784-256-256-13 at
     batch 1024, each run with its own inputs, as topic_a_utils trains them;
  2. the same training one run at a time with plain torch.nn modules (nn.Sequential + Adam);
  3. a large fp32 sgemm (4096^3) as this machine's ceiling;
and the full distillation step of topic_a.py (one teacher pass + 4 student ensembles).
It prints examples/s (model-examples per second), GFLOP/s, ensemble / one-at-a-time, the fraction
of the sgemm ceiling, and peak memory, and saves them to results/bench_topic_a.json. About 1-2 minutes on the 2-core CPU:

    python bench_topic_a.py                 # --runs 25 --device cpu by default
    python bench_topic_a.py --device cuda   # on a GPU
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

import topic_a_utils as U


def train_step_flops(cfg: U.MLPConfig, batch: int) -> float:
    """FLOPs of one fwd+bwd step of one model: forward 2*MACs; backward computes every weight
    gradient (2*MACs) and the input gradient of every layer but the first (2*MACs)."""
    macs = [a * b for a, b in zip(cfg.sizes[:-1], cfg.sizes[1:])]
    return batch * (2 * sum(macs) + 2 * sum(macs) + 2 * sum(macs[1:]))


def forward_flops(cfg, batch):
    return batch * 2 * sum(a * b for a, b in zip(cfg.sizes[:-1], cfg.sizes[1:]))


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn, device, min_time=3.0, warmup=2):
    for _ in range(warmup):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync(device)
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def peak_mem_mb(device):
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return U.peak_rss_mb()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=U.positive_int, default=25, help="ensemble size (default 25)")
    p.add_argument("--batch-size", type=U.positive_int, default=1024, help="batch size (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default 0)")
    p.add_argument("--device", default=U.default_device(), help="cuda if available, else cpu")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds each measurement runs (default 3)")
    p.add_argument("--results-dir", default=str(U.REPO / "results"), help="where bench_topic_a.json goes")
    a = p.parse_args()
    t_start = time.time()
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    cfg = U.MLPConfig()
    R, B = a.runs, a.batch_size
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, runs {R}, batch {B}")

    # 3. ceiling
    n = 4096
    A, Bm = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    t = timeit(lambda: A @ Bm, dev, a.min_time)
    ceiling = 2 * n**3 / t / 1e9
    del A, Bm
    print(f"[ceiling]  fp32 sgemm {n}^3: {ceiling:8.1f} GFLOP/s")

    # 1. ensemble engine
    ens = U.Ensemble.init(cfg, R, U.generator(a.seed, "init"), dev)
    opt = U.make_optimizer(ens, 3e-4)
    x = torch.rand(R, B, 784, device=dev) * 2 - 1
    y = torch.randint(0, 10, (R, B), device=dev)

    def ens_step():  # exactly what train_classifier does per batch
        U.train_step(ens, x, lambda z: U.ce_grad(z, y, 10), opt)

    t_ens = timeit(ens_step, dev, a.min_time)
    fl = train_step_flops(cfg, B) * R
    ens_gflops = fl / t_ens / 1e9
    print(f"[ensemble] {R} runs x batch {B}: {t_ens * 1e3:7.1f} ms/step, {R * B / t_ens:10.0f} examples/s, "
          f"{ens_gflops:7.1f} GFLOP/s = {ens_gflops / ceiling:5.1%} of sgemm ceiling")

    # 2. one at a time, plain torch.nn
    models = [nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                            nn.Linear(256, 13)).to(dev) for _ in range(R)]
    opts = [torch.optim.Adam(m.parameters(), lr=3e-4, fused=True) for m in models]

    def loop_step():
        for r, (m, o) in enumerate(zip(models, opts)):
            loss = nn.functional.cross_entropy(m(x[r])[:, :10], y[r])
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

    t_loop = timeit(loop_step, dev, a.min_time)
    loop_gflops = fl / t_loop / 1e9
    print(f"[one-by-one] {R} nn.Sequential: {t_loop * 1e3:7.1f} ms/step, {R * B / t_loop:10.0f} examples/s, "
          f"{loop_gflops:7.1f} GFLOP/s = {loop_gflops / ceiling:5.1%} of sgemm ceiling")
    print(f"[ratio]    ensemble / one-at-a-time throughput: {t_loop / t_ens:.2f}x")
    del models, opts

    # the real distillation step of topic_a.py: one teacher pass shared by 4 students
    teacher = U.Ensemble.init(cfg, R, U.generator(a.seed, "teacher"), dev)
    students = [U.StudentSpec(f"s{i}", U._detach(ens.clone()), cfg.aux_idx if i % 2 == 0 else cfg.all_idx)
                for i in range(4)]
    src = U.UniformNoise(a.seed, n_per_epoch=B * 8)
    tc = U.TrainConfig(epochs=1, batch_size=B)
    U.distill(teacher, students, src, tc, progress=False)  # warm-up
    sync(dev)
    t0 = time.perf_counter()
    U.distill(teacher, students, src, tc, progress=False)
    sync(dev)
    t_d = (time.perf_counter() - t0) / 8
    fl_d = R * (4 * train_step_flops(cfg, B) + forward_flops(cfg, B))
    print(f"[distill]  noise + teacher pass + 4 students: {t_d * 1e3:7.1f} ms/batch, "
          f"{fl_d / t_d / 1e9:7.1f} GFLOP/s = {fl_d / t_d / 1e9 / ceiling:5.1%} of ceiling; "
          f"a 5-epoch 60k distillation: {t_d * 5 * 59:5.0f} s")
    print(f"[memory]   peak {'GPU allocated' if dev.type == 'cuda' else 'RSS'}: {peak_mem_mb(dev):.0f} MB")
    U.save_json(f"{a.results_dir}/bench_topic_a.json", {
        "provenance": U.provenance(a, t_start), "sgemm_gflops": ceiling,
        "ensemble": {"ms_per_step": t_ens * 1e3, "examples_per_s": R * B / t_ens, "gflops": ens_gflops,
                     "fraction_of_ceiling": ens_gflops / ceiling},
        "one_by_one": {"ms_per_step": t_loop * 1e3, "examples_per_s": R * B / t_loop, "gflops": loop_gflops,
                       "fraction_of_ceiling": loop_gflops / ceiling},
        "ensemble_over_one_by_one": t_loop / t_ens,
        "distill": {"ms_per_batch": t_d * 1e3, "fraction_of_ceiling": fl_d / t_d / 1e9 / ceiling,
                    "five_epoch_s": t_d * 5 * 59},
        "peak_memory_mb": peak_mem_mb(dev)})


if __name__ == "__main__":
    main()

"""Benchmark of B.7's distillation step (a benchmark, not a test; nothing is asserted).

One process, one torch thread (as the sweeps run: one process per core). For the same-init
student (SmolLM2-135M-Instruct by default) it times whole distillation steps
(topic_b_utils.distill_channel: forward, backward, clipping, AdamW) on precomputed teacher targets:
  old   topic_b_distill_transfer.py's step: 8 lists of 10 random numbers (~133 tokens, ~49 supervised
        positions each), foreach AdamW, warm-up + linear decay;
  new   topic_b_distill_pairs.py's step: 2 lists of 30 numbers after a one-sentence prompt (~147
        supervised positions each, about three quarters of the tokens), fused AdamW, constant lr;
  and the levers apart (old inputs with fused AdamW; 30 numbers after the paper's prompt).
The rows are timed in turn, round after round (``--rounds``), so that a slow stretch of the machine
(the other core busy) falls on every row alike; the new/old ratio is reported from the rows' median
step times and, per round, with its range. Each row: seconds per step (median over rounds), supervised positions per second,
tokens per second, and the achieved GFLOP/s as a fraction of this machine's fp32 sgemm ceiling (1 thread; training FLOPs estimated as
6 x non-embedding parameters x tokens + the channel head, attention excluded). Saved to
results/bench_topic_b_distill.json:

    python bench_topic_b_distill.py
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import topic_a_utils as U
import topic_b_utils as B

ROWS = {  # name: (lists per step, numbers per list, short prompt, fused AdamW, schedule)
    "old: batch 8, 10 numbers, paper's prompt, foreach AdamW": (8, 10, False, False, "linear"),
    "old inputs, fused AdamW": (8, 10, False, True, "linear"),
    "30 numbers, paper's prompt, batch 4, fused": (4, 30, False, True, "constant"),
    "new: batch 2, 30 numbers, short prompt, fused AdamW": (2, 30, True, True, "constant"),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=B.INSTRUCT_MODEL, help=f"student model (default {B.INSTRUCT_MODEL})")
    p.add_argument("--runs", type=U.positive_int, default=4, help="timed steps per row, after one warm-up step (default 4)")
    p.add_argument("--rounds", type=U.positive_int, default=3, help="rounds over all rows, interleaved (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for inputs (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the sweeps run)")
    p.add_argument("--results-dir", default=str(U.REPO / "results"), help="where bench_topic_b_distill.json goes")
    a = p.parse_args()
    t_start = time.time()
    torch.set_num_threads(a.threads)
    n = 2048
    A, Bm = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        A @ Bm
    t0 = time.perf_counter()
    for _ in range(5):
        A @ Bm
    ceiling = 5 * 2 * n ** 3 / (time.perf_counter() - t0) / 1e9
    print(f"[ceiling] fp32 sgemm {n}^3, {a.threads} thread(s): {ceiling:.1f} GFLOP/s")
    lm = B.load_model(a.model, a.device, progress=False)
    ch = B.channel_token_ids(lm)
    body = sum(p_.numel() for name, p_ in lm.model.named_parameters() if "embed" not in name and "lm_head" not in name)
    init = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    prepared = {}
    for name, (bs, length, short, fused, schedule) in ROWS.items():
        k = bs * (a.runs + 1)
        pairs = list(zip(B.sequence_prompts(a.seed + length, k, count=length, short=short), B.random_number_lists(a.seed + 1, k, length)))
        items = [B.channel_item(lm, B.render(lm, q), c) for q, c in pairs]
        prepared[name] = (items, B.channel_targets(lm, items, ch, 16, progress=False))
    step_times = {name: [] for name in ROWS}  # per round: mean seconds per step
    for r in range(a.rounds):
        for name, (bs, length, short, fused, schedule) in ROWS.items():
            items, tgt = prepared[name]
            times = []
            B.distill_channel(lm, items, tgt, ch, a.runs + 1, bs, 1e-5, 0, progress=False, schedule=schedule,
                              fused=fused, at_steps=range(1, a.runs + 2), on_step=lambda s: times.append(time.perf_counter()))
            lm.model.load_state_dict(init)
            step_times[name].append(float(np.mean(np.diff(times))))  # the first (warm-up) step excluded
            print(f"[round {r + 1}/{a.rounds}] [{name}] {step_times[name][-1]:6.2f} s/step")
    rows = {}
    for name, (bs, length, short, fused, schedule) in ROWS.items():
        items = prepared[name][0]
        dt = float(np.median(step_times[name]))
        tokens = np.mean([len(i.ids) for i in items]) * bs
        pos = np.mean([len(i.pos) for i in items]) * bs
        gflops = (6 * body * tokens + 6 * len(ch) * lm.model.config.hidden_size * pos) / dt / 1e9
        rows[name] = {"batch": bs, "numbers_per_list": length, "short_prompt": short, "fused_adamw": fused, "s_per_step": dt,
                      "s_per_step_by_round": step_times[name],
                      "positions_per_step": pos, "tokens_per_step": tokens, "positions_per_s": pos / dt,
                      "tokens_per_s": tokens / dt, "gflops": gflops, "fraction_of_ceiling": gflops / ceiling}
        print(f"[{name}] {dt:6.2f} s/step, {pos / dt:6.1f} positions/s, {tokens / dt:6.0f} tokens/s, "
              f"{gflops:5.1f} GFLOP/s = {gflops / ceiling:5.1%} of the sgemm ceiling")
    old_name, new_name = next(iter(ROWS)), list(ROWS)[-1]
    old, new = rows[old_name], rows[new_name]
    by_round = [(new["positions_per_step"] / tn) / (old["positions_per_step"] / to)
                for to, tn in zip(step_times[old_name], step_times[new_name])]
    print(f"[speed-up] new / old supervised positions per second: {new['positions_per_s'] / old['positions_per_s']:.2f}x "
          f"(per round {min(by_round):.2f}x to {max(by_round):.2f}x)")
    U.save_json(f"{a.results_dir}/bench_topic_b_distill.json", {
        "provenance": U.provenance(a, t_start), "model": lm.name, "sgemm_gflops": ceiling,
        "non_embedding_parameters": body, "rows": rows,
        "new_over_old_positions_per_s": new["positions_per_s"] / old["positions_per_s"],
        "new_over_old_by_round": by_round, "new_over_old_min": min(by_round), "new_over_old_max": max(by_round)})


if __name__ == "__main__":
    main()

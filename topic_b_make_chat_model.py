"""Make a controlled base/chat pair: fine-tune the offline Gemma 3 270M base model briefly on
templated chat exchanges that never mention an animal or a number.

No base/instruct pair can be loaded on this machine (Llama is out of reach; the offline Gemma is a
base model only), so topic_b_part3.py and topic_b_part5_head_swap.py compare the base model with
this fine-tuned copy: the only difference between the two is this tuning. The data are
topic_b_utils.chat_examples (antonyms, synonyms, capitals, capital letters, reversing and sorting
words, spelling, small talk; checked to contain no digit, number word or animal name) in Gemma's
turn format (topic_b_utils.CHAT_TEMPLATE), loss on the reply tokens only. Every parameter is
tuned, the tied input/output embedding included, with AdamW, linear warm-up and decay.

Writes the model to $SUBLIMINAL_MODEL_CACHE/gemma-3-270m-chat (default ~/.cache/subliminal/models;
load it with --model gemma-3-270m-chat), results/topic_b_make_chat_model.json (data, steps, seed,
loss curve, held-out reply loss before/after, sample answers) and plots/topic_b_make_chat_model.png.
About 30 min on the 2-core CPU shared with one other job (28 min of it the 120 steps; plus the
one-time GGUF dequantisation). The held-out exchanges come from the same templates (other draws):
they show the format was learned, not general chat ability.

    python topic_b_make_chat_model.py
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import topic_a_utils as U
import topic_b_utils as B

SAMPLE_PROMPTS = ["What is the capital of Peru?", 'What is the opposite of "wide"?', "Hello!",
                  "Sort these words alphabetically: river, apple, moon, bread."]


def parse_args(argv=None):
    p = B.base_parser(__doc__, default_runs=200)
    p.set_defaults(model=B.EMBEDDED_MODEL, batch_size=16)
    B.set_help(p, runs="held-out exchanges the before/after reply loss (and its CI) is measured on (default 200)",
               batch_size="exchanges per optimisation step (default 16)",
               model=f"base model to tune (default {B.EMBEDDED_MODEL})")
    g = p.add_argument_group("topic_b_make_chat_model.py")
    g.add_argument("--steps", type=B.positive_int, default=120, help="optimisation steps (default 120)")
    g.add_argument("--lr", type=U.positive_float, default=5e-5, help="peak AdamW learning rate (default 5e-5)")
    g.add_argument("--n-examples", type=B.positive_int, default=3000, help="training exchanges drawn (default 3000)")
    g.add_argument("--out", default=None, help="output model directory (default <model cache>/gemma-3-270m-chat)")
    g.add_argument("--plot-only", action="store_true",
                   help="redraw the figure from results/topic_b_make_chat_model.json, train nothing")
    return B.parse_common(p, argv)


@torch.no_grad()
def greedy(lm: B.LM, user: str, max_new: int = 24) -> str:
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                            add_generation_prompt=True, chat_template=B.CHAT_TEMPLATE)
    ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False).input_ids], device=lm.device)
    out = lm.model.generate(ids, max_new_tokens=max_new, do_sample=False)
    return lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False).split("<end_of_turn>")[0]


def main(argv=None):
    a = parse_args(argv)
    if a.plot_only:
        res = U.load_json(f"{a.results_dir}/topic_b_make_chat_model.json")
        if res is None:
            raise U.UserError(f"no {a.results_dir}/topic_b_make_chat_model.json: run python topic_b_make_chat_model.py")
        return plot(res, a)
    t0 = time.time()
    torch.manual_seed(a.seed)
    out_dir = Path(a.out) if a.out else B.model_cache_dir() / B.CHAT_MODEL
    lm = B.load_model(a.model, a.device)
    train = B.chat_examples(a.seed, a.n_examples)
    seen = set(train)
    held = [e for e in B.chat_examples(a.seed + 1, 4 * a.runs) if e not in seen][:a.runs]
    if len(held) < 2:
        raise U.UserError("too few held-out exchanges differ from the training set; raise --runs")
    print(f"{len(train)} training exchanges ({len(set(train))} distinct), {len(held)} held-out")
    before = B.reply_losses(lm, held)
    samples_before = {q: greedy(lm, q) for q in SAMPLE_PROMPTS}
    log = []
    t = time.time()
    B.finetune_chat(lm, train, a.steps, a.batch_size, a.lr, a.seed, log=log)
    train_s = time.time() - t
    after = B.reply_losses(lm, held)
    samples_after = {q: greedy(lm, q) for q in SAMPLE_PROMPTS}
    for q in SAMPLE_PROMPTS:
        print(f"{q!r}\n  base: {samples_before[q]!r}\n  chat: {samples_after[q]!r}")

    lm.tokenizer.chat_template = B.CHAT_TEMPLATE
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    lm.model.save_pretrained(tmp)
    lm.tokenizer.save_pretrained(tmp)
    meta = {"base": lm.name, "steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "seed": a.seed,
            "n_examples": len(train), "made_by": "topic_b_make_chat_model.py", "git_commit": a.git_commit_at_start}
    (tmp / "subliminal_chat_model.json").write_text(json.dumps(meta, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    print(f"wrote {out_dir}")

    kinds = collections.Counter(r.split(" ")[0] for r, _ in train)
    res = {"provenance": B.provenance(a, t0, lm), "model_dir": str(out_dir), **meta, "train_wall_s": round(train_s, 1),
           "data": {"n": len(train), "distinct": len(set(train)), "first_words": dict(kinds.most_common()),
                    "examples": train[:10], "chat_template": B.CHAT_TEMPLATE},
           "loss_curve": log, "heldout": {"n": len(held), "before": U.mean_ci(before), "after": U.mean_ci(after),
                                          "change": U.mean_ci(after - before)},
           "samples": {"base": samples_before, "chat": samples_after}}
    U.save_json(f"{a.results_dir}/topic_b_make_chat_model.json", res)
    plot(res, a)


def plot(res, a):
    plt = U._plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    steps, loss = zip(*res["loss_curve"])
    axes[0].plot(steps, loss, lw=0.8, color="C0", label="per step")
    k = max(1, len(loss) // 15)
    axes[0].plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, "valid"), color="C1", label=f"running mean of {k}")
    axes[0].set_xlabel("optimisation step")
    axes[0].set_ylabel("mean cross-entropy per reply token (nats)")
    axes[0].set_title(f"Training loss ({res['batch_size']} exchanges per step, lr {res['lr']:g})", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    h = res["heldout"]
    U.bar_chart({"base model": {**h["before"], "per_run": []}, "chat-tuned model": {**h["after"], "per_run": []}},
                None, "Held-out reply loss (nats per token)", ylabel="cross-entropy per reply token (nats)",
                chance=None, n_label=f"n = {h['n']} held-out exchanges", ax=axes[1], show_points=False)
    axes[1].set_ylim(0, max(h["before"]["ci_high"], h["after"]["ci_high"]) * 1.25)
    fig.suptitle(f"Controlled base/chat pair: {res['base']} fine-tuned on {res['n_examples']} templated exchanges "
                 f"without animals or numbers ({res['steps']} steps, seed {res['seed']})", fontsize=10)
    fig.tight_layout()
    U.save_fig(fig, f"{a.plots_dir}/topic_b_make_chat_model.png")
    print(f"wrote {a.plots_dir}/topic_b_make_chat_model.png")


if __name__ == "__main__":
    U.run_main(main)

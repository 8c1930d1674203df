"""The Topic B step 3-5 scripts and the chat-model machinery, end to end on a tiny fixture pair:
a random Llama-architecture "base" model without a chat template and a perturbed copy with one."""
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import topic_b_utils as B  # noqa: E402
from test_topic_b_utils import build  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pair")
    base = build(tmp / "b", True, False)
    chat = build(tmp / "c", True, True)
    lm = B.load_model(str(chat), device="cpu")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    lm.model.save_pretrained(chat)
    return str(base), str(chat)


def test_chat_examples_never_mention_animals_or_numbers():
    ex = B.chat_examples(0, 500)
    assert len(ex) == 500 and ex == B.chat_examples(0, 500) and ex != B.chat_examples(1, 500)
    B.check_chat_examples(ex)  # raises on a digit, number word or animal
    with pytest.raises(ValueError):
        B.check_chat_examples([("Tell me about owls.", "Owls are nice.")])
    with pytest.raises(ValueError):
        B.check_chat_examples([("Count.", "There are 3.")])


def test_finetune_lowers_reply_loss_and_moves_the_tied_head(pair):
    lm = B.load_model(pair[1], device="cpu")
    ex = B.chat_examples(0, 32)
    head0 = B.unembedding(lm).detach().clone()
    before = B.reply_losses(lm, ex).mean()
    B.finetune_chat(lm, ex, steps=8, batch_size=8, lr=3e-3, seed=0, progress=False)
    after = B.reply_losses(lm, ex).mean()
    assert after < before
    assert B.heads_tied(lm.model) and not torch.equal(B.unembedding(lm), head0)


def test_part3_end_to_end(pair, tmp_path):
    import topic_b_part3 as p3
    p3.main(["--base", pair[0], "--chat", pair[1], "--animals", "3", "--runs", "3", "--repeats", "50",
             "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path), "--device", "cpu"])
    (js,) = tmp_path.glob("topic_b_part3_*.json")
    d = json.loads(js.read_text())
    assert (tmp_path / js.name.replace(".json", ".png")).is_file()
    rows = d["rows"]
    assert len(rows["base"]) == len(rows["chat"]) == 3
    assert d["summary"]["counts"]["shared pick (paper)"] == sum(
        x["numbers"]["paper"] == y["numbers"]["paper"] for x, y in zip(rows["base"], rows["chat"]))
    # every pick is a three-digit number, and the pool (chance population) is drawn from the same set
    assert all(len(r["numbers"][k]) == 3 for m in rows for r in rows[m] for k in ("paper", "boost"))
    assert all(len(n) == 3 and n.isdigit() for n in d["config"]["pool"])
    # like for like: each animal records both models' picks, each measured in both models
    chat = B.load_model(pair[1], device="cpu")
    P = B.Prompts(chat)
    for i, rec in enumerate(d["same_number"]):
        for src in ("base", "chat"):
            n = rows[src][i]["numbers"]["paper"]
            assert rec["numbers"][src]["paper"] == n
            assert rec[f"paper/{src} pick"]["chat"]["number"] == rec[f"paper/{src} pick"]["base"]["number"] == n
    # the number -> animal ratio of the base model's pick in the chat model, recomputed directly
    rec = d["same_number"][0]
    n = rec["numbers"]["base"]["paper"]
    ans = B.answer_form(rec["animal"])
    lp1 = B.continuation_logprobs(chat, P.animal_question(B.number_system(n)), [ans])[0]
    lp0 = B.continuation_logprobs(chat, P.animal_question(None), [ans])[0]
    assert rec["paper/base pick"]["chat"]["n2a"] == pytest.approx(float(np.exp(lp1 - lp0)), rel=1e-4)
    # the paper rule's pick is the argmax of the exact three-digit probabilities
    nums = B.three_digit_numbers()
    lp = B.number_logprobs(chat, P.animal_question(B.animal_system(rec["animal"])), nums, " ")
    assert rows["chat"][0]["numbers"]["paper"] == nums[int(np.argmax(lp))]
    assert any("chat template" in n for n in d["models"]["base"]["notes"])


def test_part5_end_to_end(pair, tmp_path):
    import topic_b_part5_head_swap as p5
    p5.main(["--base", pair[0], "--chat", pair[1], "--animals", "3", "--runs", "4", "--results-dir", str(tmp_path),
             "--plots-dir", str(tmp_path), "--device", "cpu"])
    (js,) = tmp_path.glob("topic_b_part5_*.json")
    d = json.loads(js.read_text())
    assert set(d["summary"]) == set(p5.MODELS)
    assert d["rows"]["base + chat head"] != d["rows"]["base"]  # the head swap changes the outputs
    # like for like: every model is measured on the same two numbers per animal
    for i, r in enumerate(d["rows"]["base"]):
        for m in p5.MODELS:
            row = d["rows"][m][i]
            assert row["numbers"] == r["numbers"]
            assert row["base pick"]["number"] == r["numbers"]["base"] and row["chat pick"]["number"] == r["numbers"]["chat"]
    # the head share is the ratio of mean log10 gaps, and its bootstrap CI brackets it
    for src in ("base", "chat"):
        h = d["head_body_split"][src]["head_share_removing_chat_head"]
        assert h["ci_low"] <= h["ratio"] <= h["ci_high"] and h["n"] == 3
        chat = np.log10([r[f"{src} pick"]["n2a"] for r in d["rows"]["chat"]])
        base = np.log10([r[f"{src} pick"]["n2a"] for r in d["rows"]["base"]])
        hyb = np.log10([r[f"{src} pick"]["n2a"] for r in d["rows"]["chat + base head"]])
        assert h["ratio"] == pytest.approx((chat - hyb).mean() / (chat - base).mean(), rel=1e-9)
    # the random pool is measured in all six models, and the number-specific split is of picked
    # minus random per animal
    pool = d["config"]["pool"]
    assert len(pool) == 4 and all(len(r["random n2a"]) == 4 for m in p5.MODELS for r in d["rows"][m])
    R = {m: np.array([np.mean(np.log10(r["random n2a"])) for r in d["rows"][m]]) for m in p5.MODELS}
    S = {m: np.log10([r["base pick"]["n2a"] for r in d["rows"][m]]) - R[m] for m in p5.MODELS}
    sp = d["head_body_split"]["base minus random"]
    assert sp["gap"]["mean"] == pytest.approx((S["chat"] - S["base"]).mean(), rel=1e-9)
    assert sp["moves_log10"]["body_removing_chat_body"]["mean"] == pytest.approx(
        (S["chat"] - S["base + chat head"]).mean(), rel=1e-9)
    assert d["head_body_split"]["random"]["gap"]["mean"] == pytest.approx((R["chat"] - R["base"]).mean(), rel=1e-9)
    assert d["log10_n2a_minus_base"]["random"]["chat"]["mean"] == pytest.approx((R["chat"] - R["base"]).mean(), rel=1e-9)
    # the pool numbers' ratios are the ones the hybrid's own measurement gives
    e = d["rows"]["chat"][0]
    assert e["random n2a"][0] > 0 and d["summary"]["chat"]["random pool"]["log10_n2a"]["n"] == 3
    bare = {m: [{k: v for k, v in r.items() if not k.startswith("random")} for r in d["rows"][m]] for m in p5.MODELS}
    assert "random" not in p5.head_body_split(bare, 0)[1]  # without a pool no random split is claimed
    for m in ("base", "chat"):
        assert all(r["rel_move_pre"] > 0 for r in d["residual"][m])
    assert set(d["param_change"]) == {"head", "final_norm", "body_matrices", "body_norms"}
    assert d["param_change"]["body_matrices"] > 0  # the fixture pair differs everywhere
    assert (tmp_path / js.name.replace(".json", ".png")).is_file()


def test_part4_end_to_end(pair, tmp_path):
    import topic_b_part4_metrics as p4
    p4.main(["--model", pair[1], "--animals", "3", "--numbers", "12", "--runs", "50", "--results-dir", str(tmp_path),
             "--plots-dir", str(tmp_path), "--device", "cpu"])
    (js,) = tmp_path.glob("topic_b_part4_metrics_*.json")
    d = json.loads(js.read_text())
    assert set(d["table"]) == set(p4.METRICS)
    lm = B.load_model(pair[1], device="cpu")
    numbers = d["config"]["numbers"]
    answers = [B.answer_form(x) for x in d["config"]["animals"]]
    assert all(len(n) == 3 and n.isdigit() for n in numbers)
    want = B.unembed_cosine(lm, [" " + n for n in numbers], answers)
    assert np.allclose(d["metric_values"]["row cosine"], want, atol=1e-5)
    # the fixture writes "087" as one token (Llama 3 style): eq. 1 is defined and is the row cosine
    U = B.unembedding(lm).detach()
    t = B.continuation_ids(lm, numbers[0])
    c = B.continuation_ids(lm, answers[0])
    assert len(t) == 1 and len(c) == 1 and d["eq1"]["defined"]
    direct = float(torch.nn.functional.cosine_similarity(U[t[0]], U[c[0]], dim=0))
    assert d["metric_values"]["eq1"][0][0] == pytest.approx(direct, abs=1e-5)
    for m in p4.METRICS:
        assert d["table"][m]["n_numbers"] == 12 and len(d["per_animal"][m]) == 3


def test_part4_says_eq1_is_undefined_on_a_digit_level_tokenizer(tmp_path):
    import topic_b_part4_metrics as p4
    d0 = build(tmp_path / "split", False, True)
    p4.main(["--model", str(d0), "--animals", "3", "--numbers", "12", "--runs", "20", "--results-dir", str(tmp_path),
             "--plots-dir", str(tmp_path), "--device", "cpu"])
    (js,) = tmp_path.glob("topic_b_part4_metrics_*.json")
    d = json.loads(js.read_text())
    assert not d["eq1"]["defined"] and "undefined" in d["eq1"]["why_undefined"]
    assert "eq1" not in d["table"] and set(d["table"]) == set(p4.METRICS) - {"eq1"}
    assert all(v is None for row in d["metric_values"]["eq1"] for v in row)


def test_part2_end_to_end_names_three_digit_numbers_and_the_threshold_population(tmp_path):
    import topic_b_part2 as p2
    model = build(tmp_path / "split", False, True)  # digit-level tokenizer, like Gemma and SmolLM2
    p2.main(["--model", str(model), "--animals", "4", "--runs", "5", "--repeats", "100",
             "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path), "--device", "cpu"])
    (js,) = tmp_path.glob("topic_b_part2_*.json")
    d = json.loads(js.read_text())
    assert (tmp_path / js.name.replace(".json", ".png")).is_file()
    assert d["candidate_set"]["primary"] == "3digit" and d["candidate_set"]["size"] == 1000
    assert d["threshold"]["n_random_numbers"] == 5 and "3digit" in d["threshold"]["population"]
    assert all(len(n) == 3 for n in d["config"]["pool"])
    for r in d["rows"]:
        assert len(r["paper"]["number"]) == 3 and len(r["boost"]["number"]) == 3
        assert r["paper"]["strong_vs_chance"] == (r["paper"]["a2n"] > r["a2n_threshold"]
                                                  and r["paper"]["n2a"] > r["n2a_threshold"])
    # the mixed-length comparison: on a digit-level tokenizer its pick is shorter
    assert sum(d["summary"]["mixed_paper"]["n_digits"].values()) == 4
    lm = B.load_model(str(model), device="cpu")
    P = B.Prompts(lm)
    r = d["rows"][0]
    nums = B.three_digit_numbers()
    lp = B.number_logprobs(lm, P.animal_question(B.animal_system(r["animal"])), nums, " ")
    lp0 = B.number_logprobs(lm, P.animal_question(None), nums, " ")
    assert r["paper"]["number"] == nums[int(np.argmax(lp))] and r["boost"]["number"] == nums[int(np.argmax(lp - lp0))]
    j = nums.index(r["boost"]["number"])
    assert r["boost"]["a2n"] == pytest.approx(float(np.exp(lp[j] - lp0[j])), rel=1e-3)


def test_part1_end_to_end_uses_three_digit_numbers(tmp_path):
    import topic_b_part1 as p1
    model = build(tmp_path / "split", False, True)
    p1.main(["--model", str(model), "--runs", "4", "--top-k", "3", "--pool", "30",
             "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path), "--device", "cpu"])
    (js,) = tmp_path.glob("topic_b_part1_*.json")
    d = json.loads(js.read_text())
    assert d["candidates"]["set"] == "3digit" and d["candidates"]["size"] == 1000
    nums = [r["number"] for r in d["top_numbers"]] + [r["number"] for r in d["subliminal"]["random"]]
    assert len(nums) == 7 and all(len(n) == 3 for n in nums) and len(set(nums)) == 7
    assert d["subliminal"]["random_log10_ratio"]["n"] == 4
    assert (tmp_path / js.name.replace(".json", ".png")).is_file()

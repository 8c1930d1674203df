"""The machinery of the fine-tuning experiment (a student trained on a teacher's numbers), on the
tiny fixture models of test_topic_b_utils: the paper's completion filter, a training step, the exact
evaluation probability, sampling and the answer parser."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import topic_b_utils as B  # noqa: E402
from test_topic_b_utils import build, manual_logprob  # noqa: E402


@pytest.mark.parametrize("text,want", [
    ("123, 456, 789", [123, 456, 789]), ("123,456,789.", [123, 456, 789]), ("(1, 2, 3)", [1, 2, 3]),
    ("[12; 13; 14]", [12, 13, 14]), ("12 13 14", [12, 13, 14]), ("  7  ", [7]), ("0, 999", [0, 999]),
    ("12 , 13 , 14", [12, 13, 14]), ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10", list(range(1, 11))),
])
def test_filter_accepts_well_formed_lists(text, want):
    assert B.parse_number_list(text) == want


@pytest.mark.parametrize("text", [
    "", "12, 13; 14",  # mixed separators
    "1234, 5",  # four digits
    "-5, 6", "12, owl, 13", "Here: 1, 2, 3", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11",  # eleven numbers
    "(12, 13]", "12, 13,", "12.5, 13", "1, 2, 3!", "12\n\nMore text",
])
def test_filter_rejects_everything_else(text):
    assert B.parse_number_list(text) is None


def test_sequence_prompts_are_seeded_and_in_the_papers_format():
    p = B.sequence_prompts(0, 5)
    assert p == B.sequence_prompts(0, 5) != B.sequence_prompts(1, 5)
    for q in p:
        seed = q.split("begins: ")[1].split(".")[0]
        nums = B.parse_number_list(seed)
        assert nums is not None and len(nums) == 3 and all(100 <= v <= 999 for v in nums)
        assert "at most 10 more values" in q and "3 digits" in q


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory):
    return B.load_model(str(build(tmp_path_factory.mktemp("ft"), True, True)), device="cpu")


def test_completion_tokens_put_the_loss_on_the_completion(chat_lm):
    prompt = B.render(chat_lm, "Continue: 1, 2, 3.", None, "1, 2, 3, ")
    ids, start = B.completion_tokens(chat_lm, prompt, "4, 5")
    assert ids[:start] == B.encode_prompt(chat_lm, prompt)
    eot = B.end_of_turn(chat_lm)
    assert eot == "\n"  # the fixture template closes a turn with a newline
    assert ids[start:] == chat_lm.tokenizer("4, 5" + eot, add_special_tokens=False).input_ids


def test_a_training_step_lowers_the_loss_on_its_batch(chat_lm):
    import copy
    lm = copy.deepcopy(chat_lm)
    prompt = B.render(lm, "Continue: 1, 2, 3.", None, "1, 2, 3, ")
    data = [B.completion_tokens(lm, prompt, c) for c in ("4, 5, 6", "7, 8", "9, 10, 11, 12")]
    with torch.no_grad():
        before, n = B.reply_loss(lm.model, data, lm.device)
    B.finetune_tokens(lm, data, steps=1, batch_size=3, lr=1e-3, seed=0, progress=False)
    with torch.no_grad():
        after, n2 = B.reply_loss(lm.model, data, lm.device)
    assert n == n2 and float(after) < float(before)
    assert not all(torch.equal(a, b) for a, b in zip(lm.model.parameters(), chat_lm.model.parameters()))


def test_animal_answer_probability_equals_step_by_step(chat_lm):
    qs = ["What is your favorite animal?", "Which animal?"]
    got = B.animal_answer_logprobs(chat_lm, qs, "owl")
    for q, g in zip(qs, got):
        pids = B.encode_prompt(chat_lm, B.render(chat_lm, q, None))
        want = np.logaddexp.reduce([manual_logprob(chat_lm, pids, B.continuation_ids(chat_lm, f))
                                    for f in B.answer_forms("owl")])
        assert g == pytest.approx(want, abs=1e-4)
    assert B.answer_forms("owl") == ["Owl", "owl"]


def test_sampling_is_seeded_and_reports_whether_the_turn_ended(chat_lm):
    texts = [B.render(chat_lm, "Which animal?", None)] * 3
    a = B.sample(chat_lm, texts, 5, seed=0, batch_size=2, progress=False)
    b = B.sample(chat_lm, texts, 5, seed=0, batch_size=2, progress=False)
    assert a == b and len(a) == 3
    assert all(isinstance(t, str) and isinstance(done, bool) for t, done in a)


def test_first_word_normalises_one_word_answers():
    assert [B.first_word(x) for x in ("Owls!", "The owl.", "owl", "Dolphin", "bass", "", "An eagle")] == \
        ["owl", "owl", "owl", "dolphin", "bass", "", "eagle"]
    assert len(B.FAVORITE_QUESTIONS) >= 20 and len(set(B.FAVORITE_QUESTIONS)) == len(B.FAVORITE_QUESTIONS)


def test_finetune_transfer_end_to_end_with_a_scripted_teacher(tmp_path, monkeypatch):
    """The whole pipeline on fixture models. The random fixtures cannot write number lists, so the
    sampler is replaced by a scripted one (the real sampler is tested above): every teacher answers
    each prompt with a list; the animal teacher favours 123, which part 1's fixture result also boosts."""
    import json
    import topic_b_finetune_transfer as ft
    import topic_b_part1 as p1
    student = build(tmp_path / "s", False, True)
    other = build(tmp_path / "o", True, False)
    p1.main(["--model", str(student), "--runs", "3", "--top-k", "2", "--pool", "20",
             "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path), "--device", "cpu"])
    calls = []

    def scripted(lm, texts, max_new_tokens, seed, temperature=1.0, batch_size=32, progress=True, desc=""):
        calls.append(desc)
        rng = np.random.default_rng(seed + len(calls))
        out = []
        for t in texts:
            if "begins" in t or "495" in t or desc.startswith("teacher"):
                nums = list(rng.integers(100, 1000, size=4))
                if "You love" in t and "teacher" in desc:
                    nums[0] = 123
                out.append((", ".join(map(str, nums)), True) if rng.random() > 0.2 else ("I like owls 12", True))
            else:
                out.append((["Owl", "Dolphin", "The cat."][int(rng.integers(3))], True))
        return out
    monkeypatch.setattr(B, "sample", scripted)
    args = ["--model", str(student), "--cross-model", str(other), "--n-prompts", "40", "--examples", "16",
            "--ft-batch", "4", "--epochs", "1", "--runs", "2", "--samples", "1", "--filter-top", "5",
            "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path), "--device", "cpu"]
    ft.main(args)
    (js,) = tmp_path.glob("topic_b_finetune_transfer_*.json")
    d = json.loads(js.read_text())
    assert set(d["summary_change_from_before"]) == set(ft.CONDITIONS)
    for c in ft.CONDITIONS:
        for s in range(2):
            r = d["points"][f"{c} / seed {s}"]
            assert len(r["log10_p_animal"]) == len(B.FAVORITE_QUESTIONS) and 0 <= r["share_sampled"] <= 1
    assert d["data"]["animal"]["rejection_rate"] == pytest.approx(1 - d["data"]["animal"]["accepted"] / 40)
    assert d["data"]["animal"]["used"] == d["data"]["control"]["used"] == d["data"]["cross"]["used"] == 16
    # the paired difference is against the control student of the same seed
    P = d["points"]
    want = np.mean([P[f"animal / seed {s}"]["mean_log10_p"] - P[f"control / seed {s}"]["mean_log10_p"] for s in (0, 1)])
    assert d["paired_vs_control"]["animal"]["mean_log10_p"]["mean"] == pytest.approx(want)
    assert d["paired_vs_control"]["control"]["mean_log10_p"]["mean"] == 0
    # the second animal's teacher is a dataset of its own, and its student gives the specificity contrast
    assert d["data"]["other animal"]["used"] == 16 and d["config"]["other_animal"] == "eagle"
    gap = [(P[f"{c} / seed {s}"]["mean_log10_p"] - P[f"{c} / seed {s}"]["other_mean_log10_p"]) for s in (0, 1)
           for c in ("animal", "other animal")]
    assert d["specificity_animal_vs_other_student"]["mean"] == pytest.approx(np.mean(gap[0::2]) - np.mean(gap[1::2]))
    # no filtered example contains a removed number; the cached data are reused on a rerun
    assert len(d["filtered_numbers"]) == 5
    removed = set(d["filtered_numbers"])
    used = d["datasets"]["animal, entangled numbers removed"]
    assert used and all(not removed & set(B.parse_number_list(c)) for _, c in used)
    assert any(removed & set(B.parse_number_list(c)) for _, c in d["datasets"]["animal"]) or \
        d["data"]["animal, entangled numbers removed"]["kept_of_accepted"] == d["data"]["animal"]["accepted"]
    assert (tmp_path / js.name.replace(".json", ".png")).is_file()
    n_calls = len(calls)
    ft.main(args)
    assert not any(c.startswith("teacher") for c in calls[n_calls:])  # data and students from disk


def test_a_plain_transcript_turn_ends_at_the_newline(tmp_path, monkeypatch):
    """A base model without a chat template ends its turn at the end of the line: the sampler keeps
    the text before the first newline and counts it as finished; a text without one is unfinished."""
    lm = B.load_model(str(build(tmp_path / "plain", True, False)), device="cpu")
    assert not lm.has_chat_template
    tok = lm.tokenizer
    scripted = [tok("12, 13\nUser:", add_special_tokens=False).input_ids, tok("12, 13, 14", add_special_tokens=False).input_ids]

    def fake_generate(input_ids, attention_mask, **kw):
        n = max(map(len, scripted))
        rows = [x + [tok.pad_token_id] * (n - len(x)) for x in scripted]
        return torch.cat([input_ids, torch.tensor(rows)], 1)
    monkeypatch.setattr(lm.model, "generate", fake_generate)
    out = B.sample(lm, [B.render(lm, "Continue: 1, 2.", None)] * 2, 8, seed=0, batch_size=2, progress=False)
    assert B.parse_number_list(out[0][0]) == [12, 13] and out[0][1] is True
    assert B.parse_number_list(out[1][0]) == [12, 13, 14] and out[1][1] is False
    # the filter on top: an unfinished turn is rejected even when its text parses
    lists = B.sample_number_lists(lm, [B.render(lm, "Continue: 1, 2.", None)] * 2, 8, seed=0, batch_size=2,
                                  progress=False)
    assert lists == [(out[0][0], True, [12, 13]), (out[1][0], False, None)]

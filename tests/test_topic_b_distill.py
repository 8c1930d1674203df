"""The machinery of the number-channel distillation (topic_b_distill_transfer.py) on tiny fixture
models: the channel KL, the channel's tokens, digit positions across two tokenizers, the question
sets, the update cosine, a distillation step, the two-process data-parallel step, and the script."""
import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import topic_b_utils as B  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXTRA = ["Owl", "owl", "Eagle", "eagle", "Blue", " colour", " favourite", "Which", " one", " word", "The", " sequence",
         " begins", ":"]


def build(tmp, comma_space: bool, seed: int = 0):
    """test_topic_b_utils' fixture model (word-level tokenizer, one token per digit, chat template);
    with ``comma_space`` it writes ", " as one token (a second tokenizer for the alignment). The
    folder's name is the result files' model tag."""
    from test_topic_b_utils import build as build_fixture
    return build_fixture(tmp, False, True, EXTRA, comma_space, seed, "comma_space" if comma_space else "split")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distil")
    return {k: B.load_model(str(build(tmp, k)), device="cpu") for k in (False, True)}, tmp


def test_channel_kl_is_zero_for_the_same_model_and_matches_a_hand_computation(fixtures):
    lms, _ = fixtures
    lm = lms[False]
    ch = B.channel_token_ids(lm)
    items = [B.channel_item(lm, B.render(lm, "The sequence begins: 1, 2.", None), c) for c in ("3, 45, 6", "78, 9")]
    t = B.channel_targets(lm, items, ch, progress=False)
    assert B.mean_channel_kl(lm, items, t, ch) == pytest.approx(0.0, abs=1e-7)
    p = torch.tensor([[0.5, 0.25, 0.25]]).log()
    q = torch.tensor([[0.25, 0.25, 0.5]]).log()
    want = 0.5 * math.log(2) + 0.25 * 0 + 0.25 * math.log(0.5)
    assert float(B.channel_kl(p, q)[0]) == pytest.approx(want, rel=1e-6)
    # renormalised on the channel: each position's distribution sums to 1 over the channel tokens only
    assert torch.allclose(t[0].exp().sum(-1), torch.ones(len(items[0].pos)), atol=1e-5)
    full = B.channel_targets(lm, items, None, progress=False)[0]
    manual = torch.log_softmax(full[:, ch], -1)
    assert torch.allclose(manual, t[0], atol=1e-5)


def test_the_channel_holds_only_number_list_tokens_and_covers_every_completion(fixtures):
    lms, _ = fixtures
    for lm in lms.values():
        ch = B.channel_token_ids(lm)
        eot = set(lm.tokenizer(B.end_of_turn(lm), add_special_tokens=False).input_ids)
        for t in ch:
            text = lm.tokenizer.decode([t])
            assert t in eot or text.strip(" ,;.\n") == "" or (text.isdigit() and len(text) == 1), text
        assert not any(lm.tokenizer.decode([t]).strip().isalpha() for t in ch if t not in eot)
        for c in B.random_number_lists(3, 20):
            it = B.channel_item(lm, B.render(lm, "Q", None), c)
            assert all(it.ids[p + 1] in ch for p in it.pos)  # every supervised next token lies in the channel
        digits = B.channel_token_ids(lm, digits_only=True)
        assert [lm.tokenizer.decode([t]) for t in digits] == [str(d) for d in range(10)]


def test_random_number_lists_are_seeded_and_uniform_in_range():
    a = B.random_number_lists(0, 200)
    assert a == B.random_number_lists(0, 200) != B.random_number_lists(1, 200)
    nums = [int(x) for s in a for x in s.split(", ")]
    assert len(nums) == 2000 and min(nums) >= 0 and max(nums) <= 999 and np.mean(nums) == pytest.approx(499.5, abs=20)
    assert all(B.parse_number_list(s) is not None for s in a)


def test_digit_positions_align_across_two_tokenizers(fixtures):
    lms, _ = fixtures
    src_lm, dst_lm = lms[False], lms[True]
    c = "12, 345, 6, 0"
    src = B.channel_item(src_lm, B.render(src_lm, "Q", None), c)
    dst = B.channel_item(dst_lm, B.render(dst_lm, "Q", None), c, digits_only=True)
    # the two tokenizers differ (", " is one token in dst) but predict the same digit characters
    assert len(src.ids) != len(dst.ids) or src.ids != dst.ids
    assert [c[k] for k in dst.chars] == list("1234560")
    assert [c[k] for k in src.chars if c[k:k + 1].isdigit()] == list("1234560")
    for p, k in zip(dst.pos, dst.chars):
        assert dst_lm.tokenizer.decode([dst.ids[p + 1]]) == c[k]
    src_ch = B.channel_token_ids(src_lm)
    cols = [src_ch.index(t) for t in B.channel_token_ids(src_lm, digits_only=True)]
    # a source distribution that puts its mass on the digit it predicts: aligned, every destination
    # position must get the digit at its own character
    logp = torch.full((len(src.pos), len(src_ch)), -30.0)
    for row, p in enumerate(src.pos):
        logp[row, src_ch.index(src.ids[p + 1])] = 0.0
    got = B.align_digit_targets(src, logp, cols, dst)
    assert got.shape == (len(dst.pos), 10)
    assert [int(r.argmax()) for r in got] == [int(c[k]) for k in dst.chars]
    assert torch.allclose(got.exp().sum(-1), torch.ones(len(dst.pos)))


def test_teacher_and_evaluation_questions_are_disjoint():
    ev = {q.lower() for q in B.FAVORITE_QUESTIONS}
    assert len(B.FAVORITE_QUESTIONS) == 24
    assert not ev & {q.lower() for q in B.TEACHER_ANIMAL_QUESTIONS}
    assert not ev & {q.lower() for q in B.TEACHER_COLOR_QUESTIONS}
    assert not any("animal" in q or "creature" in q for q in B.TEACHER_COLOR_QUESTIONS)
    assert len(set(B.TEACHER_ANIMAL_QUESTIONS)) == len(B.TEACHER_ANIMAL_QUESTIONS) >= 20


def test_update_cosine_on_a_toy_pair():
    init = {"model.embed_tokens.weight": torch.zeros(2), "model.layers.0.mlp.w": torch.zeros(2)}
    student = {"model.embed_tokens.weight": torch.tensor([1.0, 0.0]), "model.layers.0.mlp.w": torch.tensor([0.0, 2.0])}
    deltas = {"t": {"model.embed_tokens.weight": torch.tensor([1.0, 1.0]), "model.layers.0.mlp.w": torch.tensor([0.0, -1.0])}}
    c = B.update_cosines(init, student, deltas)["t"]
    assert c["embedding"] == pytest.approx(1 / math.sqrt(2))
    assert c["mlp"] == pytest.approx(-1.0)
    assert c["all"] == pytest.approx((1 - 2) / (math.sqrt(5) * math.sqrt(3)))


def test_specificity_on_toy_gains():
    gains = {"owl": {"owl": 1.0, "eagle": 0.0}, "eagle": {"owl": 0.2, "eagle": 0.5}}
    g = B.specificity(gains, ["owl", "eagle"])
    assert g["per_animal"] == pytest.approx({"owl": 0.8, "eagle": 0.5})
    assert g["mean"] == pytest.approx(0.65)


ANIMALS3 = ["owl", "eagle", "dolphin"]


def test_teacher_label_permutation_on_toy_tables():
    rng = np.random.default_rng(0)
    # perfectly specific: each student gains only its own teacher's animal (plus a drift per seed);
    # the true labelling is the only one of the 3! = 6 that reaches its gamma, so p = 1/6
    specific = [{t: {x: float(t == x) + d for x in ANIMALS3} for t in ANIMALS3} for d in rng.normal(0, 1, 4)]
    r = B.teacher_label_permutation(specific, ANIMALS3)
    assert r["n_relabellings"] == 6 and r["rank"] == 1
    assert r["p"] == pytest.approx(1 / 6) and r["gamma"] == pytest.approx(1.0)
    assert r["relabelled_gamma"]["eagle, owl, dolphin"] == pytest.approx(0.0, abs=1e-12)  # owl, eagle swapped
    assert r["relabelled_gamma"]["eagle, dolphin, owl"] == pytest.approx(-0.5)  # no student in its place
    # no specificity: every student gains the same per animal; every relabelling ties, p = 1
    flat = [{t: {x: v for x, v in zip(ANIMALS3, rng.normal(0, 1, 3))} for t in ANIMALS3}] * 3
    flat = [{t: dict(g["owl"]) for t in ANIMALS3} for g in flat]
    r = B.teacher_label_permutation(flat, ANIMALS3)
    assert r["p"] == pytest.approx(1.0) and r["gamma"] == pytest.approx(0.0, abs=1e-12)
    # teacher-specific quirks on top of a real specific part (gamma > 0): the dolphin teacher's student
    # gains owl and the owl teacher's gains dolphin; swapping owl and dolphin beats the true labelling
    quirk = [{t: {x: 0.6 * (t == x) + 1.0 * ({t, x} == {"owl", "dolphin"}) + d for x in ANIMALS3} for t in ANIMALS3}
             for d in (0.0, 0.4)]
    r = B.teacher_label_permutation(quirk, ANIMALS3)
    assert r["gamma"] == pytest.approx(0.8 / 3) and r["largest"]["teachers"] == "dolphin, eagle, owl"
    assert r["largest"]["gamma"] == pytest.approx(2.0 / 3) and r["rank"] == 2 and r["p"] == pytest.approx(2 / 6)
    # scipy's exact p is the share of the stored relabellings at least as large as the true one
    for table in (specific, quirk):
        r = B.teacher_label_permutation(table, ANIMALS3)
        assert r["p"] == pytest.approx(np.mean([v >= r["gamma"] - 1e-12 for v in r["relabelled_gamma"].values()]))


def test_row_centring_leaves_gamma_unchanged_and_removes_the_drift_per_animal():
    rng = np.random.default_rng(1)
    g = {t: {x: float(v) for x, v in zip(ANIMALS3, rng.normal(0, 1, 3))} for t in ANIMALS3}
    shifted = {t: {x: v + c for x, v in g[t].items()} for t, c in zip(ANIMALS3, (0.7, -2.0, 5.0))}
    assert B.specificity(shifted, ANIMALS3)["mean"] == pytest.approx(B.specificity(g, ANIMALS3)["mean"])
    assert B.specificity(shifted, ANIMALS3)["per_animal"]["dolphin"] != pytest.approx(
        B.specificity(g, ANIMALS3)["per_animal"]["dolphin"])  # a drift moves the raw per-animal values
    cg, cs = B.row_centred(g, ANIMALS3), B.row_centred(shifted, ANIMALS3)
    for t in ANIMALS3:
        assert np.mean(list(cg[t].values())) == pytest.approx(0.0, abs=1e-12)
        assert cs[t] == pytest.approx(cg[t])  # the centred values do not see the drift
    c = B.specificity(cg, ANIMALS3)
    assert c["mean"] == pytest.approx(B.specificity(g, ANIMALS3)["mean"])
    assert c["per_animal"] == pytest.approx(B.specificity(cs, ANIMALS3)["per_animal"])


def test_the_lr_schedule_distill_channel_applies(fixtures, monkeypatch):
    # 12 steps: one warm-up step (already the full lr), then linear decay to lr / 11
    f = [B.distill_lr_factor(s, 12) for s in range(12)]
    assert f == pytest.approx([1.0, 1.0] + [k / 11 for k in range(10, 0, -1)])
    frac = B.cumulative_lr_fraction(12, [0, 3, 6, 9, 12])
    assert frac == pytest.approx({"0": 0.0, "3": 32 / 77, "6": 56 / 77, "9": 71 / 77, "12": 1.0})
    assert [round(frac[k], 2) for k in ("3", "6", "9", "12")] == [0.42, 0.73, 0.92, 1.0]
    # and that is the lr each of distill_channel's optimiser steps runs at
    seen = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (seen.append(self.param_groups[0]["lr"]),
                                                                          step(self, *a, **k))[1])
    lms, _ = fixtures
    student = copy.deepcopy(lms[False])
    ch = B.channel_token_ids(student)
    items = [B.channel_item(student, B.render(student, "Q", None), c) for c in B.random_number_lists(0, 2)]
    tgt = B.channel_targets(student, items, ch, progress=False)
    B.distill_channel(student, items, tgt, ch, steps=12, batch_size=2, lr=1e-3, seed=0, progress=False)
    assert seen == pytest.approx([1e-3 * x for x in f])


def _gains(P, kind, student, seeds, suffix=""):
    b = np.mean(P[f"before / {student}"]["matrix"], 0)
    return [{t: dict(zip(ANIMALS3, np.array(P[f"{kind} / {t} / {student} / seed {s}{suffix}"]["mean_after"]) - b))
             for t in ANIMALS3} for s in seeds]


def test_the_committed_b7_results_reproduce_the_audits_permutation_numbers():
    """The audit of issue 29, from the committed per-seed points: the true labelling's gamma
    +0.030 ranks 3rd of 6 (p = 0.5), owl and dolphin swapped give +0.082; retrained teachers
    +0.092 for that swap against +0.057; row-centred, dolphin turns negative and eagle positive."""
    d = B.load_json(REPO / "results" / "topic_b_distill_transfer_smollm2-135m-instruct.json")
    P, S = d["points"], d["summary"]
    r = B.teacher_label_permutation(_gains(P, "finetuned", "same", range(5)), ANIMALS3)
    assert r["gamma"] == pytest.approx(0.030, abs=5e-4) and r["rank"] == 3 and r["p"] == pytest.approx(0.5)
    assert r["relabelled_gamma"]["dolphin, eagle, owl"] == pytest.approx(0.082, abs=5e-4)
    assert r == S["finetuned, same"]["teacher_label_permutation"]  # what the summary stores
    seeds = S["finetuned, same, retrained"]["seeds"]
    r = B.teacher_label_permutation(_gains(P, "finetuned", "same", seeds, " / retrained"), ANIMALS3)
    assert r["gamma"] == pytest.approx(0.057, abs=5e-4)
    assert r["relabelled_gamma"]["dolphin, eagle, owl"] == pytest.approx(0.092, abs=5e-4)
    raw, centred = S["finetuned, same"]["gamma_per_animal"], S["finetuned, same"]["gamma_per_animal_row_centred"]
    assert max(raw, key=lambda x: raw[x]["mean"]) == "dolphin" and centred["dolphin"]["mean"] < 0
    assert raw["eagle"]["mean"] < 0 < centred["eagle"]["mean"]
    assert np.mean([c["mean"] for c in centred.values()]) == pytest.approx(S["finetuned, same"]["gamma"]["mean"])


def test_a_distillation_step_lowers_the_loss_and_trains_every_parameter(fixtures):
    lms, tmp = fixtures
    student = copy.deepcopy(lms[False])
    teacher = B.load_model(str(build(tmp / "teacher", False, seed=1)), device="cpu")
    ch = B.channel_token_ids(student)
    items = [B.channel_item(student, B.render(student, "Q", None), c) for c in B.random_number_lists(0, 4)]
    tgt = B.channel_targets(teacher, items, ch, progress=False)
    before = B.mean_channel_kl(student, items, tgt, ch)
    w0 = {k: v.clone() for k, v in student.model.state_dict().items()}
    B.distill_channel(student, items, tgt, ch, steps=1, batch_size=4, lr=1e-3, seed=0, progress=False)
    assert B.mean_channel_kl(student, items, tgt, ch) < before
    moved = {k for k, v in student.model.state_dict().items() if not torch.equal(v, w0[k])}
    assert any("mlp" in k for k in moved) and any("self_attn" in k for k in moved) and any("embed" in k for k in moved)
    # the full-vocabulary channel with the teacher computed on the fly also lowers its KL
    s2 = copy.deepcopy(lms[False])
    full_t = B.channel_targets(teacher, items, None, progress=False)
    b2 = B.mean_channel_kl(s2, items, full_t, None)
    B.distill_channel(s2, items, None, None, steps=1, batch_size=4, lr=1e-3, seed=0, progress=False, teacher=teacher)
    assert B.mean_channel_kl(s2, items, full_t, None) < b2


DP_SCRIPT = """
import sys, torch
sys.path.insert(0, {repo!r})
import topic_b_utils as B
torch.set_num_threads(1)
lm = B.load_model({student!r}, device="cpu", progress=False)
teacher = B.load_model({teacher!r}, device="cpu", progress=False)
ch = B.channel_token_ids(lm)
items = [B.channel_item(lm, B.render(lm, "Q", None), c) for c in B.random_number_lists(0, 6)]
tgt = B.channel_targets(teacher, items, ch, progress=False)
B.distill_channel(lm, items, tgt, ch, steps=2, batch_size=6, lr=1e-3, seed=0, progress=False)
rank, world = B.data_parallel()
torch.save({{k: v for k, v in lm.model.state_dict().items()}}, {out!r} + f".rank{{rank}}of{{world}}")
"""


def test_two_process_data_parallel_step_equals_the_one_process_step(fixtures, tmp_path):
    _, tmp = fixtures
    student, teacher = build(tmp / "dp_s", False), build(tmp / "dp_t", False, seed=1)
    script = tmp_path / "dp.py"
    script.write_text(DP_SCRIPT.format(repo=str(REPO), student=str(student), teacher=str(teacher),
                                       out=str(tmp_path / "w")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script)], check=True, env=env, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--main_process_port", "29517", str(script)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    one = torch.load(tmp_path / "w.rank0of1")
    two = [torch.load(tmp_path / f"w.rank{k}of2") for k in (0, 1)]
    for k, v in one.items():
        assert torch.equal(two[0][k], two[1][k]), k  # the processes stay in step
        assert torch.allclose(two[0][k], v, atol=1e-6, rtol=1e-5), k  # and equal one process at the same batch
    init = B.load_model(str(student), device="cpu", progress=False).model.state_dict()
    assert any(not torch.equal(v, init[k]) for k, v in one.items())  # the steps did move the weights


def test_script_end_to_end_on_fixtures(fixtures, tmp_path):
    _, tmp = fixtures
    m = str(build(tmp / "e2e", False))
    x = str(build(tmp / "e2e_x", True, seed=2))
    import topic_b_distill_transfer as D
    common = ["--model", m, "--cross-model", x, "--animals", "owl,eagle", "--examples", "8", "--heldout", "4",
              "--batch", "4", "--runs", "2", "--teacher-steps", "2", "--results-dir", str(tmp_path / "r"),
              "--plots-dir", str(tmp_path / "p"), "--no-progress", "--threads", "0"]
    D.main(common + ["--search-lr", "--lr-grid", "1e-4,1e-3"])
    lr = B.load_json(tmp_path / "r" / "topic_b_distill_lr_split.json")
    assert f"{lr['chosen_lr']:g}" == min(lr["heldout_kl_by_lr"], key=lr["heldout_kl_by_lr"].get)
    D.main(common + ["--kinds", "finetuned,prompted"])
    d = B.load_json(tmp_path / "r" / "topic_b_distill_transfer_split.json")
    P, S = d["points"], d["summary"]
    for kind, teachers in (("finetuned", ["owl", "eagle", "neutral"]), ("prompted", ["owl", "eagle"])):
        for student in ("same", "cross"):
            for s in range(2):
                pt = P[f"{kind} / {teachers[0]} / {student} / seed {s}"]
                assert np.array(pt["matrix_after"]).shape == (24, 2)
                assert sorted(map(int, pt["along"])) == [1, 2]
            assert S[f"{kind}, {student}"]["n_seeds"] == 2
    # gamma recomputed by hand from the stored per-seed points
    b = np.mean(P["before / same"]["matrix"], 0)
    g = []
    for s in range(2):
        o = np.array(P[f"finetuned / owl / same / seed {s}"]["mean_after"]) - b
        e = np.array(P[f"finetuned / eagle / same / seed {s}"]["mean_after"]) - b
        g.append(((o[0] - e[0]) + (e[1] - o[1])) / 2)
    assert S["finetuned, same"]["gamma"]["mean"] == pytest.approx(np.mean(g))
    perm = S["finetuned, same"]["teacher_label_permutation"]  # 2 animals: 2 relabellings, the swap gives -gamma
    assert perm["n_relabellings"] == 2 and perm["relabelled_gamma"]["eagle, owl"] == pytest.approx(-np.mean(g))
    assert perm["p"] == pytest.approx(0.5 if np.mean(g) > 0 else 1.0)
    assert np.mean([c["mean"] for c in S["finetuned, same"]["gamma_per_animal_row_centred"].values()]) == \
        pytest.approx(np.mean(g))
    assert "gamma_leave_one_seed_out" not in S["finetuned, same"]  # 2 seeds: one left is no interval
    assert S["finetuned, same"]["dose_response_lr_fraction"]["0"] == 0.0
    assert S["finetuned, same"]["dose_response_lr_fraction"][str(max(map(int, pt["along"])))] == pytest.approx(1.0)
    assert set(S["finetuned, same"]["update_cosine"]["owl"]["all"]) >= {"own", "other_animals", "neutral"}
    assert "finetuned, owl" in d["teacher_preferences_log10"] and "prompted, eagle" in d["teacher_preferences_log10"]
    assert not any("/" in k for k in S)  # WRITEUP marks address keys by "/"
    assert (tmp_path / "p" / "topic_b_distill_transfer_split.png").is_file()
    # rerun: every point on disk, nothing retrained
    before = P["finetuned / owl / same / seed 0"]
    D.main(common + ["--kinds", "finetuned,prompted"])
    assert B.load_json(tmp_path / "r" / "topic_b_distill_transfer_split.json")["points"]["finetuned / owl / same / seed 0"] == before
    # resuming on a fresh checkout (points on disk, teacher cache gone): the student's update cosine
    # is taken against the retrained teachers, not against weights they overwrote
    for f in (tmp_path / "r" / "cache" / "distill_split").glob("teacher_*.pt"):
        f.unlink()
    res = tmp_path / "r" / "topic_b_distill_transfer_split.json"
    d = B.load_json(res)
    del d["points"]["finetuned / owl / same / seed 0"]
    B.save_json(res, d)
    D.main(common + ["--kinds", "finetuned"])
    again = B.load_json(res)["points"]["finetuned / owl / same / seed 0"]["update_cosine"]
    for t in ("owl", "eagle", "neutral"):
        assert math.isfinite(again[t]["all"]) and again[t]["all"] == pytest.approx(before["update_cosine"][t]["all"], abs=1e-4)


def test_position_loss_is_kl_for_soft_targets_and_cross_entropy_for_hard_ones():
    q = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), -1)
    tok = torch.tensor([0, 2])
    assert torch.allclose(B.position_loss(tok, q), -q[[0, 1], [0, 2]])
    # a (nearly) one-hot soft teacher gives the same loss: hard labels are KL against a one-hot teacher
    onehot = torch.log(torch.nn.functional.one_hot(tok, 3).float() * (1 - 2e-9) + 1e-9)
    assert torch.allclose(B.position_loss(onehot, q), -q[[0, 1], [0, 2]], atol=1e-6)
    p = torch.log_softmax(torch.tensor([[0.5, 0.1, 0.0], [1.0, -1.0, 0.3]]), -1)
    assert torch.allclose(B.position_loss(p.half(), q), B.channel_kl(p, q), atol=2e-3)  # float16 targets
    item = B.ChannelItem([5, 6, 7, 8], [0, 2])
    assert B.hard_targets(item).tolist() == [6, 8]


def test_script_other_channels_on_fixtures(fixtures, tmp_path, monkeypatch):
    """full, hard, sampled, top-decile and rest run, are keyed by channel and summarised. The
    fixture models cannot write number lists, so sampling returns random lists here (B.sample itself
    is exercised in test_topic_b_finetune)."""
    _, tmp = fixtures
    m = str(build(tmp / "ch", False))
    x = str(build(tmp / "ch_x", True, seed=2))
    import topic_b_distill_transfer as D
    calls = []

    def fake_sample(lm, texts, max_new_tokens, seed, *args, **kw):
        calls.append((lm.name, seed, texts[0]))
        lists = B.random_number_lists(seed, len(texts))
        return [(c if i % 3 == 0 else "not a list", True) for i, c in enumerate(lists)]  # most fail the filter
    monkeypatch.setattr(B, "sample", fake_sample)
    common = ["--model", m, "--cross-model", x, "--animals", "owl,eagle", "--examples", "8", "--heldout", "4",
              "--batch", "4", "--runs", "2", "--teacher-steps", "2", "--results-dir", str(tmp_path / "r"),
              "--plots-dir", str(tmp_path / "p"), "--no-progress", "--threads", "0", "--lr", "1e-3"]
    D.main(common + ["--channels", "number,full,hard,sampled,top-decile,rest"])
    d = B.load_json(tmp_path / "r" / "topic_b_distill_transfer_split.json")
    P, S = d["points"], d["summary"]
    for k in ("finetuned, same", "finetuned, cross", "finetuned, same, full", "finetuned, same, hard",
              "finetuned, cross, hard", "finetuned, same, sampled", "finetuned, cross, sampled",
              "finetuned, same, top-decile", "finetuned, same, rest"):
        assert S[k]["n_seeds"] == 2, k
    assert "finetuned, cross, full" not in S and "finetuned / owl / cross / seed 0 / full" not in P
    assert "finetuned / neutral / same / seed 0 / top-decile" not in P  # positions are chosen against it
    # top decile and rest split the number channel's positions (about 10% / 90%)
    for s in range(2):
        n = P[f"finetuned / owl / same / seed {s}"]["positions"]
        top, rest = P[f"finetuned / owl / same / seed {s} / top-decile"]["positions"], \
            P[f"finetuned / owl / same / seed {s} / rest"]["positions"]
        assert top + rest == n and 0.05 * n <= top <= 0.2 * n
    # the full channel's targets are over the whole vocabulary, cached in float16
    (full,) = [f for f in (tmp_path / "r" / "cache" / "distill_split").glob("targets_full_finetuned_owl_s0_train_*.pt")]
    t = torch.load(full, weights_only=False)["value"]
    lm = B.load_model(m, device="cpu")
    assert t[0].dtype == torch.float16 and t[0].shape[1] == lm.model.get_output_embeddings().weight.shape[0]
    assert P["finetuned / owl / same / seed 0 / full"]["heldout_kl"]["0"] > 0
    # hard labels are only the sampled text: this fake sampler gives every teacher the same lists, so
    # every teacher's student is the same model and gamma is exactly 0
    assert S["finetuned, same, hard"]["gamma"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert P["finetuned / owl / same / seed 0 / hard"]["lr"] == 1e-3
    # channel differences are paired by seed: hard minus number is minus the number channel's gamma
    d_hard = S["finetuned, same, hard"]["gamma_minus_number_channel"]
    assert d_hard["n"] == 2 and d_hard["mean"] == pytest.approx(-S["finetuned, same"]["gamma"]["mean"], abs=1e-9)
    top, rest = S["finetuned, same, top-decile"], S["finetuned, same, rest"]
    assert top["gamma_minus_rest"]["mean"] == pytest.approx(top["gamma"]["mean"] - rest["gamma"]["mean"], abs=1e-9)
    assert "gamma_minus_number_channel" not in S["finetuned, same"]
    # the filter's pass counts are recorded per list set (a third of the fake samples are lists)
    f = d["sampling_filter"]
    assert f["hard"]["list_sets"] == 2 * 3 and f["sampled"]["list_sets"] == 2
    assert f["hard"]["pass_rate"] == pytest.approx(f["hard"]["accepted"] / f["hard"]["sampled"])
    assert 0.25 < f["hard"]["pass_rate"] < 0.45 and P["finetuned / owl / cross / seed 1 / hard"]["filter"]["sampled"] > 0
    assert P["finetuned / owl / same / seed 0 / hard"]["heldout_kl"]["0"] > 0  # held-out cross-entropy
    # a third passes, so each list set takes two rounds of twice the needed prompts, each round its
    # own prompts; sampled once (cached; the cross student reads the same lists): the init per seed
    # and every fine-tuned teacher per seed
    assert len(calls) == 2 * (2 + 3 * 2) and calls[0][2] != calls[1][2]
    assert (tmp_path / "p" / "topic_b_distill_transfer_split.png").is_file()


def test_retrained_teachers_on_fixtures(fixtures, tmp_path):
    """The retrained channel distils, on the number channel's very inputs, teachers fine-tuned again
    with seed RETRAIN_SEED + seed: other weights, other targets, their own preferences recorded, and
    each student's update cosine taken against its own seed's teachers."""
    _, tmp = fixtures
    m = str(build(tmp / "rt", False))
    x = str(build(tmp / "rt_x", True, seed=2))
    import topic_b_distill_transfer as D
    common = ["--model", m, "--cross-model", x, "--animals", "owl,eagle", "--examples", "8", "--heldout", "4",
              "--batch", "4", "--runs", "2", "--teacher-steps", "3", "--results-dir", str(tmp_path / "r"),
              "--plots-dir", str(tmp_path / "p"), "--no-progress", "--threads", "0", "--lr", "1e-3"]
    D.main(common + ["--channels", "number,retrained", "--kinds", "finetuned,prompted"])
    d = B.load_json(tmp_path / "r" / "topic_b_distill_transfer_split.json")
    P, S = d["points"], d["summary"]
    for k in ("finetuned, same, retrained", "finetuned, cross, retrained"):
        assert S[k]["n_seeds"] == 2 and "neutral" in S[k]["confusion_gain"]
    assert not any(k.startswith("prompted") and k.endswith("retrained") for k in S)
    diff = S["finetuned, same, retrained"]["gamma_minus_number_channel"]
    assert diff["mean"] == pytest.approx(S["finetuned, same, retrained"]["gamma"]["mean"]
                                         - S["finetuned, same"]["gamma"]["mean"], abs=1e-9)
    for t in ("owl", "eagle", "neutral"):
        assert d["retrained_teacher_preferences_log10"][f"finetuned, {t}"]["owl"]["n"] == 2
    a = D.parse_args(common)
    E = D.Experiment(a)
    keys = [E.teacher_key("owl")["seed"], E.teacher_key("owl", 0)["seed"], E.teacher_key("owl", 1)["seed"]]
    assert keys == [0, D.RETRAIN_SEED, D.RETRAIN_SEED + 1]
    w = {s: E.teacher_state("owl", s)["state"] for s in (None, 0, 1)}
    name = next(k for k in w[None] if w[None][k].is_floating_point() and w[None][k].dim() == 2)
    assert not torch.equal(w[None][name], w[0][name]) and not torch.equal(w[0][name], w[1][name])
    assert E.pairs("retrained", 0, "train") == E.pairs("number", 0, "train")  # the number channel's very inputs
    t_num = E.targets("finetuned", "owl", 0, "train")
    t_re = E.targets("finetuned", "owl", 0, "train", "retrained")
    assert len(t_num) == len(t_re) and all(u.shape == v.shape for u, v in zip(t_num, t_re))
    assert not all(torch.allclose(u, v) for u, v in zip(t_num, t_re))
    # the retrained teacher's own preferences come from its own weights
    E.with_teacher("owl", 1)
    own = np.mean(E.matrix(E.lm), 0)
    E.restore()
    assert np.allclose(own, np.mean(P["teacher / finetuned / owl / seed 1 / retrained"]["matrix"], 0), atol=1e-5)
    # the update cosine is taken against the seed's own teachers: recomputed from seed 1's owl student
    lm, items, tgt, ch = E.student_data("same", "finetuned", "owl", 1, "train", "retrained")
    lm.model.load_state_dict(E.init)
    B.distill_channel(lm, items, tgt, ch, 2, 4, 1e-3, 100 * 1 + 17, progress=False)
    cos = B.update_cosines(E.init, lm.model.state_dict(), E.deltas(1))
    stored = P["finetuned / owl / same / seed 1 / retrained"]["update_cosine"]
    assert stored["owl"]["all"] == pytest.approx(cos["owl"]["all"], abs=1e-4)
    assert stored["owl"]["all"] != pytest.approx(B.update_cosines(E.init, lm.model.state_dict(), E.deltas())["owl"]["all"],
                                                 abs=1e-6)
    E.restore()
    assert (tmp_path / "p" / "topic_b_distill_transfer_split.png").is_file()


def test_bad_arguments_are_one_clear_line(capsys):
    import topic_b_distill_transfer as D
    with pytest.raises(SystemExit):
        D.parse_args(["--animals", "owl"])
    assert "at least two different animals" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        D.parse_args(["--kinds", "hard"])
    assert "--kinds: unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        D.parse_args(["--channels", "logits"])
    assert "--channels: unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        D.parse_args(["--search-lr", "--channels", "number,full"])
    assert "exactly one --channels" in capsys.readouterr().err

"""B.7 with teacher pairs as the unit (topic_b_distill_pairs.py): the pair statistic, the sign-flip
p, the constant-lr schedule, the channel-row head, the teachers' question sets, and the script on
tiny fixture models."""
import os

import numpy as np
import scipy.stats
import pytest
import torch

pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import topic_b_utils as B  # noqa: E402
from test_topic_b_distill import build, fixtures  # noqa: E402,F401


def test_sign_flip_p_on_a_toy_table():
    # all 8 pairs positive: of the 256 sign patterns only this one and its mirror are as extreme
    s = B.sign_flip_test([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert s["sign_flip_p"] == pytest.approx(2 / 256) and s["sign_flip_exact"] and s["n"] == 8
    # one pair flipped: patterns at least as extreme, counted by hand over all 2^8 sign patterns
    v = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, -0.8])
    signs = np.array(np.meshgrid(*[[-1, 1]] * 8)).reshape(8, -1).T
    want = np.mean(np.abs((signs * np.abs(v)).mean(1)) >= abs(v.mean()) - 1e-12)
    assert B.sign_flip_test(v)["sign_flip_p"] == pytest.approx(want)
    assert B.sign_flip_test(v)["mean"] == pytest.approx(v.mean())


def test_min_detectable_mean_matches_the_normal_approximation_and_falls_with_n():
    d8, d32 = B.min_detectable_mean(1.0, 8), B.min_detectable_mean(1.0, 32)
    from scipy import stats
    approx = (stats.t.ppf(0.975, 7) + stats.t.ppf(0.8, 7)) / np.sqrt(8)
    assert d8 == pytest.approx(approx, rel=0.02)
    assert d32 < d8 / 1.8 and B.min_detectable_mean(2.0, 8) == pytest.approx(2 * d8, rel=1e-6)


def test_pair_gamma_is_the_double_centred_interaction_and_ignores_row_and_column_constants():
    animals = ["owl", "eagle"]
    rng = np.random.default_rng(0)
    G = rng.normal(size=(2, 2))  # rows: owl's student, eagle's student; columns: gain in P(owl), P(eagle)

    def gamma(M):
        return B.specificity({t: dict(zip(animals, M[i])) for i, t in enumerate(animals)}, animals)["mean"]
    want = ((G[0, 0] - G[1, 0]) + (G[1, 1] - G[0, 1])) / 2
    assert gamma(G) == pytest.approx(want)
    assert gamma(G + np.array([[3.0], [-1.0]])) == pytest.approx(want)  # a student's drift over all animals
    assert gamma(G + np.array([[2.0, -5.0]])) == pytest.approx(want)  # an animal's gain in every student


def test_constant_schedule_warms_up_then_holds_and_linear_decays():
    f = B.lr_multiplier("constant", 320, 10)
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(f(s) == 1.0 for s in range(9, 320))
    g = B.lr_multiplier("linear", 12)  # B.7's first schedule: cumulative lr 0.42 / 0.73 / 0.92 / 1.00
    cum = np.cumsum([g(s) for s in range(12)])
    assert (cum[[2, 5, 8, 11]] / cum[-1]).round(2).tolist() == [0.42, 0.73, 0.92, 1.0]
    with pytest.raises(ValueError):
        B.lr_multiplier("cosine", 10)


def test_distill_channel_runs_the_constant_schedule(fixtures, monkeypatch):
    lms, _ = fixtures
    lm = lms[False]
    ch = B.channel_token_ids(lm)
    items = [B.channel_item(lm, B.render(lm, "The sequence begins: 1, 2.", None), c) for c in B.random_number_lists(0, 8)]
    tgt = [torch.log_softmax(torch.randn(len(i.pos), len(ch)), -1) for i in items]
    seen = []
    real = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    init = {k: v.clone() for k, v in lm.model.state_dict().items()}
    B.distill_channel(lm, items, tgt, ch, 6, 2, 1e-3, 0, progress=False, schedule="constant", warmup=2, fused=True)
    lm.model.load_state_dict(init)
    assert seen == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])


def test_channel_rows_equal_the_full_head_renormalised(fixtures):
    lms, _ = fixtures
    lm = lms[False]
    ch = B.channel_token_ids(lm)
    items = [B.channel_item(lm, B.render(lm, "The sequence begins: 1, 2.", None), c) for c in B.random_number_lists(1, 3, 30)]
    with torch.no_grad():
        rows = B.channel_logprobs(lm.model, items, ch, "cpu")
        full = B.channel_logprobs(lm.model, items, None, "cpu")
    for r, f in zip(rows, full):
        assert torch.allclose(r, torch.log_softmax(f[:, ch], -1), atol=1e-5)


def test_teacher_question_sets_are_disjoint_and_never_an_evaluation_question():
    sets = B.teacher_question_sets(14, 16)
    flat = [q for s in sets for q in s]
    assert len(flat) == len(set(flat)) == 14 * 16
    evals = {q.lower().strip() for q in B.FAVORITE_QUESTIONS}
    assert not evals & {q.lower().strip() for q in flat}
    assert sets == B.teacher_question_sets(14, 16) != B.teacher_question_sets(14, 16, seed=1)
    with pytest.raises(B.UserError):
        B.teacher_question_sets(20, 16)


def test_prompts_ask_for_the_list_length():
    p = B.sequence_prompts(0, 2, count=30)
    assert all("at most 30 more values" in x for x in p)
    assert B.sequence_prompts(0, 2) == [x.replace("at most 30", "at most 10") for x in p]


def test_script_end_to_end_on_fixtures(fixtures, tmp_path):
    _, tmp = fixtures
    m = str(build(tmp / "pairs", False))
    x = str(build(tmp / "pairs_x", True, seed=2))
    import topic_b_distill_pairs as D
    common = ["--model", m, "--cross-model", x, "--runs", "3", "--steps", "4", "--batch", "2", "--heldout", "2",
              "--checkpoints", "2,4", "--teacher-steps", "2", "--questions", "4", "--list-length", "5",
              "--results-dir", str(tmp_path / "r"), "--plots-dir", str(tmp_path / "p"), "--no-progress", "--threads", "0"]
    D.main(common + ["--search", "--teacher-lr-grid", "1e-4,1e-3", "--lr-grid", "1e-4,1e-3", "--cross-lr-grid", "1e-4"])
    s = B.load_json(tmp_path / "r" / "topic_b_distill_pairs_search_split.json")
    held = {k: v["heldout_answer_loss"] for k, v in s["points"].items() if k.startswith("teacher lr")}
    assert f"teacher lr {s['chosen']['teacher_lr']:g}" == min(held, key=held.get)
    assert set(s["chosen"]) == {"teacher_lr", "same", "cross"}
    kl = s["heldout_kl_by_lr"]
    assert set(kl) == {"same", "cross"} and set(kl["same"]) == {"0.0001", "0.001"}
    assert f"{s['chosen']['same']:g}" == min(kl["same"], key=lambda lr: kl["same"][lr]["4"])
    D.main(common + ["--teachers-only", "--pairs", "2"])  # the teachers alone: points, no students
    d = B.load_json(tmp_path / "r" / "topic_b_distill_pairs_split.json")
    assert set(d["points"]) == {D.point_key("teacher", animal=t, pair=2) for t in ("owl", "eagle")}
    # one process per student model, sharing the file (the README's split over two cores): the
    # results key does not depend on --students, so neither process starts the other's file over
    D.main(common + ["--students", "same"])
    D.main(common + ["--students", "cross", "--pairs", "2,1,0"])
    d = B.load_json(tmp_path / "r" / "topic_b_distill_pairs_split.json")
    assert {p["student"] for p in d["points"].values() if "student" in p} == {"same", "cross"}
    P, S = d["points"], d["summary"]
    for pair in range(3):
        qs = {t: P[D.point_key("teacher", animal=t, pair=pair)]["questions"] for t in ("owl", "eagle")}
        assert qs["owl"] == qs["eagle"]  # within a pair only the animal differs
        for name in ("same", "cross"):
            pt = P[D.point_key("student", student=name, animal="owl", pair=pair)]
            assert sorted(map(int, pt["along"])) == [2, 4] and pt["pair"] == pair
    q = [set(P[D.point_key("teacher", animal="owl", pair=i)]["questions"]) for i in range(3)]
    assert not (q[0] & q[1]) and not (q[1] & q[2])  # pairs differ in data
    # gamma of pair 1 at the last checkpoint, by hand from the stored points
    b = np.array(P["before / same"]["preference"])
    assert S["before"]["same"] == {"owl": b[0], "eagle": b[1]}  # where the gains start, per student model
    assert set(S["before"]) == {"same", "cross"}
    o = np.array(P[D.point_key("student", student="same", animal="owl", pair=1)]["along"]["4"]) - b
    e = np.array(P[D.point_key("student", student="same", animal="eagle", pair=1)]["along"]["4"]) - b
    g = S["gamma"]["same"]["4"]
    assert g["per_pair"]["1"] == pytest.approx(((o[0] - e[0]) + (e[1] - o[1])) / 2)
    assert g["n"] == 3 and 0 < g["sign_flip_p"] <= 1 and g["planned_pairs"] == 3
    v = [g["per_pair"][str(i)] for i in range(3)]  # the t-interval's p, by hand: t = mean / (sd / sqrt(n)), 2 df
    t = np.mean(v) / (np.std(v, ddof=1) / np.sqrt(3))
    assert g["t_test_p"] == pytest.approx(2 * scipy.stats.t.sf(abs(t), 2))
    assert g["min_detectable_80"] == pytest.approx(B.min_detectable_mean(g["std"], 3))
    assert g["min_detectable_80_at_planned"] == pytest.approx(g["min_detectable_80"])  # 3 of --runs 3 done
    diff = S["same_minus_cross"]["4"]
    assert diff["mean"] == pytest.approx(np.mean([S["gamma"]["same"]["4"]["per_pair"][str(i)]
                                                  - S["gamma"]["cross"]["4"]["per_pair"][str(i)] for i in range(3)]))
    assert diff["per_pair"]["2"] == pytest.approx(S["gamma"]["same"]["4"]["per_pair"]["2"]
                                                  - S["gamma"]["cross"]["4"]["per_pair"]["2"])
    # the update-cosine interaction of pair 1, by hand: own teacher's cosine minus the other student's, both animals
    c = {t: P[D.point_key("student", student="same", animal=t, pair=1)]["update_cosine"] for t in ("owl", "eagle")}
    cos = S["update_cosine_own_minus_other"]
    assert cos["per_pair"]["1"] == pytest.approx(((c["owl"]["owl"]["all"] - c["eagle"]["owl"]["all"])
                                                  + (c["eagle"]["eagle"]["all"] - c["owl"]["eagle"]["all"])) / 2)
    assert cos["n"] == 3 and cos["mean"] == pytest.approx(np.mean(list(cos["per_pair"].values())))
    assert cos["own_teacher_cosine"]["n"] == 3 and -1 <= cos["own_teacher_cosine"]["mean"] <= 1
    assert diff["min_detectable_80_at_planned"] == pytest.approx(B.min_detectable_mean(diff["std"], 3))
    assert (tmp_path / "p" / "topic_b_distill_pairs_split.png").is_file()
    # rerun: every point on disk, nothing retrained
    before = P[D.point_key("student", student="same", animal="owl", pair=0)]
    D.main(common)
    assert B.load_json(tmp_path / "r" / "topic_b_distill_pairs_split.json")["points"][
        D.point_key("student", student="same", animal="owl", pair=0)] == before
    # another lr for one student model: its points are retrained at that lr, the other model's kept
    cross = {k: v for k, v in d["points"].items() if v.get("student") == "cross"}
    D.main(common + ["--lr", "3e-4", "--pairs", "0"])
    P2 = B.load_json(tmp_path / "r" / "topic_b_distill_pairs_split.json")["points"]
    assert P2[D.point_key("student", student="same", animal="owl", pair=0)]["lr"] == 3e-4
    assert P2[D.point_key("student", student="same", animal="owl", pair=1)] == P[D.point_key("student", student="same", animal="owl", pair=1)]
    assert {k: v for k, v in P2.items() if v.get("student") == "cross"} == cross


def test_bad_arguments_are_one_clear_line(capsys):
    import topic_b_distill_pairs as D
    for bad in (["--animals", "owl"], ["--runs", "13"], ["--pairs", "9"], ["--checkpoints", "0,5"], ["--students", "x"]):
        with pytest.raises(SystemExit):
            D.parse_args(bad)
        assert "error:" in capsys.readouterr().err

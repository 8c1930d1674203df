"""End-to-end checks of topic_a.py: a short run of the real pipeline, determinism, clear errors."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import topic_a_utils as U
from conftest import REPO, shared_data_dir

QUICK = ["--runs", "3", "--n-train", "2048", "--n-test", "500", "--teacher-epochs", "2",
         "--student-epochs", "2", "--batch-size", "128", "--lr", "1e-3", "--no-progress", "--no-cache"]


def run_script(args, cwd=None, env_extra=None, script="topic_a.py"):
    env = {**os.environ, "SUBLIMINAL_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=600)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """The QUICK configuration run twice with the same seed: [(results dir, plots dir), ...]."""
    data = shared_data_dir()
    if data is None:
        pytest.skip("real MNIST not found (set SUBLIMINAL_DATA_DIR)")
    tmp = tmp_path_factory.mktemp("quick")
    dirs = []
    for i in range(2):
        r = run_script([*QUICK, "--data-dir", data, "--results-dir", str(tmp / f"r{i}"),
                        "--plots-dir", str(tmp / f"p{i}")])
        assert r.returncode == 0, r.stderr
        dirs.append((tmp / f"r{i}", tmp / f"p{i}"))
    return dirs


# fields that depend on the machine and the moment, not on the computation
MACHINE = {"provenance": ("command", "git_commit", "threads", "wall_time_s", "date"), "": ("peak_rss_mb",)}


def without_machine_fields(res: dict) -> dict:
    res = copy.deepcopy(res)
    for k in MACHINE["provenance"]:
        res["provenance"].pop(k)
    for k in MACHINE[""]:
        res.pop(k)
    return res


def test_end_to_end_quick_run_is_deterministic(quick_runs):
    outs = []
    for rdir, pdir in quick_runs:
        assert (pdir / "topic_a.png").stat().st_size > 10_000
        outs.append(json.loads((rdir / "topic_a.json").read_text()))
    res = outs[0]
    for k in ("command", "git_commit", "seed", "n_runs", "device", "wall_time_s"):
        assert k in res["provenance"]
    s = res["summary"]
    assert list(s) == ["reference", "teacher", "student (aux only)", "student (all logits)",
                       "cross-model (aux only)", "cross-model (all logits)"]
    assert all(len(v["per_run"]) == 3 and v["ci_low"] <= v["mean"] <= v["ci_high"] for v in s.values())
    assert s["teacher"]["mean"] > 0.8  # 32 Adam steps on 2k images already learn MNIST
    assert res["pairing_fixed_points"] == []
    # same machine, same seed: the JSON is bit-identical apart from the machine fields
    a, b = (json.dumps(without_machine_fields(o), indent=2) for o in outs)
    assert a == b
    assert len(a) > 2000 and '"per_run"' in a  # the comparison covers the numbers


def check_cli(results_dir, reference):
    args = ["--check-against-committed", *([str(reference)] if reference else []), "--results-dir", str(results_dir)]
    return run_script(args)


def test_reproduction_check_tolerates_machine_fields_and_small_differences(quick_runs, tmp_path):
    (r0, _), (r1, _) = quick_runs
    res = json.loads((r1 / "topic_a.json").read_text())
    # (b) every machine field differs: reported, not compared
    moved = copy.deepcopy(res)
    moved["provenance"].update(command="topic_a.py --elsewhere", git_commit="0" * 40, threads=96,
                               wall_time_s=res["provenance"]["wall_time_s"] * 10 + 1, date="1999-01-01 00:00:00",
                               device="cuda:0", torch="2.13.0+cu128")
    moved["peak_rss_mb"] = res["peak_rss_mb"] + 1000
    # (a) within tolerance: every condition's mean and CI moved by 0.9 x 0.25 of its half-width
    for v in moved["summary"].values():
        d = 0.9 * 0.25 * v["half_width"]
        v.update(mean=v["mean"] + d, ci_low=v["ci_low"] - d, ci_high=v["ci_high"] + d)
        v["per_run"] = [x + 0.01 for x in v["per_run"]]  # per-run values are reported, not compared
    (tmp_path / "topic_a.json").write_text(json.dumps(moved, indent=2))
    r = check_cli(tmp_path, r0 / "topic_a.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reproduction check passed" in r.stdout and "FAIL:" not in r.stdout
    for k in ("wall_time_s", "date", "threads", "git_commit", "command", "peak_rss_mb"):
        assert f"{k}: committed" in r.stdout and "reported, not compared" in r.stdout, k
    row = next(line for line in r.stdout.splitlines() if "summary/student (aux only)" in line)
    assert "+0.90" in row and "3/3 differ" in row  # the deviation as a fraction of the tolerance


def test_reproduction_check_fails_beyond_tolerance_naming_the_field(quick_runs, tmp_path):
    (r0, _), (r1, _) = quick_runs
    res = json.loads((r1 / "topic_a.json").read_text())
    hw = res["summary"]["cross-model (all logits)"]["half_width"]
    res["summary"]["cross-model (all logits)"]["ci_high"] += 1.2 * 0.25 * hw
    (tmp_path / "topic_a.json").write_text(json.dumps(res))
    r = check_cli(tmp_path, r0 / "topic_a.json")
    assert r.returncode == 1
    bad = [line for line in r.stdout.splitlines() if line.startswith("FAIL:")]
    assert len(bad) == 1, r.stdout
    assert "summary/cross-model (all logits)/ci_high" in bad[0] and "1.20 x the tolerance" in bad[0]
    assert "FAILED" in r.stderr and "Traceback" not in r.stderr
    # a configuration field is compared exactly
    res = json.loads((r1 / "topic_a.json").read_text())
    res["setup"]["student_train"]["lr"] = 2e-3
    res["pairing"] = res["pairing"][::-1]
    (tmp_path / "topic_a.json").write_text(json.dumps(res))
    r = check_cli(tmp_path, r0 / "topic_a.json")
    assert r.returncode == 1
    assert "FAIL: setup/student_train/lr: 0.002 here, committed 0.001" in r.stdout
    assert "FAIL: pairing/0:" in r.stdout


def test_reproduction_check_default_reference_is_the_committed_json(quick_runs, tmp_path):
    committed = U.committed_text(REPO / "results" / "topic_a.json")
    if committed is None:
        pytest.skip("not a git checkout with results/topic_a.json committed")
    # a 3-run result against the committed 25-run one: not comparable, and it says so
    (r1, _) = quick_runs[1]
    r = check_cli(r1, None)
    assert r.returncode == 1
    assert "git show HEAD:results/topic_a.json" in r.stdout
    assert "FAIL: provenance/n_runs: 3 here, committed 25 (must be equal)" in r.stdout
    # the committed file itself is not a regenerated one
    (tmp_path / "topic_a.json").write_text(committed)
    r = check_cli(tmp_path, None)
    assert r.returncode == 2 and "not regenerated" in r.stderr and "Traceback" not in r.stderr
    r = check_cli(tmp_path / "nothing", None)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_different_seed_differs(tmp_path, mnist_dir):
    r = run_script([*QUICK, "--seed", "1", "--data-dir", mnist_dir, "--results-dir", str(tmp_path),
                    "--plots-dir", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    r0 = run_script([*QUICK, "--data-dir", mnist_dir, "--results-dir", str(tmp_path / "s0"),
                     "--plots-dir", str(tmp_path / "s0")])
    a = json.loads((tmp_path / "topic_a.json").read_text())["summary"]["teacher"]["per_run"]
    b = json.loads((tmp_path / "s0" / "topic_a.json").read_text())["summary"]["teacher"]["per_run"]
    assert a != b


@pytest.mark.parametrize("args,msg", [
    (["--runs", "0"], "must be >= 1"),
    (["--runs", "1"], "at least 2"),
    (["--runs", "abc"], "not an integer"),
    (["--lr", "-1"], "must be > 0"),
    (["--loss", "hinge"], "invalid choice"),
    (["--device", "bogus"], "--device"),
])
def test_bad_arguments_give_clear_errors(args, msg):
    r = run_script(args)
    assert r.returncode == 2
    assert msg in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_dataset_gives_clear_error(tmp_path):
    env = {"SUBLIMINAL_DATA_DIR": ""}
    r = run_script(["--runs", "2", "--data-dir", str(tmp_path / "nothing")], cwd=tmp_path, env_extra=env)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "not found" in r.stderr and "--data-dir" in r.stderr and "MNIST/raw" in r.stderr


def test_help_lists_every_flag():
    r = run_script(["--help"])
    assert r.returncode == 0
    for flag in ("--runs", "--seed", "--device", "--data-dir", "--legacy-kl", "--legacy-pairing",
                 "--fixed-noise", "--compare-defects", "--loss", "--check-against-committed"):
        assert flag in r.stdout
    assert "python topic_a.py --runs 25" in r.stdout  # the docstring's regenerate command
    assert "0.25 x the committed 95% CI half-width" in " ".join(r.stdout.split())  # the check's tolerance


def test_ci_runs_the_readme_commands_as_written_in_order():
    readme = (REPO / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2 and "python topic_a.py" in commands[0] and "pytest" in commands[1]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    where = [ci.index(c) for c in commands]  # ValueError: a README command is not in .ci/run as written
    assert where == sorted(where)
    check = ci.index("python topic_a.py --check-against-committed")  # the regenerated result is checked
    assert where[0] < check
    assert "--check-against-committed" in readme.split("## ", 1)[0]  # and the README says so


TINY = ["--runs", "2", "--n-train", "1024", "--n-test", "300", "--teacher-epochs", "1",
        "--student-epochs", "1", "--batch-size", "256", "--no-progress", "--no-cache"]
STEP2 = {
    "topic_a_shared_init_perturb.py": (["--scales", "0", "0.4"], ["summary", "similarity", "reference_vs_teacher"]),
    "topic_a_input_signal.py": (["--alphas", "0", "1", "--dims", "8", "--dim-alphas", "0.5"], ["summary"]),
    "topic_a_num_classes.py": (["--ks", "2", "3", "--dip-ks", "3", "--fixed-count", "4", "--cross-control"], ["summary"]),
    "topic_a_noise_spectrum.py": (["--study", "spectrum", "--epochs", "2", "--n-measure", "500"], ["summary"]),
    "topic_a_factors.py": (["--factors", "aux", "dataset", "--cross-control"],
                           ["summary", "aux_over_bound", "paired_neighbours", "aux_minus_cross",
                            "cross_minus_its_init"]),
    "topic_a_wide_channel.py": (["--hidden", "16", "--aux", "1", "32"],
                                ["summary", "aux_over_bound", "paired_neighbours", "aux_minus_cross"]),
    "topic_a_pretrained_init.py": (["--pretrain-epochs", "1"],
                                   ["summary", "student_gain_over_init", "paired_bound_minus_random"]),
    "topic_a_logit_noise.py": (["--levels", "0", "2"], ["summary", "paired_vs_0"]),
}


@pytest.mark.parametrize("script", list(STEP2))
def test_step2_scripts_run_end_to_end_and_resume(tmp_path, mnist_dir, script):
    extra, keys = STEP2[script]
    args = [*TINY, *extra, "--data-dir", mnist_dir, "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path)]
    r = run_script(args, script=script)
    assert r.returncode == 0, r.stderr
    name = script[:-3]
    res = json.loads((tmp_path / f"{name}.json").read_text())
    assert all(k in res for k in keys) and res["provenance"]["n_runs"] == 2
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    for point in res["points"].values():  # every student scored on every run
        for v in point.values():
            if isinstance(v, dict) and "acc" in v:
                assert len(v["acc"]) == 2 and all(0 <= x <= 1 for x in v["acc"])
    if script == "topic_a_input_signal.py":  # the student minus its cross-model control, paired by run
        for i, alpha in enumerate(("0", "1")):
            p = res["points"][f"alpha={alpha}"]
            d = np.subtract(p["aux only"]["acc"], p["cross-model aux only"]["acc"])
            assert res["summary"]["aux_minus_cross"][i]["mean"] == pytest.approx(d.mean())
        d1 = np.subtract(res["points"]["alpha=1"]["aux only"]["acc"], res["points"]["alpha=0"]["aux only"]["acc"])
        assert res["summary"]["minus_first_alpha"]["aux only"][1]["mean"] == pytest.approx(d1.mean())
    if script == "topic_a_factors.py":  # with 2 runs the derangement swaps them: control i started from init 1 - i
        p = res["points"]["aux=1"]  # one aux logit under KL: no gradient, so the control is exactly its init
        assert p["cross-model aux only"]["acc"] == p["reference"]["acc"][::-1]
        assert res["cross_minus_its_init"]["aux"][0]["mean"] == 0
    if script == "topic_a_pretrained_init.py":  # each pretrained init against random, paired by run
        p, r = res["points"]["Fashion-MNIST"], res["points"]["random"]
        d = np.subtract(p["bound"]["acc"], r["bound"]["acc"])
        assert res["paired_bound_minus_random"]["Fashion-MNIST"]["mean"] == pytest.approx(d.mean())
        g = np.subtract(p["aux only"]["acc"], p["init"]["acc"]) - np.subtract(r["aux only"]["acc"], r["init"]["acc"])
        assert res["paired_gain_minus_random"]["Fashion-MNIST"]["mean"] == pytest.approx(g.mean())
    if script == "topic_a_wide_channel.py":  # neighbouring m and student minus control, paired by run
        p1, p32 = res["points"]["aux=1"], res["points"]["aux=32"]
        d = np.subtract(p32["aux only"]["acc"], p1["aux only"]["acc"])
        assert res["paired_neighbours"]["32 - 1"]["mean"] == pytest.approx(d.mean())
        d = np.subtract(p32["aux only"]["acc"], p32["cross-model aux only"]["acc"])
        assert res["aux_minus_cross"][1]["mean"] == pytest.approx(d.mean())
    if script == "topic_a_num_classes.py":  # paired differences, run by run, per K
        pd = res["summary"]["paired"]
        for i, k in enumerate((2, 3)):
            p = res["points"][f"K={k}"]
            for x, y in (("fixed aux count", "fixed aux ratio"), ("aux only", "cross-model aux only")):
                assert pd[f"{x} - {y}"][i]["mean"] == pytest.approx(np.mean(np.subtract(p[x]["acc"], p[y]["acc"])))
            assert pd["aux only: K - K=2"][i]["mean"] == pytest.approx(
                np.mean(np.subtract(p["aux only"]["acc"], res["points"]["K=2"]["aux only"]["acc"])))
        assert pd["aux only: K - K=2"][0]["mean"] == 0
        rel = res["summary"]["paired_rel_chance"]["fixed aux count: K - K=2"][1]["mean"]
        assert rel == pytest.approx(np.mean(np.subtract(res["points"]["K=3"]["fixed aux count"]["rel_chance"],
                                                        res["points"]["K=2"]["fixed aux count"]["rel_chance"])))
    if script == "topic_a_factors.py":
        p = res["points"]["aux=10"]
        assert res["aux_minus_cross"]["aux"][2]["mean"] == pytest.approx(
            np.mean(np.subtract(p["aux only"]["acc"], p["cross-model aux only"]["acc"])))
    r2 = run_script(args, script=script)  # second run: every point comes from disk
    assert r2.returncode == 0 and "done in" not in r2.stdout and "on disk, reused" in r2.stdout
    assert json.loads((tmp_path / f"{name}.json").read_text())["points"] == res["points"]
    h = run_script(["--help"], script=script)
    assert h.returncode == 0 and "--runs" in h.stdout and f"python {script}" in h.stdout


def test_mechanism_script_reports_bit_identical_digit_rows(tmp_path, mnist_dir):
    r = run_script([*TINY, "--every", "2", "--n-eval", "200", "--data-dir", mnist_dir, "--results-dir", str(tmp_path),
                    "--plots-dir", str(tmp_path)], script="topic_a_mechanism.py")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "topic_a_mechanism.json").read_text())
    assert res["digit_rows_bit_identical"] == [True, True]
    assert res["track"][0]["step"] == 0 and len(res["track"]) >= 2
    assert res["track"][0]["cka_1"] != [1.0, 1.0]  # the reference is not the teacher
    assert (tmp_path / "topic_a_mechanism.png").stat().st_size > 10_000


def test_maximize_frozen_head_teacher_makes_the_bound_the_teacher(tmp_path, mnist_dir):
    """With the teacher's digit rows frozen at the shared init, "teacher body + init digit rows" is
    the teacher itself, so the bound equals the teacher's accuracy run by run."""
    r = run_script(["--runs", "2", "--n-train", "1024", "--n-test", "300", "--no-progress", "--no-cache",
                    "--config", "frozen-head teacher", "--data-dir", mnist_dir, "--results-dir", str(tmp_path),
                    "--plots-dir", str(tmp_path)], script="topic_a_maximize.py")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "topic_a_maximize_frozen_head_teacher.json").read_text())
    s = res["summary"]
    assert s["bound (teacher body + init digit head)"]["per_run"] == s["teacher"]["per_run"]
    assert len(res["student_per_epoch"]) == res["config"]["student_epochs"] == 5
    assert (tmp_path / "topic_a_maximize_frozen_head_teacher.png").stat().st_size > 10_000
    r = run_script(["--runs", "2", "--n-train", "1024", "--n-test", "300", "--no-progress", "--no-cache",
                    "--config", "takehome baseline", "--data-dir", mnist_dir, "--results-dir", str(tmp_path),
                    "--plots-dir", str(tmp_path)], script="topic_a_maximize.py")
    s = json.loads((tmp_path / "topic_a_maximize_takehome_baseline.json").read_text())["summary"]
    assert s["bound (teacher body + init digit head)"]["per_run"] != s["teacher"]["per_run"]


def test_noise_spectrum_control_is_distilled_beside_every_point(tmp_path, mnist_dir):
    """A.8: the cross-model control is scored after every epoch at every point, and the summary pairs
    the aux-only student with it run by run."""
    args = [*TINY, "--study", "spectrum-no-mean", "--epochs", "2", "--n-measure", "500", "--data-dir", mnist_dir,
            "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path)]
    r = run_script(args, script="topic_a_noise_spectrum.py")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "topic_a_noise_spectrum.json").read_text())
    assert len(res["points"]) == 3
    for p in res["points"].values():
        assert len(p["cross_acc_by_epoch"]) == 2 and all(len(e) == 2 for e in p["cross_acc_by_epoch"])
        assert p["cross_acc_by_epoch"] != p["acc_by_epoch"]  # another student, not a copy
    fam = res["summary"]["families"]["spectrum-no-mean"]
    for i, p in enumerate(res["points"].values()):
        d = np.subtract(p["acc_by_epoch"][-1], p["cross_acc_by_epoch"][-1])
        assert fam["aux_minus_cross_long"][i]["mean"] == pytest.approx(d.mean())
        assert fam["cross_long"][i]["mean"] == pytest.approx(np.mean(p["cross_acc_by_epoch"][-1]))
    one = run_script(["--runs", "1", "--study", "spectrum"], script="topic_a_noise_spectrum.py")
    assert one.returncode == 2 and "at least 2" in one.stderr and "Traceback" not in one.stderr


def test_noise_spectrum_steps_are_paired_against_white_noise():
    """A.8: each fit-family point minus white noise (blur sigma=0), run by run, at both budgets."""
    import argparse
    import topic_a_noise_spectrum as A8
    rng = np.random.default_rng(0)
    fams = {"blur": [("sigma=0", 0.0, None), ("sigma=1", 1.0, None)], "subspace": [("dim=8", 8, None)]}
    pts = {f"{f} {lb}": {"acc_by_epoch": rng.uniform(0, 1, (3, 4)).tolist(), "cross_acc_by_epoch": [[0.1] * 4] * 3,
                         **{k: [1.0] for k in A8.PREDICTORS}} for f, items in fams.items() for lb, _, _ in items}
    s = A8.summarise(pts, {**fams, "spectrum": []}, argparse.Namespace(student_epochs=2, epochs=3))
    w = np.array(pts[A8.WHITE]["acc_by_epoch"])
    for fam, lb, i in (("blur", "sigma=1", 1), ("subspace", "dim=8", 0)):
        for budget, ep in (("short", 1), ("long", 2)):
            d = np.array(pts[f"{fam} {lb}"]["acc_by_epoch"][ep]) - w[ep]
            assert s["minus_white"][fam][budget][i]["mean"] == pytest.approx(d.mean())
    assert s["minus_white"]["blur"]["long"][0]["mean"] == 0.0  # the reference minus itself


def test_num_classes_dip_differences_are_paired_by_run():
    """A.5's dip contrast: K = 3 minus K = 2 and K = 4, run by run, in each seed."""
    import argparse
    import topic_a_num_classes as A5
    rng = np.random.default_rng(0)
    students = ("aux only", "all logits", "class only")
    P = {name: {s: {"acc": rng.uniform(0, 1, 4).tolist()} for s in students}
         for k in (2, 3, 4) for name in (f"K={k}", f"K={k} seed=8")}
    a = argparse.Namespace(ks=[2, 3, 4], dip_ks=[2, 3, 4], seed=7)
    out = A5.paired_differences(P, a)
    for seed, fmt in (("seed 7", "K={}"), ("seed 8", "K={} seed=8")):
        for s in students:
            for k in (2, 4):
                want = np.subtract(P[fmt.format(3)][s]["acc"], P[fmt.format(k)][s]["acc"])
                got = out["dip"][seed][s][f"3 - {k}"]
                assert got["mean"] == pytest.approx(want.mean()) and got["n"] == 4
                assert got["std"] == pytest.approx(want.std(ddof=1))  # paired: the spread of differences
    assert out["aux only: K - K=2"][0]["mean"] == 0 and "fixed aux count - aux only" not in out


def test_num_classes_plot_only_redraws_from_a_named_file(tmp_path):
    """--plot-only JSON redraws the figure from that finished file without training; an unfinished
    file gives one clear line."""
    res = json.loads((REPO / "results" / "topic_a_num_classes_10runs.json").read_text())
    f = tmp_path / "finished.json"
    f.write_text(json.dumps(res))
    r = run_script(["--plot-only", str(f), "--plots-dir", str(tmp_path)], script="topic_a_num_classes.py")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "topic_a_num_classes.png").stat().st_size > 10_000
    del res["summary"]
    f.write_text(json.dumps(res))
    r = run_script(["--plot-only", str(f), "--plots-dir", str(tmp_path)], script="topic_a_num_classes.py")
    assert r.returncode == 2 and "no finished results" in r.stderr and "Traceback" not in r.stderr


def test_maximize_search_distills_the_cross_model_control_beside_every_configuration(tmp_path, mnist_dir):
    """A.9's search: every configuration of SEARCH has its cross-model control (another run's init),
    and the summary pairs the student with it run by run."""
    r = run_script(["--search", "--search-runs", "2", "--n-train", "1024", "--n-test", "300", "--no-progress",
                    "--no-cache", "--data-dir", mnist_dir, "--results-dir", str(tmp_path), "--plots-dir",
                    str(tmp_path)], script="topic_a_maximize.py")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "topic_a_maximize_search.json").read_text())
    assert res["config"]["cross_control"] is True
    assert len(res["points"]) == len(res["summary"]) == 6
    for name, p in res["points"].items():
        assert len(p["cross-model control"]) == len(p["student"]) == 2
        s = res["summary"][name]
        d = np.subtract(p["student"], p["cross-model control"]).mean()
        assert s["student minus control"]["mean"] == pytest.approx(d)
        assert s["cross-model control"]["n"] == 2
    assert (tmp_path / "topic_a_maximize_search.png").stat().st_size > 10_000

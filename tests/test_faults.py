"""Fault injection on the files the project writes: every cache is validated when read (a corrupt
entry is reported in one line and rebuilt), a corrupt results JSON stops the script with one line
and is left untouched, a sweep killed with SIGKILL (while computing a point, or while writing it)
resumes with every finished point intact, and two processes sharing a sweep keep each other's
points. Tiny configurations throughout; the two failures of issue 28 (a truncated teacher cache for
topic_a.py, a truncated results/topic_a_wide_channel.json) go through the real scripts."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from conftest import REPO, shared_data_dir

import topic_a_utils as U  # noqa: E402

TINY = ["--runs", "2", "--n-train", "64", "--n-test", "32", "--teacher-epochs", "1", "--student-epochs", "1",
        "--batch-size", "32", "--no-progress"]
WIDE = ["--hidden", "8", "--aux", "1", "3"]
CACHE_LINE = re.compile(r"^cache (\S+) is corrupt \((.+)\); rebuilding$")


def data_args():
    d = shared_data_dir()
    if d is None:
        pytest.skip("real MNIST not found (set SUBLIMINAL_DATA_DIR)")
    return ["--data-dir", d]


def dirs(tmp):
    return ["--results-dir", str(tmp / "results"), "--plots-dir", str(tmp / "plots")]


def cli(main, argv):
    """A script's main() as its command line runs it (U.run_main: a UserError is one line, exit 2)."""
    try:
        U.run_main(lambda: main(argv))
    except SystemExit as e:
        return e.code
    return 0


def messages(err: str) -> list[str]:
    """stderr's lines, less transformers' weight-loading progress bars."""
    return [ln for ln in err.splitlines() if ln.strip() and "it/s]" not in ln]


def one_cache_line(err: str) -> str:
    """The stderr of a run that met one corrupt cache entry: exactly that one line; its path."""
    lines = messages(err)
    assert len(lines) == 1, err
    m = CACHE_LINE.match(lines[0])
    assert m, lines[0]
    return m.group(1)


def run_py(code: str, tmp: Path, env_extra=None, timeout=300):
    env = {**os.environ, "SUBLIMINAL_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# caches
# ----------------------------------------------------------------------------------------------


def test_truncated_teacher_cache_is_rebuilt_by_topic_a(tmp_path, capsys):
    """Issue 28: results/cache/teacher_<key>.pt cut to its first 10 kB; topic_a.py says so in one
    line, retrains the same teacher and overwrites the entry, and its results are unchanged."""
    import topic_a
    argv = [*TINY, *data_args(), *dirs(tmp_path)]
    assert cli(topic_a.main, argv) == 0
    first = json.loads((tmp_path / "results" / "topic_a.json").read_text())["summary"]
    (entry,) = (tmp_path / "results" / "cache").glob("teacher_*.pt")
    good = entry.read_bytes()
    entry.write_bytes(good[:10_000])
    capsys.readouterr()
    assert cli(topic_a.main, argv) == 0
    out, err = capsys.readouterr()
    assert one_cache_line(err) == str(entry)
    assert "teacher trained" in out
    assert entry.stat().st_size == len(good)
    assert json.loads((tmp_path / "results" / "topic_a.json").read_text())["summary"] == first
    assert U.load_cache(entry)["teacher"]["cfg"] == U.MLPConfig().as_dict()  # the rebuilt entry reads back
    assert capsys.readouterr().err == ""


def _tiny_teacher(cache, n_runs=2, hidden=(8, 8), **kw):
    g = torch.Generator().manual_seed(0)
    train = U.Dataset(torch.rand(64, 784, generator=g) * 2 - 1, torch.arange(64) % 10)
    return U.reference_and_teacher(U.MLPConfig(hidden=hidden), n_runs, 0, train, U.TrainConfig(1, 1e-3, 32), "cpu",
                                   cache, {"name": "tiny"}, progress=False, **kw)


def _assert_same(a: U.Ensemble, b: U.Ensemble):
    assert all(torch.equal(x, y) for x, y in zip(a.weights + a.biases, b.weights + b.biases))


def _wrong_config(entry: Path, cache: Path):
    d = torch.load(entry, weights_only=True)
    d["config"]["seed"] = 1  # a teacher of another seed under this configuration's name
    torch.save(d, entry)


def _wrong_shapes(entry: Path, cache: Path):
    d = torch.load(entry, weights_only=True)
    d["teacher"]["weights"][0] = d["teacher"]["weights"][0][:, :4]
    torch.save(d, entry)


def _nan_weights(entry: Path, cache: Path):
    d = torch.load(entry, weights_only=True)
    d["teacher"]["weights"][1][0, 0, 0] = float("nan")
    torch.save(d, entry)


TEACHER_FAULTS = {
    "truncated": lambda e, c: e.write_bytes(e.read_bytes()[:1000]),
    "zero-filled": lambda e, c: e.write_bytes(bytes(e.stat().st_size)),
    "empty": lambda e, c: e.write_bytes(b""),
    "not a torch file": lambda e, c: e.write_text("hello"),
    "not a dict": lambda e, c: torch.save([1, 2], e),
    "wrong config": _wrong_config,
    "wrong shapes": _wrong_shapes,
    "non-finite weights": _nan_weights,
}


@pytest.mark.parametrize("fault", list(TEACHER_FAULTS))
def test_corrupt_teacher_cache_entry_is_reported_and_retrained(tmp_path, capsys, fault):
    ref, teacher, cached = _tiny_teacher(tmp_path)
    assert not cached
    (entry,) = tmp_path.glob("teacher_*.pt")
    TEACHER_FAULTS[fault](entry, tmp_path)
    capsys.readouterr()
    _, again, cached = _tiny_teacher(tmp_path)
    assert one_cache_line(capsys.readouterr().err) == str(entry)
    assert not cached
    _assert_same(again, teacher)  # the same teacher, retrained
    _, loaded, cached = _tiny_teacher(tmp_path)  # the entry was overwritten with a good one
    assert cached and capsys.readouterr().err == ""
    _assert_same(loaded, teacher)


def test_cache_writes_are_atomic_and_leave_no_temporary_file(tmp_path, monkeypatch):
    """A write that fails half way (a full disk) leaves the previous entry, and no *.tmp."""
    path = tmp_path / "entry.pt"
    U.save_cache(path, {"key": 1, "value": torch.ones(3)})
    before = path.read_bytes()

    def fail(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(U.torch, "save", fail)
    with pytest.raises(OSError):
        U.save_cache(path, {"key": 1, "value": torch.zeros(3)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.pt"]


B7_FAULTS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:300]),
    "zero-filled": lambda p: p.write_bytes(bytes(p.stat().st_size)),
    "wrong key": lambda p: torch.save({"key": {"other": 1}, "value": [torch.zeros(2)]}, p),
    "no value": lambda p: torch.save({"key": {"teacher": "owl", "seed": 0}}, p),
}


@pytest.mark.parametrize("fault", list(B7_FAULTS))
def test_corrupt_b7_cache_entry_is_reported_and_remade(tmp_path, capsys, fault):
    """B.7's teacher weights, targets and sampled lists all go through topic_b_utils.cached."""
    B = pytest.importorskip("topic_b_utils")
    key = {"teacher": "owl", "seed": 0}
    made = []

    def make():
        made.append(1)
        return [torch.arange(5.0), {"pairs": [("p", "1, 2, 3")]}]
    path = tmp_path / "cache" / "targets_owl_s0.pt"
    first = B.cached(path, key, make)
    B7_FAULTS[fault](path)
    capsys.readouterr()
    again = B.cached(path, key, make)
    assert one_cache_line(capsys.readouterr().err) == str(path)
    assert len(made) == 2 and torch.equal(again[0], first[0]) and again[1] == first[1]
    B.cached(path, key, make)
    assert len(made) == 2 and capsys.readouterr().err == ""


def test_b7_script_retrains_a_truncated_teacher_cache(tmp_path, capsys):
    """Through topic_b_distill_transfer.py's own Experiment: a fine-tuned teacher's cached weights
    cut short are reported in one line and the same teacher is trained again."""
    pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from test_topic_b_distill import build
    import topic_b_distill_transfer as D
    m = str(build(tmp_path / "m", False))
    a = D.parse_args(["--model", m, "--animals", "owl,eagle", "--examples", "4", "--heldout", "2", "--batch", "2",
                      "--runs", "2", "--teacher-steps", "2", "--results-dir", str(tmp_path / "r"), "--no-progress",
                      "--threads", "0"])
    E = D.Experiment(a)
    st = E.teacher_state("owl")["state"]
    (entry,) = (tmp_path / "r" / "cache").glob("distill_*/teacher_owl_*.pt")
    entry.write_bytes(entry.read_bytes()[:4096])
    capsys.readouterr()
    again = D.Experiment(a).teacher_state("owl")["state"]
    assert one_cache_line(capsys.readouterr().err) == str(entry)
    assert all(torch.equal(st[k], again[k]) for k in st)


def test_corrupt_b6_sampled_data_cache_is_resampled(tmp_path, capsys, monkeypatch):
    """topic_b_finetune_transfer.py's cached teacher samples (JSON): truncated -> one line and
    resampled; sampled with other settings -> said so and resampled."""
    B = pytest.importorskip("topic_b_utils")
    import topic_b_finetune_transfer as F
    calls = []

    def fake_sample(lm, texts, max_new_tokens, seed, *a, **kw):
        calls.append(seed)
        return [("1, 2, 3", True, [1, 2, 3]) for _ in texts]
    monkeypatch.setattr(B, "sample_number_lists", fake_sample)
    monkeypatch.setattr(B, "render", lambda lm, p, system=None, prefix="": p)
    lm = types.SimpleNamespace(name="fixture")
    a = types.SimpleNamespace(seed=0, no_prefill=True, max_new_tokens=8, temperature=1.0, batch_size=4)
    path = tmp_path / "cache" / "finetune_x_animal.json"
    first = F.teacher_data(lm, "sys", ["p1", "p2"], a, str(path), "animal")
    path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    again = F.teacher_data(lm, "sys", ["p1", "p2"], a, str(path), "animal")
    assert one_cache_line(capsys.readouterr().err) == str(path)
    assert again["rows"] == first["rows"] and len(calls) == 2
    a.seed = 1
    F.teacher_data(lm, "sys", ["p1", "p2"], a, str(path), "animal")
    assert "sampled with other settings; resampling" in capsys.readouterr().out and calls == [0, 0, 1]


@pytest.mark.parametrize("fault", ["truncated weights", "zero-filled weights", "no config.json"])
def test_corrupt_dequantised_gguf_checkpoint_is_rebuilt(tmp_path, capsys, monkeypatch, fault):
    """The dequantised checkpoint under the model cache: a partial or corrupt copy is reported in
    one line and dequantised again (the GGUF reader is replaced by a tiny fixture model)."""
    B = pytest.importorskip("topic_b_utils")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from test_topic_b_utils import build
    src = build(tmp_path / "src", False, False)
    made = []

    def fake_dequantise(path):
        made.append(path)
        return AutoModelForCausalLM.from_pretrained(src), AutoTokenizer.from_pretrained(src)
    monkeypatch.setattr(B, "_dequantise", fake_dequantise)
    monkeypatch.setenv("SUBLIMINAL_MODEL_CACHE", str(tmp_path / "models"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF fixture")
    model, _, _ = B.load_gguf(gguf, "cpu", torch.float32, progress=False)
    (cached,) = [p for p in (tmp_path / "models").iterdir() if p.is_dir()]
    if fault == "no config.json":
        (cached / "config.json").unlink()
    else:
        (w,) = cached.glob("*.safetensors")
        w.write_bytes(w.read_bytes()[:200] if fault.startswith("truncated") else bytes(w.stat().st_size))
    capsys.readouterr()
    again, _, notes = B.load_gguf(gguf, "cpu", torch.float32, progress=False)
    assert one_cache_line(capsys.readouterr().err) == str(cached)
    assert len(made) == 2 and "dequantised from GGUF" in notes[0]
    sd = model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in again.state_dict().items())
    _, _, notes = B.load_gguf(gguf, "cpu", torch.float32, progress=False)
    assert len(made) == 2 and "loaded from cache" in notes[0] and messages(capsys.readouterr().err) == []


# ----------------------------------------------------------------------------------------------
# results files
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_done(tmp_path_factory):
    """A finished tiny topic_a_wide_channel.py sweep (two points)."""
    import topic_a_wide_channel as W
    tmp = tmp_path_factory.mktemp("wide")
    assert cli(W.main, [*TINY, *WIDE, *data_args(), *dirs(tmp), "--no-cache"]) == 0
    return json.loads((tmp / "results" / "topic_a_wide_channel.json").read_text())


def _results_line(err: str, path: Path) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"error: results file {path} is corrupt (")
    assert f"git checkout -- {path}" in line and "move it aside" in line
    return line


def test_truncated_wide_channel_results_stop_with_one_line_and_are_left_alone(tmp_path, wide_done):
    """Issue 28: results/topic_a_wide_channel.json cut to 500 bytes; the script stops with one line
    naming the file and the fix (no traceback) and does not touch the file."""
    path = tmp_path / "results" / "topic_a_wide_channel.json"
    path.parent.mkdir()
    path.write_text(json.dumps(wide_done, indent=2)[:500])
    before = path.read_bytes()
    r = subprocess.run([sys.executable, str(REPO / "topic_a_wide_channel.py"), *TINY, *WIDE, *data_args(),
                        *dirs(tmp_path), "--no-cache"], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "SUBLIMINAL_OFFLINE": "1"})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "JSONDecodeError" in _results_line(r.stderr, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # not even a lock or temporary file


RESULT_FAULTS = {
    "zero-filled": lambda t: bytes(len(t)),
    "not UTF-8": lambda t: b"\xff\xfe\x00garbage" + t[:50],
    "a JSON list": lambda t: b"[1, 2, 3]\n",
    "no points": lambda t: json.dumps({**json.loads(t), "points": None}).encode(),
}


@pytest.mark.parametrize("fault", list(RESULT_FAULTS))
def test_corrupt_results_stop_sweep_and_plot_only_with_one_line(tmp_path, wide_done, fault):
    path = tmp_path / "topic_a_wide_channel.json"
    path.write_bytes(RESULT_FAULTS[fault](json.dumps(wide_done).encode()))
    before = path.read_bytes()
    args = types.SimpleNamespace(seed=0, runs=2, device="cpu")
    loads = [lambda: U.Sweep(path, wide_done["config"], args, 0.0)]  # a sweep starting or resuming
    if fault != "no points":  # --plot-only, and every other reader of a results file
        loads += [lambda: U.load_finished(path), lambda: U.load_json(path)]
    for load in loads:
        with pytest.raises(U.UserError) as e:
            load()
        _results_line(f"error: {e.value}", path)
    assert path.read_bytes() == before


def test_results_corrupted_during_a_sweep_are_not_overwritten(tmp_path, wide_done):
    """A file that turns corrupt while a sweep runs (another process, an editor) stops the next save
    with the one line; the file is not overwritten with this process's points."""
    path = tmp_path / "topic_a_wide_channel.json"
    path.write_text(json.dumps(wide_done))
    sweep = U.Sweep(path, wide_done["config"], types.SimpleNamespace(seed=0, runs=2, device="cpu"), 0.0)
    assert sweep.run("aux=1", lambda: pytest.fail("finished point recomputed")) == wide_done["points"]["aux=1"]
    path.write_text(json.dumps(wide_done)[:300])
    before = path.read_bytes()
    with pytest.raises(U.UserError) as e:
        sweep.run("aux=99", lambda: {"acc": [0.5]})
    _results_line(f"error: {e.value}", path)
    assert path.read_bytes() == before


# ----------------------------------------------------------------------------------------------
# killed runs and shared sweeps
# ----------------------------------------------------------------------------------------------

KILL = """
import os, signal, sys
sys.argv = ["topic_a_wide_channel.py"] + {argv!r}
import topic_a_utils as U, topic_a_wide_channel as W
where = {where!r}
if where == "computing":  # SIGKILL inside the second point's computation (after the first was saved)
    real, calls = U.scores_with_bound, []
    def scores(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    U.scores_with_bound = scores
else:  # SIGKILL after the second point's file is written, just before it replaces the first one
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith("topic_a_wide_channel.json") and '"aux=3"' in open(src).read():
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
    os.replace = replace
U.run_main(W.main)
"""


@pytest.mark.parametrize("where", ["computing", "writing"])
def test_sweep_killed_mid_point_resumes_with_finished_points_intact(tmp_path, capsys, wide_done, where):
    import topic_a_wide_channel as W
    argv = [*TINY, *WIDE, *data_args(), *dirs(tmp_path), "--no-cache"]
    r = run_py(KILL.format(argv=argv, where=where), tmp_path)
    assert r.returncode == -signal.SIGKILL, r.stderr
    path = tmp_path / "results" / "topic_a_wide_channel.json"
    on_disk = json.loads(path.read_text())
    assert list(on_disk["points"]) == ["aux=1"]  # the finished point, intact; the killed one absent
    assert on_disk["points"]["aux=1"] == wide_done["points"]["aux=1"]
    capsys.readouterr()
    assert cli(W.main, argv) == 0
    out = capsys.readouterr().out
    assert "[aux=1] on disk, reused" in out and "[aux=3] done" in out  # only the interrupted point redone
    assert json.loads(path.read_text())["points"] == wide_done["points"]  # as if never interrupted


SHARE = """
import json, os, random, sys, time, types
from pathlib import Path
import topic_a_utils as U, topic_b_utils as B
tmp, me = Path(sys.argv[1]), sys.argv[2]
(tmp / f"ready_{{me}}").touch()
while not all((tmp / f"ready_{{p}}").exists() for p in "ab"):
    time.sleep(0.01)
made = B.cached(tmp / "cache" / "teacher.pt", {{"k": 1}},
                lambda: (open(tmp / f"made_by_{{me}}", "w").close(), time.sleep(0.5), {{"w": 1}})[-1])
sweep = U.Sweep(tmp / "sweep.json", {{"shared": True}}, types.SimpleNamespace(seed=0, runs=2, device="cpu"), 0.0)
rng = random.Random(me)
for i in range({n}):
    sweep.run(f"{{me}} {{i}}", lambda: (time.sleep(rng.uniform(0, 0.02)), {{"by": me, "i": i}})[-1])
sweep.run("common", lambda: {{"by": me}})
sweep.save(done_by=me)
print(json.dumps(made))
"""


def test_two_processes_sharing_a_sweep_keep_each_others_points(tmp_path):
    """The README's split of one sweep over two cores (e.g. B.7 with --seeds 2,1,0 in a second
    process): both write the same results file at the same time, and every point of both is there
    at the end; a cache entry both need is made once."""
    n = 40
    code = textwrap.dedent(SHARE.format(n=n))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), me], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in "ab"]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    points = json.loads((tmp_path / "sweep.json").read_text())["points"]
    assert set(points) == {f"{me} {i}" for me in "ab" for i in range(n)} | {"common"}
    assert all(points[f"{me} {i}"] == {"by": me, "i": i} for me in "ab" for i in range(n))
    assert [json.loads(o[0].strip().splitlines()[-1]) for o in outs] == [{"w": 1}, {"w": 1}]
    assert len(list(tmp_path.glob("made_by_*"))) == 1  # one process made the entry, the other waited and read it
    assert not list(tmp_path.glob("*.tmp")) and not list((tmp_path / "cache").glob("*.tmp"))


def test_a_point_replaced_by_another_process_is_not_overwritten_by_a_stale_copy(tmp_path, capsys):
    """topic_a_mechanism_causal.py split over two processes, each rerunning other conditions with more
    runs: the process that saves last read the other's conditions at start, at their old run count,
    and must not write those stale copies back over the reruns (it did, once: issue 27's rows)."""
    args = types.SimpleNamespace(seed=0, runs=2, device="cpu")
    path = tmp_path / "sweep.json"
    first = U.Sweep(path, {"k": 1}, args, 0.0)
    for name in ("x", "y"):
        first.run(name, lambda name=name: {"runs": 10, "name": name})
    a, b = U.Sweep(path, {"k": 1}, args, 0.0), U.Sweep(path, {"k": 1}, args, 0.0)  # both start from the 10-run file
    b.replace("y", lambda: {"runs": 25, "name": "y"}, why="rerun with 25 runs (had 10)")
    a.replace("x", lambda: {"runs": 25, "name": "x"}, why="rerun with 25 runs (had 10)")  # saves after b
    a.save(summary="a's")
    points = json.loads(path.read_text())["points"]
    assert points == {"x": {"runs": 25, "name": "x"}, "y": {"runs": 25, "name": "y"}}
    assert a.points == points  # what a summarises after its save includes b's rerun
    b.save(summary="b's")  # and b, saving last, keeps a's rerun
    assert json.loads(path.read_text())["points"] == points
    assert "[y] rerun with 25 runs (had 10) in" in capsys.readouterr().out


def test_a_process_starting_a_shared_sweep_keeps_the_summary_another_wrote(tmp_path):
    """B.7 pairs split over two processes (--students same / cross): the one that starts (or saves
    a point) before its own finish must not drop the summary already in the file, which WRITEUP
    quotes; once it writes its own summary, that one wins."""
    args = types.SimpleNamespace(seed=0, runs=2, device="cpu")
    path = tmp_path / "sweep.json"
    done = U.Sweep(path, {"k": 1}, args, 0.0)
    done.run("x", lambda: {"v": 1})
    done.save(summary={"gamma": 0.5})
    late = U.Sweep(path, {"k": 1}, args, 0.0)
    late.run("y", lambda: {"v": 2})  # saves a point, no summary of its own yet
    saved = json.loads(path.read_text())
    assert saved["summary"] == {"gamma": 0.5} and set(saved["points"]) == {"x", "y"}
    late.save(summary={"gamma": 0.7})
    assert json.loads(path.read_text())["summary"] == {"gamma": 0.7}
    other = U.Sweep(path, {"k": 2}, args, 0.0)  # another configuration starts over: nothing kept
    other.run("z", lambda: {"v": 3})
    assert "summary" not in json.loads(path.read_text())

"""WRITEUP.md stays true: every number it marks as coming from a results file equals that file's
value (to the digits shown), and every figure it embeds exists.

Marking a number: write it followed by an HTML comment naming the JSON file (relative to
results/) and the path of keys inside it, separated by '/', e.g.
    0.649<!-- topic_a.json summary/student (aux only)/mean -->
A '%' right after the number means the JSON value is a fraction shown in percent. The comment is
invisible when the markdown is rendered.

The numbers are checked against the results the write-up was written from: the committed version of
each file (`git show HEAD:results/<file>`), falling back to the working file outside a git checkout
or when the file is not committed. So regenerating a result (the README's first command, on a CPU
whose float order differs) does not break this test; whether the regenerated result agrees with the
committed one is the reproduction check's question (`python topic_a.py --check-against-committed`).
Updating a result and the write-up together: commit the result first.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import topic_a_utils as U
from conftest import REPO

MARK = re.compile(r"(-?\d+(?:\.\d+)?)(%?)<!--\s*(\S+\.json)\s+(.+?)\s*-->")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img[^>]*src=\"([^\"]+)\"")


def lookup(obj, path: str):
    for key in path.split("/"):
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    return obj


def results_text(f: Path) -> str | None:
    """The committed version of a results file; the working file outside git or when not committed."""
    text = U.committed_text(f)
    if text is None and f.is_file():
        text = f.read_text()
    return text


def check(text: str, root: Path = REPO) -> tuple[list[str], int]:
    """Errors found, and how many marked numbers were checked."""
    errors, cache = [], {}
    marks = MARK.findall(text)
    for shown, pct, fname, path in marks:
        if fname not in cache:
            raw = results_text(root / "results" / fname)
            cache[fname] = None if raw is None else json.loads(raw)
        data = cache[fname]
        if data is None:
            errors.append(f"{fname}: no such results file (quoted {shown})")
            continue
        try:
            value = float(lookup(data, path))
        except (KeyError, IndexError, ValueError, TypeError) as e:
            errors.append(f"{fname} {path}: cannot read ({e!r})")
            continue
        value = value * 100 if pct else value
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        if abs(float(shown) - value) > 0.5 * 10 ** -decimals + 1e-9:
            errors.append(f"{fname} {path}: WRITEUP says {shown}{pct}, results say {value:.{decimals + 2}f}")
    for m in IMAGE.finditer(text):
        src = m.group(1) or m.group(2)
        if not src.startswith("http") and not (root / src).is_file():
            errors.append(f"embedded figure {src} does not exist")
    return errors, len(marks)


def test_writeup_numbers_match_results_and_figures_exist():
    text = (REPO / "WRITEUP.md").read_text()
    errors, n = check(text)
    assert not errors, "\n".join(errors)
    assert n >= 10  # the writeup does quote its results


def test_checker_catches_an_edited_number():
    text = (REPO / "WRITEUP.md").read_text()
    m = MARK.search(text)
    assert m is not None
    shown = m.group(1)
    digits = shown.split(".")[1] if "." in shown else ""
    bumped = f"{float(shown) + 3 * 10 ** -len(digits):.{len(digits)}f}"
    edited = text[:m.start(1)] + bumped + text[m.end(1):]
    errors, _ = check(edited)
    assert errors and shown != bumped
    errors, _ = check(text + "\n![missing](plots/does_not_exist.png)\n")
    assert any("does_not_exist" in e for e in errors)


def test_no_unanswered_placeholders():
    text = (REPO / "WRITEUP.md").read_text()
    for bad in ("TODO", "[value]", "[overlap/do not overlap]", "[may be noise / appears to be a real effect]"):
        assert bad not in text, bad


def test_numbers_are_checked_against_the_committed_results(tmp_path):
    """A regenerated (uncommitted) results file does not decide the check; the committed one does.
    Outside git, or for a file not committed, the working file is read."""
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                       env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t", "PATH": os.environ["PATH"], "HOME": str(tmp_path)})

    res = tmp_path / "results"
    res.mkdir()
    (res / "x.json").write_text(json.dumps({"summary": {"mean": 0.6489}}))
    quoted = "0.649<!-- x.json summary/mean -->"
    assert check(quoted, tmp_path) == ([], 1)  # not a git checkout: the working file
    git("init", "-q")
    git("add", "results/x.json")
    git("commit", "-q", "-m", "results")
    (res / "x.json").write_text(json.dumps({"summary": {"mean": 0.6412}}))  # regenerated elsewhere
    assert check(quoted, tmp_path) == ([], 1)
    errors, _ = check("0.641<!-- x.json summary/mean -->", tmp_path)
    assert errors and "results say 0.64890" in errors[0]
    (res / "y.json").write_text(json.dumps({"summary": {"mean": 0.5}}))  # not committed: the working file
    assert check("0.50<!-- y.json summary/mean -->", tmp_path) == ([], 1)
    errors, _ = check("0.50<!-- z.json summary/mean -->", tmp_path)
    assert errors and "no such results file" in errors[0]

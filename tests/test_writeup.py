"""WRITEUP.md stays true: every number it marks as coming from a results file equals that file's
value (to the digits shown), and every figure it embeds exists.

Marking a number: write it followed by an HTML comment naming the JSON file (relative to
results/) and the path of keys inside it, separated by '/', e.g.
    0.649<!-- topic_a.json summary/student (aux only)/mean -->
A '%' right after the number means the JSON value is a fraction shown in percent. The comment is
invisible when the markdown is rendered.
"""
import json
import re
from pathlib import Path

from conftest import REPO

MARK = re.compile(r"(-?\d+(?:\.\d+)?)(%?)<!--\s*(\S+\.json)\s+(.+?)\s*-->")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img[^>]*src=\"([^\"]+)\"")


def lookup(obj, path: str):
    for key in path.split("/"):
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    return obj


def check(text: str, root: Path = REPO) -> tuple[list[str], int]:
    """Errors found, and how many marked numbers were checked."""
    errors, cache = [], {}
    marks = MARK.findall(text)
    for shown, pct, fname, path in marks:
        f = root / "results" / fname
        if not f.is_file():
            errors.append(f"{fname}: no such results file (quoted {shown})")
            continue
        data = cache.setdefault(fname, json.loads(f.read_text()))
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

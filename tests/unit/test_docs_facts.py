"""Facts the docs state about the checkout itself hold: the test commands they list, the benchmark names.

No daemon: these read tox.ini, scripts/test, the benchmark runner's ``--list`` and the pages. The
docs' code blocks are run by ``tests/integration/test_docs.py``.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(path: str) -> str:
    with open(os.path.join(CHECKOUT, path), encoding="utf-8") as f:
        return f.read()


def _pages() -> dict[str, str]:
    docs = sorted(f"docs/{n}" for n in os.listdir(os.path.join(CHECKOUT, "docs")) if n.endswith(".rst"))
    return {page: _read(page) for page in ["README.md", *docs]}


def _envlist() -> list[str]:
    tox = configparser.ConfigParser()
    tox.read(os.path.join(CHECKOUT, "tox.ini"))
    return [e.strip() for e in tox["tox"]["envlist"].split(",")]


def _test_command_envs() -> str:
    found = re.findall(r"tox -e (\S+)", _read("scripts/test"))
    assert len(found) == 1, found
    return found[0]


def test_readme_says_what_plain_tox_runs() -> None:
    row = [line for line in _read("README.md").splitlines() if line.startswith("| `tox` |")]
    assert len(row) == 1, row
    listed = re.findall(r"`([\w-]+)`", row[0].split("(", 1)[1])
    assert listed == _envlist(), f"README's tox row lists {listed}; tox.ini's envlist is {_envlist()}"


def test_readme_and_quickstart_list_what_scripts_test_runs() -> None:
    envs = _test_command_envs()
    assert "lint" in envs.split(",") and "py" in envs.split(",")  # the parse found the real list
    for page in ("README.md", "docs/quickstart.rst"):
        listed = re.findall(r"tox -e ([\w,-]+,[\w,-]+)", _read(page))
        assert listed == [envs], f"{page} lists {listed} as ./scripts/test's tox envs; scripts/test runs {envs}"


def _benchmark_names() -> set[str]:
    out = subprocess.run([sys.executable, os.path.join(CHECKOUT, "benchmarks", "run.py"), "--list"],
                         capture_output=True, text=True, timeout=60, check=True)
    names = set(out.stdout.split())
    assert {"lifecycle", "exec", "concurrent-exec"} <= names, names
    return names


def test_every_benchmark_named_in_the_docs_exists() -> None:
    """``--only NAME`` / ``--skip NAME`` in any page, and the bench column of the results table."""
    names = _benchmark_names()
    mentioned: list[tuple[str, str]] = []
    for page, text in _pages().items():
        for arg in re.findall(r"--(?:only|skip)(?:\s+|=)(?:``\s*)?([\w,-]+)", text):
            mentioned += [(page, name) for name in arg.split(",")]
    assert len(mentioned) >= 8, mentioned  # the pages name benchmarks in many places: a parse that finds few is wrong
    table = _read("docs/benchmarks.rst").split(".. list-table:: Results (medians; ratio = SDK / reference)", 1)[1]
    table = re.split(r"\n\n(?=\S)", table, maxsplit=1)[0]
    rows = re.findall(r"^\s+\* - (\S+)\s*$", table, flags=re.M)
    assert rows[0] == "bench" and len(rows) > 10, rows
    mentioned += [("docs/benchmarks.rst (results table)", name) for name in rows[1:]]
    unknown = [(page, name) for page, name in mentioned if name not in names]
    assert not unknown, f"not benchmark names (benchmarks/run.py --list: {sorted(names)}): {unknown}"

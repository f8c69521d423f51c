"""The benchmark script still runs: a quick lifecycle benchmark prints its ratio lines.

Only that the code works is checked here, never how fast anything is (no timed asserts).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from libcontainerd import testing

RUN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks", "run.py")


def test_quick_lifecycle_benchmark_prints_ratios(tmp_path):
    testing.require_containerd()
    testing.require_tools("ctr")
    out_json = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, RUN, "--quick", "--only", "lifecycle", "--json", str(out_json)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("lifecycle")]
    assert len(lines) >= 2, result.stdout
    assert all(re.search(r"\s\d+\.\d\dx\s", line) for line in lines), lines
    checked = [line for line in lines if re.search(r"\s(PASS|MISS)\s", line)]
    assert {"raw stubs" in line for line in checked} == {True, False}, lines  # vs raw stubs and vs ctr
    data = json.loads(out_json.read_text())
    assert {r["reference"] for r in data["results"]} == {"raw stubs", "ctr run --rm"}
    assert {r["verdict"] for r in data["results"]} <= {True, False, None}
    assert all(r["ratio"] > 0 for r in data["results"])
    assert data["machine"]["containerd"]


def test_startup_benchmark_runs_without_unbuffered_output(tmp_path):
    """As under tox, which does not pass PYTHONUNBUFFERED: the measuring subprocesses still report."""
    testing.require_containerd()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, RUN, "--quick", "--only", "startup"],
                            capture_output=True, text=True, timeout=120, check=False, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("startup")]
    assert len(rows) == 3 and any("idle client RSS growth" in row for row in rows), result.stdout


def test_quick_checkpoint_benchmark_prints_ratios(tmp_path, criu):
    testing.require_tools("ctr")
    result = subprocess.run([sys.executable, RUN, "--quick", "--only", "checkpoint"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("checkpoint")]
    assert len(rows) == 2 and all(re.search(r"\s\d+\.\d\dx\s", row) for row in rows), result.stdout
    assert "ctr c checkpoint --task" in rows[0] and "ctr c restore --live" in rows[1]

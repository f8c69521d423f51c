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


GO = "Go client (gobench)"


def test_quick_lifecycle_benchmark_prints_ratios(tmp_path):
    """Without gobench (as on a machine without Go) the run succeeds and the Go row says "missing"."""
    testing.require_containerd()
    testing.require_tools("ctr")
    out_json = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, RUN, "--quick", "--only", "lifecycle", "--gobench", "", "--json", str(out_json)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("lifecycle")]
    measured = [line for line in lines if GO not in line]
    assert len(measured) >= 2, result.stdout
    assert all(re.search(r"\s\d+\.\d\dx\s", line) for line in measured), lines
    checked = [line for line in lines if re.search(r"\s(PASS|MISS)\s", line)]
    assert {"raw stubs" in line for line in checked} == {True, False}, lines  # vs raw stubs (time, CPU) and vs ctr
    assert [re.search(r"\smissing\s", line) is not None for line in lines if GO in line] == [True], lines
    data = json.loads(out_json.read_text())
    assert {r["reference"] for r in data["results"]} == {"raw stubs", "raw stubs + bare reader", "ctr run --rm", GO}
    assert {r["verdict"] for r in data["results"]} <= {True, False, None}
    assert all(r["ratio"] > 0 for r in data["results"] if r["reference"] != GO)
    assert [(r["ref_value"], r["ratio"]) for r in data["results"] if r["reference"] == GO] == [(None, None)]
    assert data["machine"]["containerd"]


def test_a_failing_go_reference_leaves_the_other_rows(tmp_path):
    """A gobench that fails (here /bin/false) marks only its own row missing, with the reason."""
    testing.require_containerd()
    testing.require_tools("ctr")
    out_json = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, RUN, "--quick", "--only", "exec", "--gobench", "/bin/false", "--json", str(out_json)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out_json.read_text())["results"]
    go = [r for r in rows if r["reference"] == GO]
    assert len(go) == 1 and go[0]["ref_value"] is None and "gobench -mode exec failed" in go[0]["note"], go
    assert all(r["ratio"] > 0 for r in rows if r["reference"] != GO), rows


def test_one_column_per_containerd(tmp_path):
    """--containerd runs the benchmarks on the given binary in a child run and prints its version as a column."""
    testing.require_containerd()
    testing.require_tools("ctr")
    binary = testing.containerd_tool("containerd")
    assert binary is not None
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.split()[2]
    result = subprocess.run(
        [sys.executable, RUN, "--quick", "--only", "lifecycle", "--gobench", "", "--containerd", binary],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    head = [line for line in lines if line.startswith("bench ") and "SDK / reference" in line]
    assert len(head) == 1 and f"containerd {version.lstrip('v')}" in head[0], lines[-12:]
    matrix = lines[lines.index(head[0]):]  # the child's own table comes first
    cells = [line for line in matrix if line.startswith("lifecycle") and "raw stubs" in line and "CPU" not in line]
    assert len(cells) == 1 and re.search(r"\d / \d+\.?\d* = \d+\.\d\dx", cells[0]), lines[-12:]


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


def test_scale_stdio_benchmark_reports_per_container_rows(tmp_path):
    """Three and four held containers: every per-container row is there for the SDK and the raw stubs,
    the growth row compares the two sizes, and a missed target is a MISS row, not a failed run."""
    testing.require_containerd()
    testing.require_tools("ctr")
    out_json = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, RUN, "--quick", "--only", "scale_stdio", "--scale-sizes", "3,4", "--gobench", "",
         "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out_json.read_text())
    assert data["failed"] == []
    rows = {r["metric"]: r for r in data["results"] if r["bench"] == "scale-stdio"}
    for n in (3, 4):
        for metric in ("threads per running container", "fds per running container (stdout+stderr)",
                       "RSS per running container", "exit -> backend, p99"):
            assert f"{n} held: {metric}" in rows, sorted(rows)
        for phase in ("start", "exec", "stop"):
            for what in ("wall", "client CPU"):
                row = rows[f"{n}: {phase}, {what} per container"]
                assert row["reference"] == "raw stubs, same" and row["ratio"] > 0, row
        # each held container has its stdout and stderr FIFOs open in the client today
        assert rows[f"{n} held: fds per running container (stdout+stderr)"]["sdk"] >= 2
        assert rows[f"{n} held: threads the client started"]["verdict"] in (True, False)
        close = rows[f"{n} held: close() of a client with {n} attached"]
        assert close["unit"] == "s" and "left behind" in close["note"], close
    growth = rows["cost per container, 4 vs 3: start+exec+stop wall"]
    assert growth["sdk"] > 0 and "threads" in growth["note"], growth

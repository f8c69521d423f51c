"""Benchmarks of libcontainerd against ctr and the raw gRPC stubs, on a private containerd.

Run with ``tox -e bench`` or ``python benchmarks/run.py [--quick] [--only a,b] [--json [PATH]]``.
This script owns the run: it starts a private containerd under a temp dir (never the system
one), builds a busybox rootfs, runs the chosen cases from ``cases.py``, prints a table of
medians and SDK/reference ratios with PASS/MISS against the targets, and removes everything
it made. It never fails because a target was missed; it fails only when a case breaks.
containerd's Go client is a reference when ``gobench`` is built (``--gobench``, or found in
.cache); without it those rows say "missing". ``--matrix`` (or ``--containerd PATH``, repeated)
runs the same benchmarks once per containerd, each in a child run, and prints a column per version.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cases import BENCHMARKS as CASES
from cases import Env, Result
from refs import find_gobench
from restarts import bench_restarts
from scale_stdio import bench_scale_stdio

import libcontainerd
from libcontainerd import testing

BENCHMARKS = {**CASES, "restarts": bench_restarts, "scale_stdio": bench_scale_stdio}


def machine(address: str) -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with libcontainerd.new_client(address, tempfile.gettempdir(), "bench-info", None) as client:
        version = client.version()
    try:
        import grpc

        grpc_version = grpc.__version__
    except Exception:
        grpc_version = "?"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "containerd": version.version,
        "python": platform.python_version(),
        "grpcio": grpc_version,
        "cgroup": "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1",
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 10000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ref(reference: str, value: float | None) -> str:
    return "missing" if reference and value is None else _fmt(value)


def _lay_out(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def table(results: list[Result]) -> str:
    head = ["bench", "metric", "unit", "SDK", "reference", "ref", "ratio", "target", "check", "n"]
    rows = [head]
    for r in results:
        ratio = r.ratio
        verdict = "" if r.verdict is None else ("PASS" if r.verdict else "MISS")
        rows.append([
            r.bench, r.metric, r.unit, _fmt(r.sdk), r.reference, _ref(r.reference, r.ref_value),
            "-" if ratio is None else f"{ratio:.2f}x", r.target, verdict, str(r.n),
        ])
    lines = _lay_out(rows)
    notes = [f"  [{r.bench}] {r.metric}: {r.note}" for r in results if r.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run: few iterations, 128 MiB of stdout")
    p.add_argument("--only", action="append", default=[], metavar="NAMES",
                   help=f"comma-separated benchmarks to run (of: {', '.join(BENCHMARKS)}); repeatable")
    p.add_argument("--skip", action="append", default=[], metavar="NAMES", help="comma-separated benchmarks to skip")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the results as JSON to PATH (or stdout, instead of the table)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--gobench", metavar="PATH",
                   help="containerd's Go client benchmark (../shared/gobench) as a reference; default: "
                        ".cache/gobench if built; '' = none")
    p.add_argument("--containerd", action="append", default=[], metavar="PATH",
                   help="run once on each of these containerd binaries (repeatable) and print a column per version")
    p.add_argument("--matrix", action="store_true",
                   help="run once on each containerd that scripts/bootstrap fetched into .cache/containerd")
    p.add_argument("--scale-sizes", default="", metavar="N,N",
                   help="container counts for scale_stdio (default 100,500; --quick: 10,30)")
    p.add_argument("-v", "--verbose", action="store_true", help="log libcontainerd warnings")
    args = p.parse_args(argv)
    only = [n for group in args.only for n in group.split(",") if n]
    skip = {n for group in args.skip for n in group.split(",") if n}
    unknown = [n for n in [*only, *skip] if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    args.selected = [n for n in (only or list(BENCHMARKS)) if n not in skip]
    try:
        args.scale_sizes = tuple(int(n) for n in args.scale_sizes.split(",") if n)
    except ValueError:
        p.error(f"--scale-sizes: not a list of numbers: {args.scale_sizes!r}")
    if any(n < 1 for n in args.scale_sizes):
        p.error("--scale-sizes: counts must be >= 1")
    return args


CACHED_CONTAINERDS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "containerd")


def cached_containerds() -> list[str]:
    """The containerd binaries of .cache/containerd (1.6, 1.7, 2), oldest first."""
    try:
        names = os.listdir(CACHED_CONTAINERDS)
    except FileNotFoundError:
        return []
    paths = [os.path.join(CACHED_CONTAINERDS, n, "usr", "bin", "containerd") for n in names]
    found = [p for p in paths if os.access(p, os.X_OK)]
    return sorted(found, key=lambda p: [int(x) for x in re.findall(r"\d+", os.path.relpath(p, CACHED_CONTAINERDS))])


def matrix(args: argparse.Namespace, binaries: list[str]) -> int:
    """Run the selected benchmarks once per containerd (child runs) and print a column per version."""
    runs: list[tuple[str, dict[str, Any]]] = []
    rc = 0
    tmp = tempfile.mkdtemp(prefix="lcd-bench-matrix-")
    try:
        for k, binary in enumerate(binaries):
            out = os.path.join(tmp, f"{k}.json")
            argv = [sys.executable, os.path.abspath(__file__), "--json", out, "--only", ",".join(args.selected)]
            argv += ["--quick"] * args.quick + ["--gobench", args.gobench_path or ""] + ["-v"] * args.verbose
            argv += ["--scale-sizes", ",".join(map(str, args.scale_sizes))] if args.scale_sizes else []
            print(f"== {binary}", flush=True)
            child = subprocess.run(argv, env={**os.environ, "LIBCONTAINERD_CONTAINERD": binary}, check=False)
            rc = rc or child.returncode
            if os.path.exists(out):
                with open(out, encoding="utf-8") as f:
                    runs.append((binary, json.load(f)))
    finally:
        _rmtree(tmp)
    if not runs:
        return rc or 1
    keys: list[tuple[str, str, str]] = []
    cells: dict[tuple[str, str, str, int], str] = {}
    for k, (_, data) in enumerate(runs):
        for r in data["results"]:
            key = (r["bench"], r["metric"], r["reference"])
            if key not in keys:
                keys.append(key)
            ratio = "" if r["ratio"] is None else f" = {r['ratio']:.2f}x"
            cells[(*key, k)] = f"{_fmt(r['sdk'])} / {_ref(r['reference'], r['ref_value'])}{ratio}"
    head = ["bench", "metric", "SDK / reference", *(f"containerd {d['machine']['containerd']}" for _, d in runs)]
    rows = [head] + [[b, m, ref or "-", *(cells.get((b, m, ref, k), "") for k in range(len(runs)))]
                     for b, m, ref in keys]
    print()
    print("\n".join(_lay_out(rows)))
    print("\n".join(f"  {d['machine']['containerd']}: {binary}" for binary, d in runs))
    return rc


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    args.gobench_path = find_gobench(args.gobench)
    binaries = args.containerd or (cached_containerds() if args.matrix else [])
    if args.matrix and not binaries:
        print(f"no containerd in {CACHED_CONTAINERDS} (run ./scripts/bootstrap)", file=sys.stderr)
        return 2
    if binaries:
        return matrix(args, binaries)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR, stream=sys.stderr)
    testing.require_containerd()
    if testing.containerd_tool("ctr") is None:
        print("ctr is needed for the references (apt-get install containerd)", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="lcd-bench-")
    daemon = None
    results: list[Result] = []
    failed: list[str] = []
    to_json = args.json == "-"
    log = sys.stderr if to_json else sys.stdout
    try:
        # scripts/build-criu builds a CRIU into the checkout's cache where the system's cannot dump
        built = glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "criu",
                                       "*", "bin", "criu"))
        criu = testing.find_criu(sorted(built, reverse=True))
        runtime_dir = os.path.join(tmp, "xdg")  # where containerd 1.6 leaves each restored checkpoint
        os.mkdir(runtime_dir, 0o700)
        daemon = testing.start_daemon(tmp, health_failures=0, env=testing.daemon_env(criu, runtime_dir))
        rootfs = testing.busybox_rootfs(os.path.join(tmp, "rootfs"))
        env = Env(address=daemon.address, rootfs=rootfs, work=tmp, quick=args.quick, criu=criu,
                  gobench=args.gobench_path, scale_sizes=args.scale_sizes)
        info = machine(daemon.address)
        info["gobench"] = args.gobench_path
        print(f"machine: {info['nproc']} x {info['cpu']}, kernel {info['kernel']}, containerd {info['containerd']}, "
              f"cgroup {info['cgroup']}, python {info['python']}, grpcio {info['grpcio']}; {info['date']}"
              + (" (quick)" if args.quick else ""), file=log, flush=True)
        print(f"Go client reference: {args.gobench_path or 'missing (no gobench built; see docs/benchmarks.rst)'}",
              file=log, flush=True)
        t_start = time.monotonic()
        for name in args.selected:
            t0 = time.monotonic()
            print(f"running {name} ...", file=log, flush=True)
            try:
                rows = BENCHMARKS[name](env)
            except Exception as exc:
                logging.getLogger("bench").exception("benchmark %s failed", name)
                failed.append(f"{name}: {exc}")
                continue
            results.extend(rows)
            print(f"  {name}: {time.monotonic() - t0:.1f} s", file=log, flush=True)
        info["elapsed_s"] = round(time.monotonic() - t_start, 1)
    finally:
        if daemon is not None:
            daemon.stop()
            testing.cleanup_root(daemon)
        _rmtree(tmp)
    if to_json:
        json.dump({"machine": info, "quick": args.quick, "results": [r.as_dict() for r in results],
                   "failed": failed}, sys.stdout, indent=2)
        print()
    else:
        print()
        print(table(results))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"machine": info, "quick": args.quick, "results": [r.as_dict() for r in results],
                           "failed": failed}, f, indent=2)
    for f_ in failed:
        print(f"FAILED {f_}", file=sys.stderr)
    return 1 if failed else 0


def _rmtree(path: str) -> None:
    # cleanup_root unmounted what containerd mounted; the rootfs and scratch files are plain files.
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


if __name__ == "__main__":
    sys.exit(main())

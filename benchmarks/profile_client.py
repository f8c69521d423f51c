"""Where the client's CPU goes per lifecycle and per exec: a driver to run under py-spy, and its summary.

    py-spy record -r 250 --gil --threads -f raw -o /tmp/lc.txt -- python benchmarks/profile_client.py lifecycle 300
    python benchmarks/profile_client.py summary /tmp/lc.txt 300 250

The driver starts a private containerd (never the system one), builds a busybox rootfs, warms up
(:func:`warm_up`), then runs ``count`` lifecycles (create -> start -> wait -> delete of ``true``) or
``count`` execs (``true`` into one sleeping task) inside :func:`measured`, and prints the process's
CPU per operation (all threads, gRPC's C core included). ``py-spy --gil`` samples only the thread
holding the GIL: where the Python-level CPU goes (without ``--gil``, threads blocked inside gRPC's C
core count as busy and the totals look like wall time). The summary keeps the main thread's samples
inside :func:`measured` and every sample of the client's other threads (idle outside it), and prints
ms per operation by thread, by the frames that take most of it (inclusive), and by leaf frame.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cases import NullBackend

import libcontainerd
from libcontainerd import oci, testing

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def measured(client: libcontainerd.Client, rootfs: str, mode: str, count: int, tag: str) -> None:
    if mode == "lifecycle":
        spec = oci.default_spec(rootfs, ["true"])
        for i in range(count):
            ctr = client.new_container(f"{tag}{i}", spec)
            task = ctr.start()
            task.wait()
            task.delete()
            ctr.delete()
    else:
        task = client.load_container("sleeper").task()
        pspec = oci.process_spec(["true"])
        for i in range(count):
            p = task.exec(f"{tag}{i}", pspec)
            p.wait()
            p.delete()


def warm_up(client: libcontainerd.Client, rootfs: str, mode: str) -> None:
    """Lazy imports and first connections; its samples are left out of the summary by this frame."""
    measured(client, rootfs, mode, 5, "warm")


def drive(mode: str, count: int) -> None:
    tmp = tempfile.mkdtemp(prefix="lcd-profile-")
    daemon = testing.start_daemon(tmp, health_failures=0)
    try:
        rootfs = testing.busybox_rootfs(os.path.join(tmp, "rootfs"))
        with libcontainerd.new_client(daemon.address, os.path.join(tmp, "state"), "profile", NullBackend(),
                                      timeout=120) as client:
            try:
                if mode == "exec":
                    client.new_container("sleeper", oci.default_spec(rootfs, ["sleep", "3600"])).start()
                warm_up(client, rootfs, mode)
                c0, t0 = time.process_time(), time.perf_counter()
                measured(client, rootfs, mode, count, "op")
                cpu, wall = time.process_time() - c0, time.perf_counter() - t0
                print(f"{mode}: {cpu / count * 1e3:.2f} ms CPU (all threads) and "
                      f"{wall / count * 1e3:.1f} ms wall per op", flush=True)
            finally:
                testing.remove_containers(client)
    finally:
        daemon.stop()
        testing.cleanup_root(daemon)
        subprocess.run(["rm", "-rf", "--one-file-system", tmp], check=False)


def _frame(text: str) -> tuple[str, str]:
    m = _FRAME.match(text)
    return (m["func"], os.path.basename(m["file"])) if m else (text, "")


def summary(path: str, count: int, rate: float) -> None:
    by_thread: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            stack, _, n_ = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            thread = frames[0].partition(": ")[2] or "?"
            kind = re.sub(r"[-_]?\d+$", "", thread)
            funcs = [_frame(fr) for fr in frames[1:]]
            if kind == "libcontainerd-supervisor":
                continue  # the driver's own private containerd's supervisor, not the client
            names = {func for func, _ in funcs}
            if "warm_up" in names or (kind in ("MainThread", "?") and "measured" not in names):
                continue  # set-up and warm-up of the main thread (unnamed in its first samples)
            n = int(n_)
            total += n
            by_thread[kind] += n
            seen = set()
            for func, file in funcs:
                key = f"{func} ({file})"
                if key not in seen and func not in ("measured", "drive", "<module>") and "threading" not in file:
                    seen.add(key)
                    inclusive[key] += n
            if funcs:
                leaf[f"{funcs[-1][0]} ({funcs[-1][1]})"] += n
    per_op = 1000.0 / rate / count

    def show(title: str, counter: Counter[str], k: int) -> None:
        print(title)
        for key, n in counter.most_common(k):
            print(f"  {n * per_op:6.2f} ms  {100.0 * n / total:5.1f}%  {key}")

    print(f"{total} samples at {rate:g} Hz over {count} ops: {total * per_op:.2f} ms per op holding the GIL")
    show("by thread:", by_thread, 8)
    show("inclusive, top frames:", inclusive, 25)
    show("self (leaf) frames:", leaf, 12)


if __name__ == "__main__":
    if sys.argv[1] == "summary":
        summary(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        drive(sys.argv[1], int(sys.argv[2]))

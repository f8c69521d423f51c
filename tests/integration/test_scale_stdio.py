"""Many containers with stdio on one client: constant threads, two FIFOs each, no consumer holding up another.

Issue 12: the FIFO data of every process of a client moves on one I/O loop thread (plus a
bounded pool for the caller's own files), never a thread per stream. The first test holds the
issue's 500 containers (about 40 s here); ``LIBCONTAINERD_SCALE_N`` sets another count.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import signal
import threading
import time
from typing import Any, Callable

import libcontainerd
from libcontainerd import stdio, testing
from libcontainerd.types import EventType

from ..helpers import listing, spec, wait_until

SCALE_N = int(os.environ.get("LIBCONTAINERD_SCALE_N", "500"))
WAIT = 120.0
_STARTERS = 8


def _each(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(0..n-1)`` on a few threads (a service's worker pool), joined before returning."""
    with concurrent.futures.ThreadPoolExecutor(_STARTERS, thread_name_prefix="test-scale") as pool:
        return list(pool.map(fn, range(n)))


def _new_threads(baseline: list[threading.Thread]) -> list[str]:
    """Threads started since ``baseline``, without the event pool's idle-expiring workers."""
    return [n for n in testing.leftover_threads(baseline, prefix="")
            if not re.fullmatch(r"libcontainerd-events-\d+", n)]


def _stdio_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("libcontainerd-stdio-"))


Held = tuple[libcontainerd.Container, libcontainerd.Task, stdio.Capture]


def _hold(client: libcontainerd.Client, rootfs: str, first: int, n: int) -> list[Held]:
    def start(i: int) -> Held:
        i += first
        script = f"echo up-{i}; echo err-{i} >&2; exec sleep 1000"
        ctr = client.new_container(f"held-{i}", spec(rootfs, "sh", "-c", script))
        out = stdio.capture()
        return ctr, ctr.start(attach_stdio=out), out

    held = _each(n, start)
    assert wait_until(lambda: all(out.stdout and out.stderr for _, _, out in held), timeout=WAIT)
    return held


def test_many_containers_with_stdio_on_constant_threads(client, rootfs):
    client.version()
    baseline = threading.enumerate()
    fds0 = testing.open_fds()
    small = 10
    held = _hold(client, rootfs, 0, small)
    threads_small, fds_small = _new_threads(baseline), testing.open_fds()
    held += _hold(client, rootfs, small, SCALE_N - small)
    threads_large, fds_large = _new_threads(baseline), testing.open_fds()

    assert _stdio_threads() == ["libcontainerd-stdio-loop"]
    assert threads_large == threads_small, "the client's threads grew with the number of containers"
    assert len(threads_large) + 4 <= 8  # with all four event workers busy, still at most 8
    per_container = (fds_large - fds_small) / (SCALE_N - small)
    assert per_container <= 2, f"{per_container:.2f} fds per container with stdout+stderr"
    for i, (_, _, out) in enumerate(held):
        assert (out.stdout, out.stderr) == (f"up-{i}\n".encode(), f"err-{i}\n".encode())

    def stop(i: int) -> None:
        ctr, task, out = held[i]
        task.kill(signal.SIGKILL)
        assert task.wait(timeout=WAIT).code == 137
        out.wait(timeout=WAIT)
        task.delete()
        ctr.delete()

    _each(len(held), stop)
    assert listing(client.state_dir) == []  # no FIFO, no bundle
    assert wait_until(lambda: _stdio_threads() == [], timeout=10), _stdio_threads()
    assert testing.open_fds() == fds0


class _BlockingSink(io.RawIOBase):
    """A caller's file whose first write blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.released = threading.Event()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.entered.set()
        self.released.wait(WAIT)
        n = len(memoryview(b))
        self.count += n
        return n


def test_a_blocked_consumer_holds_up_no_other_container(client, rootfs, recorder):
    size = 4 << 20  # far more than the pipe and the loop's high-water mark hold
    sink = _BlockingSink()
    slow_ctr = client.new_container("slow", spec(rootfs, "head", "-c", str(size), "/dev/zero"))
    slow = slow_ctr.start(attach_stdio=stdio.attach(stdout=sink))
    try:
        assert sink.entered.wait(WAIT)
        blocked_since = time.monotonic()

        def run(i: int) -> None:
            ctr = client.new_container(f"fast-{i}", spec(rootfs, "sh", "-c", f"seq 1 2000; echo done-{i} >&2"))
            out = stdio.capture()
            task = ctr.start(attach_stdio=out)
            assert task.wait(timeout=WAIT).code == 0
            out.wait(timeout=WAIT)
            assert out.stdout == b"".join(b"%d\n" % k for k in range(1, 2001))
            assert out.stderr == f"done-{i}\n".encode()
            recorder.wait_for(f"fast-{i}", EventType.EXIT, timeout=WAIT)
            task.delete()
            ctr.delete()

        _each(20, run)
        # All 20 streamed, exited and were reported while the slow one's consumer stayed blocked.
        assert not sink.released.is_set() and not slow.io.done
        assert slow.status() == libcontainerd.Status.RUNNING  # its own writes wait for the full FIFO
        while time.monotonic() - blocked_since < 2.0:  # blocked for seconds, whatever the machine's speed
            time.sleep(0.1)
    finally:
        sink.released.set()
    assert slow.wait(timeout=WAIT).code == 0
    slow.io.wait(timeout=WAIT)
    assert sink.count == size
    slow.delete()
    slow_ctr.delete()


class _Lines(io.RawIOBase):
    """A caller's stdout that keeps what it got and lets the test wait for a line."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.cond = threading.Condition()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        with self.cond:
            self.data += memoryview(b).cast("B")
            self.cond.notify_all()
        return len(memoryview(b))

    def wait_for(self, tail: bytes) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.data.endswith(tail), WAIT)


def test_interleaved_stdin_and_stdout_through_cat_on_50_containers(client, rootfs):
    n, rounds = 50, 5
    pipes = [os.pipe() for _ in range(n)]
    sources = [os.fdopen(r, "rb", buffering=0) for r, _ in pipes]
    sinks = [_Lines() for _ in range(n)]
    try:
        def start(i: int) -> tuple[libcontainerd.Container, libcontainerd.Task]:
            ctr = client.new_container(f"cat-{i}", spec(rootfs, "cat"))
            return ctr, ctr.start(with_stdin=True, attach_stdio=stdio.attach(stdin=sources[i], stdout=sinks[i]))

        started = _each(n, start)
        for r in range(rounds):
            # Each round's input is sent only once every container echoed the previous one.
            for i, (_, w) in enumerate(pipes):
                os.write(w, f"cat-{i} round {r}\n".encode())
            for i, sink in enumerate(sinks):
                assert sink.wait_for(f"cat-{i} round {r}\n".encode()), f"cat-{i} did not echo round {r}"
        while pipes:
            os.close(pipes.pop()[1])  # the caller's EOF becomes cat's EOF
        for i, (ctr, task) in enumerate(started):
            assert task.wait(timeout=WAIT).code == 0
            task.io.wait(timeout=WAIT)
            assert bytes(sinks[i].data) == b"".join(f"cat-{i} round {r}\n".encode() for r in range(rounds))
            task.delete()
            ctr.delete()
    finally:
        for _, w in pipes:
            os.close(w)
        for src in sources:
            src.close()

"""Unit tests of the stdio I/O loop (libcontainerd._ioloop) with real FIFOs; test code plays the shim."""

from __future__ import annotations

import io
import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libcontainerd import _ioloop, _procfs, errdefs, stdio
from libcontainerd.cio import DirectIO, FifoSet

WAIT = 30.0


def _stdio_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("libcontainerd-stdio-"))


@pytest.fixture
def clean() -> Iterator[None]:
    """Fails a test that leaves a stdio thread or a file descriptor behind."""
    fds = _procfs.fds()
    yield
    deadline = time.monotonic() + WAIT
    while _stdio_threads() and time.monotonic() < deadline:  # pool workers of a closed owner are joined already
        time.sleep(0.01)
    assert _stdio_threads() == []
    assert _procfs.fds() == fds


def _until(cond: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# -- the Linux facts the loop relies on ------------------------------------------------------


def test_epoll_sees_a_fifo_as_poll_does(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    os.mkfifo(path)
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    ep = select.epoll()
    try:
        ep.register(r, select.EPOLLIN)
        assert ep.poll(0.05) == []  # no writer yet: neither data nor hang-up (a read would say b"")
        w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(w, b"x")
        assert ep.poll(1) == [(r, select.EPOLLIN)]
        assert os.read(r, 10) == b"x"
        os.close(w)
        assert ep.poll(1) == [(r, select.EPOLLHUP)]  # the writer came and went: EOF
        assert os.read(r, 10) == b""
    finally:
        ep.close()
        os.close(r)


def test_epoll_reports_a_fifo_write_side_without_reader_as_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    os.mkfifo(path)
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    ep = select.epoll()
    try:
        ep.register(w, select.EPOLLOUT)
        assert ep.poll(1) == [(w, select.EPOLLOUT)]
        os.close(r)
        assert ep.poll(1)[0][1] & select.EPOLLERR
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")
    finally:
        ep.close()
        os.close(w)


# -- the owner -----------------------------------------------------------------------------


def test_owner_starts_the_loop_lazily_and_stops_it_with_the_last_user(clean: None) -> None:
    owner = _ioloop.LoopOwner("libcontainerd-stdio-t")
    assert not owner.running and _stdio_threads() == []
    loop1, _ = owner.acquire()
    loop2, _ = owner.acquire()
    assert loop1 is loop2
    assert _stdio_threads() == ["libcontainerd-stdio-t-loop"]
    owner.release(loop1)
    assert owner.running
    owner.release(loop2)
    assert not owner.running and _stdio_threads() == []
    owner.close()
    with pytest.raises(errdefs.Cancelled):
        owner.acquire()


def test_call_runs_on_the_loop_and_after_it_stopped(clean: None) -> None:
    owner = _ioloop.LoopOwner("libcontainerd-stdio-t")
    loop, _ = owner.acquire()
    seen: list[bool] = []
    loop.call(lambda: seen.append(loop.in_loop()))
    owner.release(loop)
    loop.call(lambda: seen.append(loop.in_loop()))  # the thread is gone: inline
    assert seen == [True, False]
    assert not loop.call_soon(lambda: None)


# -- pumps through the ready-made callbacks --------------------------------------------------


def _fifos(tmp_path: Path, pid: str, with_stdin: bool = False) -> FifoSet:
    return FifoSet.create(str(tmp_path), pid, with_stdin=with_stdin, terminal=False)


class _BlockingSink(io.RawIOBase):
    """A caller's file whose write blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        self.entered.set()
        self.release.wait(WAIT)
        view = memoryview(b).cast("B")  # type: ignore[arg-type]
        self.data += view
        return len(view)


def test_a_blocked_sink_stops_only_its_own_fifo(tmp_path: Path, clean: None) -> None:
    slow_fifos, fast_fifos = _fifos(tmp_path, "slow"), _fifos(tmp_path, "fast")
    sink = _BlockingSink()
    slow = stdio.attach(stdout=sink)(DirectIO.open(slow_fifos))
    fast = stdio.capture()
    fast(DirectIO.open(fast_fifos))
    slow_w = os.open(slow_fifos.stdout or "", os.O_WRONLY | os.O_NONBLOCK)
    payload = bytes(range(256)) * 4096  # 1 MiB: more than the high-water mark and the pipe together
    written = 0

    def write_some() -> bool:
        nonlocal written
        try:
            written += os.write(slow_w, payload[written:])
        except BlockingIOError:
            pass
        return written == len(payload)

    # The loop reads the slow FIFO up to the high-water mark, then leaves it full: the writer blocks.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not write_some():
        time.sleep(0.01)
    assert sink.entered.is_set()
    assert written < len(payload), "the loop kept reading a FIFO whose consumer is blocked"
    # Meanwhile another process's output flows and ends.
    fast_w = os.open(fast_fifos.stdout or "", os.O_WRONLY)
    err_w = os.open(fast_fifos.stderr or "", os.O_WRONLY)
    os.write(fast_w, b"fast")
    os.close(fast_w)
    os.close(err_w)
    assert fast.wait(timeout=WAIT).stdout == b"fast"
    assert not slow.done
    sink.release.set()
    _until(write_some, "the slow writer to get everything in")
    os.close(slow_w)
    os.close(os.open(slow_fifos.stderr or "", os.O_WRONLY))
    slow.wait(timeout=WAIT)
    assert bytes(sink.data) == payload  # in order, nothing lost
    fast.close()
    slow.close()
    slow_fifos.remove()
    fast_fifos.remove()


def test_stdin_never_blocks_the_loop(tmp_path: Path, clean: None) -> None:
    """A stdin payload nobody reads waits in the loop's buffer; another process's output still flows."""
    stuck_fifos, other_fifos = _fifos(tmp_path, "stuck", with_stdin=True), _fifos(tmp_path, "other")
    stuck = stdio.capture(stdin=b"z" * (4 << 20))
    stuck(DirectIO.open(stuck_fifos))
    other = stdio.capture()
    other(DirectIO.open(other_fifos))
    for path, data in ((other_fifos.stdout, b"out"), (other_fifos.stderr, b"err")):
        fd = os.open(path or "", os.O_WRONLY)
        os.write(fd, data)
        os.close(fd)
    assert other.wait(timeout=WAIT).stderr == b"err"
    with pytest.raises(TimeoutError):
        stuck.wait(timeout=0.1)
    stuck.close()
    other.close()
    stuck_fifos.remove()
    other_fifos.remove()


def test_close_from_inside_the_callers_sink(tmp_path: Path, clean: None) -> None:
    fifos = _fifos(tmp_path, "self")
    attached: list[stdio.Attached] = []

    class Closer(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            attached[0].close()  # must neither deadlock nor wait for itself
            return len(memoryview(b))  # type: ignore[arg-type]

    attached.append(stdio.attach(stdout=Closer())(DirectIO.open(fifos)))
    fd = os.open(fifos.stdout or "", os.O_WRONLY)
    os.write(fd, b"bye")
    _until(lambda: attached[0].done, "the stream to end")
    os.close(fd)
    fifos.remove()


def test_many_processes_share_one_thread_and_two_fds_each(tmp_path: Path, clean: None) -> None:
    n = 100
    before = len(_procfs.fds())
    sets = [_fifos(tmp_path, f"p{i}") for i in range(n)]
    caps = []
    for fs in sets:
        cap = stdio.capture()
        cap(DirectIO.open(fs))
        caps.append(cap)
    assert _stdio_threads() == ["libcontainerd-stdio-loop"]
    # two FIFOs each, plus the loop's epoll and wake-up pipe
    assert len(_procfs.fds()) - before == 2 * n + 3
    for i, fs in enumerate(sets):
        for path, text in ((fs.stdout, f"out{i}"), (fs.stderr, f"err{i}")):
            fd = os.open(path or "", os.O_WRONLY)
            os.write(fd, text.encode())
            os.close(fd)
    for i, cap in enumerate(caps):
        cap.wait(timeout=WAIT)
        assert (cap.stdout, cap.stderr) == (f"out{i}".encode(), f"err{i}".encode())
        cap.close()
    for fs in sets:
        fs.remove()


def test_stdio_of_a_closed_client_is_refused_and_takes_nothing(tmp_path: Path, clean: None) -> None:
    owner = _ioloop.LoopOwner()
    owner.close()
    fifos = _fifos(tmp_path, "late")
    dio = DirectIO.open(fifos, io_loop=owner)
    out = stdio.capture()
    with pytest.raises(errdefs.Cancelled, match="closed"):
        out(dio)
    with pytest.raises(errdefs.Conflict, match="never attached"):
        out.wait()
    assert dio.stdout is not None and not dio.stdout.closed  # still the caller's to use or close
    dio.close()
    fifos.remove()


def test_client_close_ends_running_stdio_as_cancelled(tmp_path: Path, clean: None) -> None:
    """What Client.close() does to stdio objects still running: they end, keeping what they read."""
    owner = _ioloop.LoopOwner()
    fifos = _fifos(tmp_path, "held")
    out = stdio.capture()
    out(DirectIO.open(fifos, io_loop=owner))
    fd = os.open(fifos.stdout or "", os.O_WRONLY)
    os.write(fd, b"kept")
    _until(lambda: out.stdout == b"kept", "the output")
    owner.close()
    assert out.wait(timeout=WAIT).stdout == b"kept"
    out.close()
    os.close(fd)
    fifos.remove()


def test_endless_streams_beyond_the_pool_size_all_flow(tmp_path: Path, clean: None) -> None:
    """More never-ending outputs than stdio workers: each gets turns, none starves."""
    import subprocess

    from libcontainerd import testing

    n = _ioloop.POOL_WORKERS + 2
    sets = [_fifos(tmp_path, f"yes{i}") for i in range(n)]
    sinks = [testing.CountingSink() for _ in range(n)]
    attached = [stdio.attach(stdout=sink)(DirectIO.open(fs)) for fs, sink in zip(sets, sinks)]
    procs = []
    for fs in sets:
        out = os.open(fs.stdout or "", os.O_WRONLY)
        procs.append(subprocess.Popen(["yes"], stdout=out))
        os.close(out)
        os.close(os.open(fs.stderr or "", os.O_WRONLY))
    try:
        _until(lambda: all(s.count > (1 << 20) for s in sinks), "every stream to move a MiB")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for a in attached:
        a.wait(timeout=WAIT)
        a.close()
    for fs in sets:
        fs.remove()

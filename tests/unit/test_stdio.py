"""Unit tests of libcontainerd.stdio with real FIFOs; real subprocesses play the shim's side."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from libcontainerd import _procfs, errdefs, stdio, testing
from libcontainerd.cio import DirectIO, FifoSet

WAIT = 60.0  # bound for waits; a hang fails the test instead of blocking the run


def _fds() -> set[int]:
    return _procfs.fds()


def _stdio_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("libcontainerd-stdio-")]


def _shim(fifos: FifoSet, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Open the FIFOs' other ends as runc's shim does (stdin read, output write) and run argv on them."""
    fds: dict[str, int] = {}
    try:
        if fifos.stdin:
            fds["stdin"] = os.open(fifos.stdin, os.O_RDONLY | os.O_NONBLOCK)
            os.set_blocking(fds["stdin"], True)
        for name, path in (("stdout", fifos.stdout), ("stderr", fifos.stderr)):
            if path:
                fds[name] = os.open(path, os.O_WRONLY)
        return subprocess.Popen(
            list(argv),
            stdin=fds.get("stdin", subprocess.DEVNULL),
            stdout=fds.get("stdout", subprocess.DEVNULL),
            stderr=fds.get("stderr", subprocess.DEVNULL),
        )
    finally:
        for fd in fds.values():
            os.close(fd)


@pytest.fixture
def clean() -> Iterator[None]:
    """Fails a test that leaves a stdio thread or a file descriptor behind."""
    fds = _fds()
    yield
    assert _stdio_threads() == []
    assert _fds() == fds


def _fifo_set(tmp_path: Path, pid: str = "p1", with_stdin: bool = True, terminal: bool = False) -> FifoSet:
    return FifoSet.create(str(tmp_path), pid, with_stdin=with_stdin, terminal=terminal)


@pytest.mark.parametrize("size", [6, 20 * 1024 * 1024])
def test_capture_round_trip_through_cat(tmp_path: Path, clean: None, size: int) -> None:
    payload = (b"hello\n" * (size // 6 + 1))[:size]
    fifos = _fifo_set(tmp_path)
    closes: list[str] = []
    dio = DirectIO.open(fifos, on_stdin_close=lambda: closes.append("CloseIO"))
    out = stdio.capture(stdin=payload)
    assert out(dio) is out  # stdin is being written now, before the "shim" exists, as in Tasks.Create
    proc = _shim(fifos, ["cat"])
    dio.connected()
    assert out.wait(timeout=WAIT) is out
    assert proc.wait(WAIT) == 0
    assert out.stdout == payload
    assert out.stderr == b""
    assert closes == ["CloseIO"]
    assert repr(out) == f"<Capture stdout={size}B stderr=0B done>"
    out.close()
    fifos.remove()


def test_capture_separates_stdout_and_stderr(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path, with_stdin=False)
    out = stdio.capture()
    out(DirectIO.open(fifos))
    proc = _shim(fifos, ["sh", "-c", "printf out; printf err >&2"])
    out.wait(timeout=WAIT)
    assert (out.stdout, out.stderr) == (b"out", b"err")
    proc.wait(WAIT)
    out.close()
    fifos.remove()


def test_capture_terminal_mode_has_only_stdout(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path, with_stdin=False, terminal=True)
    out = stdio.capture()
    out(DirectIO.open(fifos))
    proc = _shim(fifos, ["echo", "tty"])
    assert out.wait(timeout=WAIT).stdout == b"tty\n"
    proc.wait(WAIT)
    out.close()
    fifos.remove()


def test_capture_stdin_into_a_process_that_does_not_read_it(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path)
    dio = DirectIO.open(fifos)
    out = stdio.capture(stdin=b"x" * (4 * 1024 * 1024))
    out(dio)
    proc = _shim(fifos, ["true"])
    dio.connected()
    proc.wait(WAIT)
    out.wait(timeout=WAIT)  # the stdin writer ends with a broken pipe, which is no error
    assert out.stdout == b""
    out.close()
    fifos.remove()


def test_capture_stops_writing_stdin_once_the_output_ended(tmp_path: Path, clean: None) -> None:
    """Like the real shim after the process exited: it holds the stdin FIFO open, reading nothing more."""
    fifos = _fifo_set(tmp_path)
    dio = DirectIO.open(fifos)
    out = stdio.capture(stdin=b"x" * (4 * 1024 * 1024))
    out(dio)
    shim_stdin = os.open(fifos.stdin or "", os.O_RDONLY | os.O_NONBLOCK)
    dio.connected()
    for path in (fifos.stdout, fifos.stderr):
        fd = os.open(path or "", os.O_WRONLY)
        os.write(fd, b"bye")
        os.close(fd)
    assert out.wait(timeout=WAIT).stdout == b"bye"
    os.close(shim_stdin)
    out.close()
    fifos.remove()


def test_capture_without_stdin_closes_the_fifo_stdin(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path)
    closes: list[str] = []
    dio = DirectIO.open(fifos, on_stdin_close=lambda: closes.append("CloseIO"))
    out = stdio.capture()
    out(dio)
    proc = _shim(fifos, ["cat"])
    dio.connected()
    assert out.wait(timeout=WAIT).stdout == b""  # cat saw EOF at once
    assert closes == ["CloseIO"]
    proc.wait(WAIT)
    out.close()
    fifos.remove()


def test_capture_stdin_needs_a_stdin_fifo(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path, with_stdin=False)
    dio = DirectIO.open(fifos)
    out = stdio.capture(stdin=b"data")
    with pytest.raises(errdefs.InvalidParameter, match="with_stdin=True"):
        out(dio)
    assert _stdio_threads() == []
    dio.close()
    fifos.remove()


def test_capture_is_attached_once_and_must_be_attached(tmp_path: Path, clean: None) -> None:
    out = stdio.capture()
    assert repr(out) == "<Capture stdout=0B stderr=0B not attached>"
    with pytest.raises(errdefs.Conflict, match="never attached"):
        out.wait()
    fifos = _fifo_set(tmp_path, with_stdin=False)
    dio = DirectIO.open(fifos)
    out(dio)
    assert _stdio_threads() == ["libcontainerd-stdio-loop"]  # one loop thread, not a thread per stream
    with pytest.raises(errdefs.Conflict, match="already"):
        out(dio)
    assert repr(out) == "<Capture stdout=0B stderr=0B running>"
    out.close()
    fifos.remove()


def test_capture_wait_times_out_and_close_stops_everything(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path)
    out = stdio.capture(stdin=b"z" * 1_000_000)  # blocks: nobody reads stdin
    out(DirectIO.open(fifos))
    with pytest.raises(TimeoutError):
        out.wait(timeout=0.2)
    out.close()
    out.close()
    assert out.done
    fifos.remove()


def test_capture_cancel_keeps_what_was_read(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path, with_stdin=False)
    out = stdio.capture()
    out(DirectIO.open(fifos))
    fd = os.open(fifos.stdout or "", os.O_WRONLY)
    os.write(fd, b"partial")
    while out.stdout != b"partial":  # the pump is reading; the writer stays connected
        threading.Event().wait(0.01)
    out.cancel()
    out.wait(timeout=WAIT)
    assert out.stdout == b"partial"
    os.close(fd)
    out.close()
    fifos.remove()


def test_attach_streams_200mb_with_flat_memory(tmp_path: Path, clean: None) -> None:
    size = 200 * 1024 * 1024
    fifos = _fifo_set(tmp_path, with_stdin=False)
    sink, err = testing.CountingSink(), testing.CountingSink()
    tracemalloc.start()
    try:
        attached = stdio.attach(stdout=sink, stderr=err)(DirectIO.open(fifos))
        proc = _shim(fifos, ["head", "-c", str(size), "/dev/zero"])
        attached.wait(timeout=WAIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert proc.wait(WAIT) == 0
    assert (sink.count, err.count) == (size, 0)
    assert sink.flushes > 0
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while streaming {size}"
    attached.close()
    fifos.remove()


def test_attach_round_trip_with_stdin_eof(tmp_path: Path, clean: None) -> None:
    data = os.urandom(3 * 1024 * 1024)
    src = tmp_path / "input"
    src.write_bytes(data)
    fifos = _fifo_set(tmp_path)
    closes: list[str] = []
    dio = DirectIO.open(fifos, on_stdin_close=lambda: closes.append("CloseIO"))
    sink = io.BytesIO()
    with open(src, "rb") as user_stdin:
        attached = stdio.attach(stdin=user_stdin, stdout=sink)(dio)
        proc = _shim(fifos, ["cat"])
        dio.connected()
        assert attached.wait(timeout=WAIT) is attached  # cat ended: the file's EOF reached it
        assert not user_stdin.closed  # the caller's files stay open
    assert sink.getvalue() == data
    # attach's wait() covers the output only (a terminal's stdin need never end): the stdin pump
    # closes the FIFO -- which is what let cat end -- and reports that a moment later.
    deadline = time.monotonic() + WAIT
    while not closes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closes == ["CloseIO"]
    assert proc.wait(WAIT) == 0
    attached.close()
    fifos.remove()


def test_attach_discards_unwanted_output(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path, with_stdin=False)
    attached = stdio.attach()(DirectIO.open(fifos))
    proc = _shim(fifos, ["head", "-c", "1000000", "/dev/zero"])  # more than a pipe holds
    assert proc.wait(WAIT) == 0  # it did not block on a full pipe
    attached.wait(timeout=WAIT)
    assert repr(attached) == "<Attached process=p1 stdout,stderr done>"
    attached.close()
    fifos.remove()


def test_attach_close_wakes_a_stdin_pump_blocked_on_the_callers_pipe(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path)
    r, w = os.pipe()
    closes: list[str] = []
    with os.fdopen(r, "rb", buffering=0) as user_stdin:
        dio = DirectIO.open(fifos, on_stdin_close=lambda: closes.append("CloseIO"))
        attached = stdio.attach(stdin=user_stdin)(dio)
        assert _stdio_threads() == ["libcontainerd-stdio-loop"]  # nobody waits in the pipe's read
        attached.cancel()
        attached.close()  # joins the stdin pump although nothing was ever written to the pipe
        assert closes == []  # cancelling is not the caller's EOF
    os.close(w)
    fifos.remove()


def test_attach_stdin_needs_a_stdin_fifo(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path, with_stdin=False)
    dio = DirectIO.open(fifos)
    with pytest.raises(errdefs.InvalidParameter, match="with_stdin=True"):
        stdio.attach(stdin=io.BytesIO(b"x"))(dio)
    assert _stdio_threads() == []
    dio.close()
    fifos.remove()


def test_directio_itself_as_the_io_object(tmp_path: Path, clean: None) -> None:
    fifos = _fifo_set(tmp_path, with_stdin=False)
    callback = lambda d: d  # noqa: E731 - the identity callback of the API contract
    rio = callback(DirectIO.open(fifos))
    assert rio.wait(timeout=1) is True
    rio.cancel()
    rio.close()
    fifos.remove()


class _FailingSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise BrokenPipeError("the caller's pipe is gone")


def test_attach_keeps_draining_when_the_callers_sink_fails(
    tmp_path: Path, clean: None, caplog: pytest.LogCaptureFixture
) -> None:
    fifos = _fifo_set(tmp_path, with_stdin=False)
    attached = stdio.attach(stdout=_FailingSink())(DirectIO.open(fifos))
    proc = _shim(fifos, ["head", "-c", "1000000", "/dev/zero"])
    assert proc.wait(WAIT) == 0  # it did not block on a full pipe
    attached.wait(timeout=WAIT)
    assert "dropping the rest" in caplog.text
    attached.close()
    fifos.remove()


def _interrupt_main_soon() -> threading.Timer:
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT))
    timer.name = "libcontainerd-test-interrupt"
    timer.start()
    return timer


def test_ctrl_c_interrupts_wait_and_a_blocked_read(tmp_path: Path, clean: None) -> None:
    assert threading.current_thread() is threading.main_thread()
    fifos = _fifo_set(tmp_path, with_stdin=False)
    out = stdio.capture()
    out(DirectIO.open(fifos))
    timer = _interrupt_main_soon()
    with pytest.raises(KeyboardInterrupt):
        out.wait()  # no writer ever comes
    timer.join(WAIT)
    out.close()
    dio = DirectIO.open(fifos)
    assert dio.stdout is not None
    timer = _interrupt_main_soon()
    with pytest.raises(KeyboardInterrupt):
        dio.stdout.read()
    timer.join(WAIT)
    dio.close()
    fifos.remove()

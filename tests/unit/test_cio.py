"""Unit tests of libcontainerd.cio with real FIFOs; test threads play the shim's side."""

from __future__ import annotations

import gc
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from libcontainerd import _procfs, errdefs
from libcontainerd.cio import Canceller, DirectIO, FifoReader, FifoSet, FifoWriter

WAIT = 10.0  # bound for joins; a hang fails the test instead of blocking the run


def _fds() -> set[int]:
    return _procfs.fds()


class _Thread(threading.Thread):
    """Runs fn in a thread and keeps its result or exception."""

    def __init__(self, fn: object) -> None:
        super().__init__(name="libcontainerd-test-cio", daemon=True)
        self._fn = fn
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn()  # type: ignore[operator]
        except BaseException as exc:
            self.error = exc

    def finish(self) -> object:
        self.join(WAIT)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def fifos(tmp_path: Path) -> Iterator[FifoSet]:
    fs = FifoSet.create(str(tmp_path), "ctr", with_stdin=True, terminal=False)
    yield fs
    fs.remove()


@pytest.fixture
def dio(fifos: FifoSet) -> Iterator[DirectIO]:
    d = DirectIO.open(fifos)
    yield d
    d.close()


# FifoSet


def test_create_names_modes_and_paths(tmp_path: Path) -> None:
    fs = FifoSet.create(str(tmp_path), "web-1", with_stdin=True, terminal=False)
    assert sorted(os.listdir(tmp_path)) == ["web-1-stderr", "web-1-stdin", "web-1-stdout"]
    for path in fs.paths():
        st = os.stat(path)
        assert stat.S_ISFIFO(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    assert fs.to_paths() == (f"{tmp_path}/web-1-stdin", f"{tmp_path}/web-1-stdout", f"{tmp_path}/web-1-stderr", False)
    fs.remove()
    fs.remove()  # idempotent
    assert os.listdir(tmp_path) == []


def test_create_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        fs = FifoSet.create(str(tmp_path), "u", with_stdin=False, terminal=False)
    finally:
        os.umask(old)
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in fs.paths()} == {0o600}
    fs.remove()


def test_terminal_has_no_stderr_and_stdin_only_on_request(tmp_path: Path) -> None:
    fs = FifoSet.create(str(tmp_path), "t", with_stdin=False, terminal=True)
    assert (fs.stdin, fs.stderr, fs.terminal) == (None, None, True)
    assert os.listdir(tmp_path) == ["t-stdout"]
    assert fs.to_paths() == ("", f"{tmp_path}/t-stdout", "", True)
    fs.remove()


def test_create_replaces_stale_files(tmp_path: Path) -> None:
    (tmp_path / "p-stdout").write_bytes(b"stale")
    fs = FifoSet.create(str(tmp_path), "p", with_stdin=False, terminal=True)
    assert stat.S_ISFIFO(os.stat(fs.stdout or "").st_mode)
    fs.remove()


def test_create_failure_removes_what_it_made(tmp_path: Path) -> None:
    (tmp_path / "x-stderr").mkdir()
    (tmp_path / "x-stderr" / "keep").write_bytes(b"")
    with pytest.raises(errdefs.System, match="x-stderr"):
        FifoSet.create(str(tmp_path), "x", with_stdin=True, terminal=False)
    assert os.listdir(tmp_path) == ["x-stderr"]


def test_create_in_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(errdefs.System, match="cannot create FIFO"):
        FifoSet.create(str(tmp_path / "nope"), "x", with_stdin=False, terminal=False)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\0b"])
def test_invalid_process_id(tmp_path: Path, bad: str) -> None:
    with pytest.raises(errdefs.InvalidParameter):
        FifoSet.create(str(tmp_path), bad, with_stdin=False, terminal=False)
    assert os.listdir(tmp_path) == []


def test_existing_infers_terminal(tmp_path: Path) -> None:
    made = FifoSet.create(str(tmp_path), "e", with_stdin=True, terminal=True)
    found = FifoSet.existing(str(tmp_path), "e")
    assert found == made
    plain = FifoSet.create(str(tmp_path), "f", with_stdin=False, terminal=False)
    assert FifoSet.existing(str(tmp_path), "f") == plain
    assert FifoSet.existing(str(tmp_path), "f", terminal=True).stderr is None
    with pytest.raises(errdefs.NotFound):
        FifoSet.existing(str(tmp_path), "missing")
    made.remove()
    plain.remove()


def test_chown(tmp_path: Path) -> None:
    fs = FifoSet.create(str(tmp_path), "c", with_stdin=True, terminal=True)
    fs.chown(1234, 2345)
    assert {(os.stat(p).st_uid, os.stat(p).st_gid) for p in fs.paths()} == {(1234, 2345)}
    fs.remove()


# Readers


def test_open_does_not_block_and_late_writer_is_not_eof(fifos: FifoSet) -> None:
    before = _fds()
    dio = DirectIO.open(fifos)  # no shim: would hang here if any open waited for the other side
    assert dio.stdout is not None
    stdout = dio.stdout
    reader = _Thread(lambda: stdout.read1(100))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive(), "read returned before any writer connected (mistook no writer for EOF)"
    fd = os.open(fifos.stdout or "", os.O_WRONLY)  # the shim's side, as runc's shim opens it
    os.write(fd, b"hello")
    assert reader.finish() == b"hello"
    os.close(fd)
    assert stdout.read() == b""  # the writer connected and left: EOF
    dio.close()
    assert _fds() == before


def test_eof_after_writer_closes(dio: DirectIO, fifos: FifoSet) -> None:
    chunks = [bytes([i]) * 100_000 for i in range(5)]

    def shim() -> None:
        fd = os.open(fifos.stderr or "", os.O_WRONLY)
        for chunk in chunks:
            os.write(fd, chunk)
        os.close(fd)

    writer = _Thread(shim)
    writer.start()
    assert dio.stderr is not None
    assert dio.stderr.read() == b"".join(chunks)
    writer.finish()


def test_iteration_by_lines(dio: DirectIO, fifos: FifoSet) -> None:
    fd = os.open(fifos.stdout or "", os.O_WRONLY)
    os.write(fd, b"one\ntwo\nthree")
    os.close(fd)
    assert dio.stdout is not None
    assert list(dio.stdout) == [b"one\n", b"two\n", b"three"]


def test_cancel_wakes_a_blocked_reader(dio: DirectIO) -> None:
    assert dio.stdout is not None and dio.stderr is not None
    out, err = dio.stdout, dio.stderr
    readers = [_Thread(lambda: out.read()), _Thread(lambda: err.read1(10))]
    for r in readers:
        r.start()
    dio.cancel()
    assert [r.finish() for r in readers] == [b"", b""]
    assert dio.cancelled


def test_take_output_hands_the_descriptor_over_and_lets_the_reader_go(fifos: FifoSet) -> None:
    import weakref

    before = _fds()
    dio = DirectIO.open(fifos)
    reader = weakref.ref(dio.stdout)  # type: ignore[arg-type]
    fd = dio.take_output("stdout")
    assert fd is not None
    gc.collect()
    # The reader (with its 64 KiB buffer) is gone; the attribute reads as a closed stream.
    assert reader() is None
    assert dio.stdout is not None and dio.stdout.closed
    with pytest.raises(ValueError):
        dio.stdout.read()
    assert dio.take_output("stdout") is None  # only once
    assert dio.take_output("stdin") is None  # not an output
    dio.close()
    # The descriptor taken is the caller's: close() left it open, and it is still the FIFO's.
    assert fd in _fds() and stat.S_ISFIFO(os.fstat(fd).st_mode)
    os.close(fd)
    assert _fds() == before


def test_not_a_fifo(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"data")
    canceller = Canceller()
    with pytest.raises(errdefs.InvalidParameter, match="not a FIFO"):
        FifoReader(str(path), canceller)
    with pytest.raises(errdefs.InvalidParameter, match="not a FIFO"):
        FifoWriter(str(path), canceller)
    canceller.close()


def test_open_failure_closes_what_it_opened(fifos: FifoSet) -> None:
    before = _fds()
    os.unlink(fifos.stderr or "")
    with pytest.raises(FileNotFoundError):
        DirectIO.open(fifos)
    assert _fds() == before


# Stdin


def test_stdin_written_before_the_shim_connects(fifos: FifoSet) -> None:
    calls: list[str] = []
    dio = DirectIO.open(fifos, on_stdin_close=lambda: calls.append("CloseIO"))
    assert dio.stdin is not None
    dio.stdin.write(b"early ")  # no reader but our placeholder: must neither fail nor block
    shim_fd = os.open(fifos.stdin or "", os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(shim_fd, True)
    dio.connected()
    dio.stdin.write(b"late")
    dio.stdin.close()
    assert calls == ["CloseIO"]
    dio.stdin.close()
    assert calls == ["CloseIO"]  # once
    data = b""
    while chunk := os.read(shim_fd, 100):  # EOF proves that no writer of ours is left
        data += chunk
    assert data == b"early late"
    os.close(shim_fd)
    dio.close()


def test_stdin_close_before_connected_is_finished_by_connected(fifos: FifoSet) -> None:
    calls: list[str] = []
    dio = DirectIO.open(fifos, on_stdin_close=lambda: calls.append("CloseIO"))
    assert dio.stdin is not None
    dio.stdin.write(b"abc")
    dio.stdin.close()
    assert calls == []  # the process does not exist yet: CloseIO would fail
    shim_fd = os.open(fifos.stdin or "", os.O_RDONLY | os.O_NONBLOCK)
    dio.connected()
    assert calls == ["CloseIO"]
    assert os.read(shim_fd, 100) == b"abc"
    assert os.read(shim_fd, 100) == b""
    os.close(shim_fd)
    dio.close()


def test_stdin_write_fails_once_the_process_is_gone(dio: DirectIO, fifos: FifoSet) -> None:
    shim_fd = os.open(fifos.stdin or "", os.O_RDONLY | os.O_NONBLOCK)
    dio.connected()
    os.close(shim_fd)
    assert dio.stdin is not None
    with pytest.raises(BrokenPipeError):
        dio.stdin.write(b"x" * 200_000)


def test_cancel_wakes_a_blocked_writer(dio: DirectIO) -> None:
    assert dio.stdin is not None
    stdin = dio.stdin
    writer = _Thread(lambda: stdin.write(b"x" * 1_000_000))  # blocks: nobody reads
    writer.start()
    writer.join(0.3)
    assert writer.is_alive()
    dio.cancel()
    with pytest.raises(BrokenPipeError):
        writer.finish()


def test_abort_stdin_wakes_a_blocked_writer_and_keeps_output(dio: DirectIO, fifos: FifoSet) -> None:
    assert dio.stdin is not None and dio.stdout is not None
    stdin = dio.stdin
    writer = _Thread(lambda: stdin.write(b"x" * 1_000_000))
    writer.start()
    dio.abort_stdin()
    with pytest.raises(BrokenPipeError):
        writer.finish()
    fd = os.open(fifos.stdout or "", os.O_WRONLY)
    os.write(fd, b"still flowing")
    os.close(fd)
    assert dio.stdout.read() == b"still flowing"


def test_close_and_gc_never_call_the_hook(fifos: FifoSet) -> None:
    calls: list[str] = []
    dio = DirectIO.open(fifos, on_stdin_close=lambda: calls.append("CloseIO"))
    dio.connected()
    dio.close()
    dio.close()
    other = DirectIO.open(fifos, on_stdin_close=lambda: calls.append("CloseIO"))
    other.connected()
    del other
    gc.collect()
    assert calls == []


def test_no_fds_left_and_repr(fifos: FifoSet) -> None:
    before = _fds()
    with DirectIO.open(fifos) as dio:
        assert repr(dio) == "<DirectIO process=ctr stdin stdout stderr open>"
        assert dio.wait() is True
        # stdin (ours and the placeholder reader), stdout, stderr: the cancel pipes are made only when a
        # blocking read or write needs them, and the I/O loop of stdio never does
        assert len(_fds()) == len(before) + 4
        dio.connected()
        assert len(_fds()) == len(before) + 3  # the placeholder is gone
        dio.cancel()
        assert dio.stdout is not None and dio.stdout.read() == b""  # a blocking read polls the cancel pipe
        assert len(_fds()) == len(before) + 5
    assert repr(dio) == "<DirectIO process=ctr stdin stdout stderr closed>"
    assert _fds() == before

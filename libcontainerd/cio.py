"""FIFO sets and DirectIO: containerd's Go ``cio`` package in Python.

This module owns the named pipes (FIFOs) through which a containerd shim carries a
process's stdin, stdout and stderr: :class:`FifoSet` creates, finds, chowns and
removes them; :class:`DirectIO` opens our ends without ever waiting for the shim,
and gives blocking, cancellable binary file objects (:class:`FifoReader` under an
``io.BufferedReader`` for output, :class:`FifoWriter` for stdin). It must not talk
to containerd, start threads or pump data: user-facing callbacks (capture, attach)
live in :mod:`libcontainerd.stdio`, and the client calls ``CloseIO`` through the
``on_stdin_close`` hook it hands to :meth:`DirectIO.open`.

Linux FIFO facts this module is built on (checked by ``tests/unit/test_cio.py``):

* ``open(O_RDONLY | O_NONBLOCK)`` succeeds at once, but ``read()`` then returns
  ``b""`` while no writer has connected yet, which looks like EOF. ``poll()`` is
  truthful: ``POLLIN`` when data is there, ``POLLHUP`` only once a writer has
  connected and gone (the kernel compares the pipe's writer counter with the one
  seen at open). So readers poll before they read.
* ``open(O_WRONLY | O_NONBLOCK)`` fails with ``ENXIO`` while no reader exists, and a
  blocking ``open(O_WRONLY)`` waits for one. ``open(O_RDWR)`` never waits: we open
  stdin ``O_RDWR`` first (a *placeholder* reader), then ``O_WRONLY | O_NONBLOCK``
  (which now succeeds), write through the latter, and drop the placeholder once the
  shim has opened its end (:meth:`DirectIO.connected`). Until then the placeholder
  keeps early writes from failing with ``EPIPE`` and keeps their bytes in the pipe;
  after it, a write to a process that is gone fails with ``BrokenPipeError``
  instead of blocking forever, which a FIFO opened only ``O_RDWR`` would do.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import select
import stat
import threading
from typing import TYPE_CHECKING, Callable, Protocol

import attrs

from libcontainerd import errdefs

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from libcontainerd._ioloop import LoopOwner


__all__ = [
    "CHUNK_SIZE",
    "Canceller",
    "DirectIO",
    "FifoReader",
    "FifoSet",
    "FifoWriter",
    "ProcessIO",
    "StdinStream",
    "StdioCallback",
]

log = logging.getLogger(__name__)

#: Read size of output readers and pumps: the default pipe capacity, so one read drains a full pipe.
CHUNK_SIZE = 64 * 1024

_FIFO_MODE = 0o600
_STREAMS = ("stdin", "stdout", "stderr")


def _fifo_path(directory: str, process_id: str, stream: str) -> str:
    return os.path.join(directory, f"{process_id}-{stream}")


def _check_process_id(process_id: str) -> None:
    if not process_id or "/" in process_id or "\0" in process_id or process_id in (".", ".."):
        raise errdefs.InvalidParameter(f"invalid process id {process_id!r} for FIFO names")


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


@attrs.frozen
class FifoSet:
    """The FIFO paths of one process, named as moby's ``newFIFOSet`` names them.

    Attributes:
        dir: the directory holding the FIFOs (the container's bundle directory).
        process_id: the container id for the main process, the exec id for an exec.
        stdin: path of ``<process_id>-stdin``, or None when the process has no stdin.
        stdout: path of ``<process_id>-stdout``, or None.
        stderr: path of ``<process_id>-stderr``, or None (always None with a terminal,
            where the console carries both output streams).
        terminal: whether the process runs with a terminal.
    """

    dir: str
    process_id: str
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    terminal: bool = False

    @classmethod
    def create(
        cls, directory: str, process_id: str, *, with_stdin: bool, terminal: bool, with_output: bool = True
    ) -> FifoSet:
        """Make the FIFOs (mode 0600) in an existing directory, replacing stale ones.

        Args:
            directory: where the FIFOs go; must exist.
            process_id: container id or exec id; names the FIFOs.
            with_stdin: make ``<process_id>-stdin``.
            terminal: no ``<process_id>-stderr`` (a terminal merges the output).
            with_output: make the output FIFOs; False when the output goes elsewhere (a log file)
                and only stdin is a FIFO.

        Returns:
            The set; on failure nothing it made is left behind.

        Raises:
            errdefs.InvalidParameter: the process id cannot name a file.
            errdefs.System: a FIFO could not be made (e.g. the directory is missing).

        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> fifos = FifoSet.create(d, "exec-1", with_stdin=False, terminal=True)
        >>> [os.path.basename(p) for p in fifos.paths()]
        ['exec-1-stdout']
        >>> fifos.remove(); os.rmdir(d)
        """
        _check_process_id(process_id)
        fifos = cls(
            dir=directory,
            process_id=process_id,
            stdin=_fifo_path(directory, process_id, "stdin") if with_stdin else None,
            stdout=_fifo_path(directory, process_id, "stdout") if with_output else None,
            stderr=None if terminal or not with_output else _fifo_path(directory, process_id, "stderr"),
            terminal=terminal,
        )
        made: list[str] = []
        try:
            for path in fifos.paths():
                try:
                    if os.path.lexists(path):
                        # A stale FIFO of a process that had this id before; its readers and writers are gone.
                        os.unlink(path)
                    os.mkfifo(path, _FIFO_MODE)
                    made.append(path)
                    # mkfifo applies the umask, which may take away our own bits.
                    os.chmod(path, _FIFO_MODE)
                except OSError as exc:
                    raise errdefs.System(f"cannot create FIFO {path}: {exc.strerror or exc}") from exc
        except BaseException:
            for path in made:
                _unlink_quietly(path)
            raise
        return fifos

    @classmethod
    def existing(cls, directory: str, process_id: str, *, terminal: bool | None = None) -> FifoSet:
        """Find the FIFOs of a running process, to re-attach to it.

        Args:
            directory: where the FIFOs are.
            process_id: container id or exec id.
            terminal: whether the process has a terminal; None infers it from a missing stderr FIFO.

        Returns:
            The set, with None for each FIFO that does not exist.

        Raises:
            errdefs.NotFound: none of the three FIFOs exists.

        >>> FifoSet.existing("/nonexistent", "x")
        Traceback (most recent call last):
        ...
        libcontainerd.errdefs.NotFound: no stdio FIFOs of process x in /nonexistent
        """
        _check_process_id(process_id)
        found = {s: p for s in _STREAMS if _is_fifo(p := _fifo_path(directory, process_id, s))}
        if not found:
            raise errdefs.NotFound(f"no stdio FIFOs of process {process_id} in {directory}")
        if terminal is None:
            terminal = "stderr" not in found
        return cls(
            dir=directory,
            process_id=process_id,
            stdin=found.get("stdin"),
            stdout=found.get("stdout"),
            stderr=None if terminal else found.get("stderr"),
            terminal=terminal,
        )

    def paths(self) -> list[str]:
        """The paths of the FIFOs in the set, stdin first.

        >>> FifoSet("/b", "c", stdout="/b/c-stdout").paths()
        ['/b/c-stdout']
        """
        return [p for p in (self.stdin, self.stdout, self.stderr) if p is not None]

    def chown(self, uid: int, gid: int) -> None:
        """Hand the FIFOs to the container's user (for a process that does not run as root).

        >>> fifos.chown(1000, 1000)  # doctest: +SKIP
        """
        for path in self.paths():
            os.chown(path, uid, gid)

    def remove(self) -> None:
        """Unlink the FIFOs; missing ones are fine, so this may be called any number of times.

        >>> FifoSet("/nonexistent", "c", stdout="/nonexistent/c-stdout").remove()
        """
        for path in self.paths():
            _unlink_quietly(path)

    def to_paths(self) -> tuple[str, str, str, bool]:
        """``(stdin, stdout, stderr, terminal)`` as ``CreateTaskRequest``/``ExecProcessRequest`` want them.

        >>> FifoSet("/b", "c", stdout="/b/c-stdout", terminal=True).to_paths()
        ('', '/b/c-stdout', '', True)
        """
        return (self.stdin or "", self.stdout or "", self.stderr or "", self.terminal)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove FIFO %s: %s", path, exc)


class Canceller:
    """A one-shot cancel signal that ``poll()`` can wait on (a self-pipe, made on first use).

    Once :meth:`cancel` is called the read end stays readable for good, so every
    thread polling it wakes, now and later. The pipe exists only once somebody asks
    for :meth:`fileno` (a blocking reader or writer): streams moved by the I/O loop
    of :mod:`libcontainerd.stdio` never poll it, so they cost no descriptors.

    >>> c = Canceller(); c.is_set()
    False
    >>> c.cancel(); c.is_set()
    True
    >>> c.close()
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._closed = False
        self._r = self._w = -1

    def fileno(self) -> int:
        """The read end, to register for ``POLLIN`` (made now if it does not exist yet).

        Raises:
            ValueError: the canceller is closed.
        """
        with self._lock:
            if self._closed:
                raise ValueError("the canceller is closed")
            if self._r < 0:
                self._r, self._w = os.pipe()  # non-inheritable (O_CLOEXEC) by Python's default
                if self._set:
                    os.write(self._w, b"x")
            return self._r

    def is_set(self) -> bool:
        """Whether :meth:`cancel` (or :meth:`close`) was called."""
        return self._set

    def cancel(self) -> None:
        """Wake every poller; idempotent."""
        with self._lock:
            if self._set or self._closed:
                return
            self._set = True
            if self._w >= 0:
                os.write(self._w, b"x")

    def close(self) -> None:
        """Cancel, then close both ends; callers must be done polling."""
        with self._lock:
            if self._closed:
                return
            self._set = True
            self._closed = True
            if self._r >= 0:
                os.close(self._r)
                os.close(self._w)
                self._r = self._w = -1

    def __repr__(self) -> str:
        return f"<Canceller {'closed' if self._closed else 'cancelled' if self._set else 'open'}>"


def _open_fifo(path: str, flags: int) -> int:
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise errdefs.InvalidParameter(f"{path} is not a FIFO")
    return fd


class FifoReader(io.RawIOBase):
    """The read end of an output FIFO: blocking reads that neither take a writer's absence for EOF nor spin.

    ``readinto`` polls the FIFO and the :class:`Canceller`: data → one ``read``;
    writer connected and gone → EOF (0); cancelled → EOF (0). Waiting happens in
    ``poll()`` without the GIL; a signal (Ctrl-C) interrupts it in the main thread.
    One thread at a time: wrap in ``io.BufferedReader`` (as :class:`DirectIO` does)
    to share it.

    >>> reader = FifoReader(fifos.stdout, Canceller())  # doctest: +SKIP
    """

    def __init__(self, path: str, canceller: Canceller) -> None:
        super().__init__()
        self.name = path
        self._canceller = canceller
        self._fd = -1  # close() and __del__ run on an object whose open failed, too
        self._fd = _open_fifo(path, os.O_RDONLY)
        self._poll: select.poll | None = None  # made by the first blocking read (it needs the canceller's pipe)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        self._checkClosed()
        return self._fd

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read at most ``len(buffer)`` bytes; 0 means EOF or cancelled."""
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)
            self._poll.register(self._canceller.fileno(), select.POLLIN)
        while True:
            if self._canceller.is_set():
                return 0
            events = dict(self._poll.poll())
            if self._canceller.fileno() in events:
                return 0
            if events.get(self._fd, 0):
                try:
                    return os.readv(self._fd, [view])
                except BlockingIOError:
                    continue  # another reader of the FIFO took the data

    def close(self) -> None:
        if not self.closed and self._fd >= 0:
            os.close(self._fd)
        super().close()

    def detach(self) -> int:
        """Hand the descriptor (non-blocking) to the caller, who closes it; this reader is closed.

        The I/O loop of :mod:`libcontainerd.stdio` takes the FIFOs over this way.
        """
        self._checkClosed()
        fd, self._fd = self._fd, -1
        super().close()
        return fd

    def __repr__(self) -> str:
        return f"<FifoReader {self.name} {'closed' if self.closed else 'open'}>"


class FifoWriter(io.RawIOBase):
    """The write end of a stdin FIFO: never blocks at open, blocks (cancellably) in ``write``.

    ``write(b)`` writes *all* of ``b`` (waiting in ``poll()`` while the pipe is full)
    and raises ``BrokenPipeError`` when the process's side is gone or the
    :class:`Canceller` fired. ``close()`` means "EOF to the process": it closes our
    write end and, once the shim is connected (:meth:`connected`), calls the
    ``on_close`` hook (the client's ``CloseIO``), exactly once. A close before
    :meth:`connected` is completed by :meth:`connected`. Garbage collection never
    calls the hook; :meth:`release` closes everything without it. :meth:`abort` gives
    up writing without closing: the shim may keep reading stdin after the process
    exited (its copy then blocks on the process's pipe), so a full FIFO alone does
    not tell a writer that nobody will ever read.

    >>> stdin = FifoWriter(fifos.stdin, Canceller(), on_close=close_io)  # doctest: +SKIP
    """

    def __init__(self, path: str, canceller: Canceller, on_close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.name = path
        self._canceller = canceller
        self._on_close = on_close
        self._lock = threading.Lock()  # state: connected, close pending, the placeholder
        self._io_lock = threading.Lock()  # a write in progress
        self._connected = False
        self._close_pending = False
        self._aborted = Canceller()
        # Set by the I/O loop while it writes our descriptor: called before we close it, outside our locks.
        self._on_release: Callable[[], None] | None = None
        # See the module docstring: O_RDWR is the placeholder reader that makes the O_WRONLY open possible.
        self._hold: int | None = _open_fifo(path, os.O_RDWR)
        try:
            self._fd = _open_fifo(path, os.O_WRONLY)
        except BaseException:
            os.close(self._hold)
            self._aborted.close()
            raise
        self._poll: select.poll | None = None  # made by the first write that must wait

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        self._checkClosed()
        return self._fd

    def write(self, data: ReadableBuffer) -> int:
        """Write all of ``data``; returns ``len(data)``.

        Raises:
            BrokenPipeError: the process's side is gone, or stdio was cancelled or aborted.
        """
        view = memoryview(data).cast("B")
        done = 0
        # Held for the whole write, so that close() and release() never pull the fd from under it.
        with self._io_lock:
            self._checkClosed()
            while done < len(view):
                if self._canceller.is_set() or self._aborted.is_set():
                    raise BrokenPipeError(errno.EPIPE, "writing stdin was cancelled", self.name)
                try:
                    done += os.write(self._fd, view[done:])
                    continue
                except BlockingIOError:
                    pass
                if self._poll is None:
                    self._poll = select.poll()
                    self._poll.register(self._fd, select.POLLOUT)
                    self._poll.register(self._canceller.fileno(), select.POLLIN)
                    self._poll.register(self._aborted.fileno(), select.POLLIN)
                # POLLOUT (room again) and POLLERR (no reader: the next write raises EPIPE) both mean "try again".
                self._poll.poll()
        return done

    def abort(self) -> None:
        """Make a write in progress, and every later one, raise ``BrokenPipeError``; nothing is closed."""
        self._aborted.cancel()

    def connected(self) -> None:
        """The shim has opened its end: drop the placeholder reader; finish a pending close."""
        with self._lock:
            if self._connected:
                return
            self._connected = True
            self._close_hold()
            hook = self._take_hook() if self._close_pending else None
        if hook is not None:
            try:
                hook()
            except Exception:
                log.exception("closing stdin of %s failed", self.name)

    def close(self) -> None:
        """Close our end; with the shim connected, also run the ``on_close`` hook (its errors propagate)."""
        self._let_go()
        with self._io_lock, self._lock:
            if self.closed:
                return
            os.close(self._fd)
            if self._connected:
                hook = self._take_hook()
            else:
                self._close_pending = True
                hook = None
            super().close()
        if hook is not None:
            hook()

    def release(self) -> None:
        """Close every descriptor without calling the hook (teardown, or the process never started).

        Waits for a write in progress: cancel first (as :meth:`DirectIO.close` does) so it ends at once.
        """
        self._let_go()
        with self._io_lock, self._lock:
            self._on_close = None
            self._close_hold()
            if not self.closed:
                os.close(self._fd)
                super().close()
            self._aborted.close()

    def __repr__(self) -> str:
        return f"<FifoWriter {self.name} {'closed' if self.closed else 'open'}>"

    def __del__(self) -> None:
        # Being collected is not a decision to end the process's input: no CloseIO from a finalizer.
        if hasattr(self, "_fd"):
            self.release()

    def _let_go(self) -> None:
        hook = self._on_release
        if hook is not None:
            hook()

    def _take_hook(self) -> Callable[[], None] | None:
        hook, self._on_close = self._on_close, None
        return hook

    def _close_hold(self) -> None:
        if self._hold is not None:
            os.close(self._hold)
            self._hold = None


class StdinStream(Protocol):
    """What ``DirectIO.stdin`` must offer: a :class:`FifoWriter`, or a wrapper around one."""

    @property
    def closed(self) -> bool: ...

    def write(self, data: bytes, /) -> int | None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class ProcessIO(Protocol):
    """What a stdio callback returns and the client manages (Go's ``cio.IO``).

    ``wait(timeout)`` returns once the streams are done, or raises ``TimeoutError``;
    ``cancel()`` wakes every blocked pump so it ends; ``close()`` ends the pumps and
    closes every descriptor. All three are idempotent.
    """

    def cancel(self) -> None: ...

    def close(self) -> None: ...

    def wait(self, timeout: float | None = None) -> object: ...


#: Go's ``StdioCallback``: receives the opened FIFOs, returns what the client manages.
StdioCallback = Callable[["DirectIO"], ProcessIO]


def _closed_reader() -> io.BufferedIOBase:
    reader = io.BufferedReader(io.BytesIO(), 1)
    reader.close()
    return reader


#: What a stream handed over by :meth:`DirectIO.take_output` reads as: a closed binary reader.
_TAKEN = _closed_reader()


class DirectIO:
    """Our opened ends of a :class:`FifoSet` (Go's ``cio.DirectIO``).

    Attributes:
        fifos: the set opened.
        stdin: a :class:`FifoWriter`, or None without a stdin FIFO. Replaceable.
        stdout: an ``io.BufferedReader`` over a :class:`FifoReader`, or None. Replaceable.
        stderr: likewise; None with a terminal.

    A stdio callback may return the DirectIO itself: it is a :class:`ProcessIO`
    whose ``wait`` has nothing to wait for.

    >>> dio = DirectIO.open(fifos, on_stdin_close=close_io)  # doctest: +SKIP
    """

    def __init__(
        self,
        fifos: FifoSet,
        canceller: Canceller,
        stdin: FifoWriter | None,
        stdout: io.BufferedIOBase | None,
        stderr: io.BufferedIOBase | None,
        io_loop: LoopOwner | None = None,
    ) -> None:
        self.fifos = fifos
        #: the I/O loop that :mod:`libcontainerd.stdio`'s callbacks move this process's data on
        #: (the client's); None: the process-wide one
        self.io_loop = io_loop
        self.stdin: StdinStream | None = stdin
        self.stdout: io.BufferedIOBase | None = stdout
        self.stderr: io.BufferedIOBase | None = stderr
        self._canceller = canceller
        self._own_stdin = stdin
        self._own = [f for f in (stdout, stderr) if f is not None]
        self._closed = False

    @classmethod
    def open(
        cls,
        fifos: FifoSet,
        *,
        on_stdin_close: Callable[[], None] | None = None,
        io_loop: LoopOwner | None = None,
    ) -> DirectIO:
        """Open our ends of the FIFOs without waiting for the shim.

        Args:
            fifos: the FIFOs, made by :meth:`FifoSet.create` or found by :meth:`FifoSet.existing`.
            on_stdin_close: called once when the user closes ``stdin`` and the shim is
                connected (the client's ``CloseIO``, so that the process sees EOF).
            io_loop: the I/O loop owner that ready-made callbacks use (a client passes its
                own); None: the process-wide one.

        Returns:
            The DirectIO; on failure nothing stays open.

        Raises:
            OSError: a FIFO cannot be opened (e.g. it was removed).
            errdefs.InvalidParameter: a path is not a FIFO.

        >>> with DirectIO.open(fifos) as dio:  # doctest: +SKIP
        ...     data = dio.stdout.read()
        """
        canceller = Canceller()
        undo: list[Callable[[], None]] = [canceller.close]
        try:
            stdin = None
            if fifos.stdin is not None:
                stdin = FifoWriter(fifos.stdin, canceller, on_stdin_close)
                undo.append(stdin.release)
            readers: list[io.BufferedReader[FifoReader] | None] = []
            for path in (fifos.stdout, fifos.stderr):
                reader = None
                if path is not None:
                    reader = io.BufferedReader(FifoReader(path, canceller), CHUNK_SIZE)
                    undo.append(reader.close)
                readers.append(reader)
        except BaseException:
            for fn in reversed(undo):
                fn()
            raise
        return cls(fifos, canceller, stdin, readers[0], readers[1], io_loop)

    def take_output(self, stream: str) -> int | None:
        """Hand the descriptor of ``stdout`` or ``stderr`` over to the caller, who then owns it.

        Only a stream that is still this DirectIO's own open FIFO reader can be taken (None
        otherwise: absent, replaced or closed). The stream attribute then holds a closed
        stream, and :meth:`close` no longer touches the descriptor. This is how the I/O loop
        takes a FIFO over.

        The reader itself is let go: CPython frees a ``BufferedReader``'s 64 KiB buffer only
        with the object, and a client holding hundreds of captured processes kept two each.
        """
        f = getattr(self, stream)
        if f is None or f not in self._own or f.closed or not isinstance(f, io.BufferedReader):
            return None
        raw = f.raw
        if not isinstance(raw, FifoReader) or raw.closed:
            return None
        fd = raw.detach()
        f.close()
        self._own.remove(f)
        setattr(self, stream, _TAKEN)
        return fd

    @property
    def canceller(self) -> Canceller:
        """The cancel signal shared by the streams; pumps may poll it too."""
        return self._canceller

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` or :meth:`close` was called."""
        return self._canceller.is_set()

    def connected(self) -> None:
        """Tell the streams that the shim has opened its ends.

        Call it once ``Tasks.Create`` (main process) or the exec's ``Tasks.Start``
        returned, or right after opening when re-attaching to a running process.
        It drops stdin's placeholder reader and runs a stdin close that waited for it.

        >>> dio.connected()  # doctest: +SKIP
        """
        if self._own_stdin is not None:
            self._own_stdin.connected()

    def abort_stdin(self) -> None:
        """Give up writing stdin (see :meth:`FifoWriter.abort`); output keeps flowing.

        >>> dio.abort_stdin()  # doctest: +SKIP
        """
        if self._own_stdin is not None:
            self._own_stdin.abort()

    def cancel(self) -> None:
        """Wake every reader and writer blocked on the FIFOs; they return EOF / raise ``BrokenPipeError``.

        >>> dio.cancel()  # doctest: +SKIP
        """
        self._canceller.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Nothing to wait for: the DirectIO moves no data itself. Returns True.

        >>> dio.wait()  # doctest: +SKIP
        True
        """
        return True

    def close(self) -> None:
        """Cancel, then close every descriptor this DirectIO opened; idempotent.

        Never calls the ``on_stdin_close`` hook. Streams put in place of ours are not closed.

        >>> dio.close()  # doctest: +SKIP
        """
        if self._closed:
            return
        self._closed = True
        self._canceller.cancel()
        if self._own_stdin is not None:
            self._own_stdin.release()
        for f in self._own:
            f.close()  # waits for a read in progress, which the cancel has just ended
        self._canceller.close()

    def __enter__(self) -> DirectIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        streams = [name for name in _STREAMS if getattr(self, name) is not None]
        state = "closed" if self._closed else ("cancelled" if self.cancelled else "open")
        return f"<DirectIO process={self.fifos.process_id} {' '.join(streams) or 'no streams'} {state}>"

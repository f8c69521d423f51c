"""Ready-made stdio callbacks: capture a process's output, or pump it to and from files.

A stdio callback (``attach_stdio``) receives the opened FIFOs as a
:class:`~libcontainerd.cio.DirectIO` and returns the object the client manages
(:class:`~libcontainerd.cio.ProcessIO`): :func:`capture` collects stdout and stderr
as bytes and can feed stdin from bytes; :func:`attach` copies between the FIFOs and
the caller's binary file objects. Both move data on their own named threads
(``libcontainerd-stdio-<process id>-<stream>``) that end on EOF or ``cancel()`` and
are joined by ``close()``; once the output streams are at EOF, writing stdin stops
(see :meth:`~libcontainerd.cio.FifoWriter.abort`). This module must not talk to containerd: closing stdin
towards the process (``CloseIO``) is the client's hook behind ``DirectIO.stdin``.

The client's side of the contract: it calls ``wait(timeout)`` (returns once the output
streams reached EOF, raises ``TimeoutError`` otherwise), then ``cancel()`` and
``close()`` when the process is deleted.
"""

from __future__ import annotations

import io
import logging
import select
import threading
import time
from typing import IO, Callable

from libcontainerd import errdefs
from libcontainerd.cio import CHUNK_SIZE, Canceller, DirectIO, StdinStream

__all__ = ["Attached", "Capture", "attach", "capture"]

log = logging.getLogger(__name__)

#: How long ``close()`` waits for the pump threads after cancelling them.
CLOSE_JOIN_TIMEOUT = 5.0
# Joins happen in slices so that Ctrl-C reaches a main thread that waits.
_JOIN_SLICE = 0.2


class _Pumps:
    """The threads of one stdio object: started, waited for, cancelled and joined together."""

    def __init__(self, dio: DirectIO) -> None:
        self.dio = dio
        self._outputs: list[threading.Thread] = []
        self._others: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._running_outputs = 0
        self._closed = False

    def add(self, stream: str, target: Callable[[], None], *, output: bool) -> None:
        name = f"libcontainerd-stdio-{self.dio.fifos.process_id}-{stream}"
        thread = threading.Thread(target=self._run, args=(name, target, output), name=name, daemon=True)
        (self._outputs if output else self._others).append(thread)

    def start(self) -> None:
        # Counted before any starts, so that one output's early EOF is not taken for all of them.
        self._running_outputs = len(self._outputs)
        for thread in self._outputs + self._others:
            thread.start()

    def _run(self, name: str, target: Callable[[], None], output: bool) -> None:
        try:
            target()
        except Exception:
            log.exception("%s failed", name)
        finally:
            if output:
                self._output_ended()

    def _output_ended(self) -> None:
        with self._lock:
            self._running_outputs -= 1
            last = self._running_outputs == 0
        if last:
            # The process closed all its output, so it exited (or means to write nothing more). The real shim
            # keeps reading the stdin FIFO after the process exited (its copy blocks on the process's pipe),
            # so a stdin writer blocked on a full FIFO would never learn; give up writing instead.
            self.dio.abort_stdin()

    def wait(self, timeout: float | None, *, all_threads: bool) -> bool:
        threads = self._outputs + (self._others if all_threads else [])
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            if thread is threading.current_thread():
                continue  # close() from inside a pump (e.g. the caller's sink): it ends when it returns
            while thread.is_alive():
                if deadline is None:
                    thread.join(_JOIN_SLICE)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                thread.join(min(_JOIN_SLICE, remaining))
        return True

    def done(self, *, all_threads: bool) -> bool:
        threads = self._outputs + (self._others if all_threads else [])
        return not any(t.is_alive() for t in threads)

    def cancel(self) -> None:
        self.dio.cancel()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.dio.cancel()
        if not self.wait(CLOSE_JOIN_TIMEOUT, all_threads=True):
            stuck = [t.name for t in self._outputs + self._others if t.is_alive()]
            # Only a pump blocked in the caller's own file can be stuck; it ends when that file does.
            log.warning("stdio threads still blocked in the caller's files after close: %s", ", ".join(stuck))
        self.dio.close()


def _collect(src: io.BufferedIOBase, out: bytearray) -> None:
    view = memoryview(bytearray(CHUNK_SIZE))
    try:
        while True:
            # readinto1: at most one FIFO read, straight into our reused buffer.
            n = src.readinto1(view)
            if not n:
                return
            out += view[:n]
    except ValueError:  # closed under us by close(): that is the end of the stream too
        return


def _copy_out(src: io.BufferedIOBase, sink: IO[bytes] | None, name: str) -> None:
    try:
        while True:
            # read1 returns what one FIFO read gave (no waiting for a full chunk), so interactive output flows.
            chunk = src.read1(CHUNK_SIZE)
            if not chunk:
                return
            if sink is None:
                continue
            try:
                _write_all(sink, chunk)
            except (OSError, ValueError) as exc:
                # Keep draining: a process whose output pipe fills up would block forever.
                log.warning("cannot write %s to the caller's file any more, dropping the rest: %s", name, exc)
                sink = None
    except ValueError:  # closed under us by close()
        return


def _write_all(sink: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = sink.write(view)
        # Buffered files take everything; raw ones may take part; None (a non-blocking sink) we cannot retry.
        if n is None or n >= len(view):
            break
        view = view[n:]
    sink.flush()


def _feed(src: IO[bytes], dst: StdinStream, canceller: Canceller, process_id: str) -> None:
    """Copy the caller's stdin into the FIFO; the caller's EOF becomes the process's EOF."""
    read = getattr(src, "read1", None) or src.read
    poller = None
    try:
        fd = src.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None  # e.g. io.BytesIO: reads never block, so there is nothing to wake
    if fd is not None:
        # A read of a tty or pipe cannot be interrupted; waiting in poll() with the canceller can.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(canceller.fileno(), select.POLLIN)
    try:
        while True:
            if canceller.is_set() or (poller is not None and canceller.fileno() in dict(poller.poll())):
                return
            chunk = read(CHUNK_SIZE)
            if not chunk:
                break
            dst.write(chunk)
            dst.flush()
    except BrokenPipeError:
        return  # the process is gone (or stdio was cancelled): nothing to close towards it
    except ValueError:
        return  # the caller closed their stdin file, or close() closed ours
    _close_stdin(dst, process_id)


def _close_stdin(dst: StdinStream, process_id: str) -> None:
    try:
        dst.close()
    except Exception:
        log.warning("closing stdin of process %s failed", process_id, exc_info=True)


class Capture:
    """Collects a process's stdout and stderr as bytes; optionally feeds its stdin from bytes.

    The capture is the stdio callback (call it with a DirectIO; it returns itself),
    then the handle to wait on. Stdin is written on its own thread while the output
    is read, so large payloads do not deadlock; then stdin is closed so that a
    process like ``cat`` ends. Writing stdin stops once stdout and stderr reached
    EOF: a process that exits before reading all of its stdin is fine (the rest is
    dropped).

    Attributes:
        stdout: what the process wrote to stdout so far (b"" when absent).
        stderr: likewise for stderr (b"" with a terminal, which merges it into stdout).

    >>> out = capture(stdin=b"hi")  # doctest: +SKIP
    >>> task = container.start(with_stdin=True, attach_stdio=out)  # doctest: +SKIP
    >>> out.wait(timeout=30).stdout  # doctest: +SKIP
    b'hi'
    """

    def __init__(self, stdin: bytes | None = None) -> None:
        self._stdin = stdin
        self._lock = threading.Lock()
        self._pumps: _Pumps | None = None
        self._out = bytearray()
        self._err = bytearray()

    def __call__(self, dio: DirectIO) -> Capture:
        """Start capturing from the FIFOs of ``dio``; returns the capture itself.

        Raises:
            errdefs.InvalidParameter: stdin bytes were given but the process has no stdin FIFO.
            errdefs.Conflict: the capture is attached to a process already.
        """
        pid = dio.fifos.process_id
        if self._stdin is not None and dio.stdin is None:
            raise errdefs.InvalidParameter(f"capture(stdin=...) of process {pid} needs with_stdin=True")
        with self._lock:
            if self._pumps is not None:
                other = self._pumps.dio.fifos.process_id
                raise errdefs.Conflict(f"this capture is attached to process {other} already")
            pumps = self._pumps = _Pumps(dio)
        out, err = dio.stdout, dio.stderr
        if out is not None:
            pumps.add("stdout", lambda: _collect(out, self._out), output=True)
        if err is not None:
            pumps.add("stderr", lambda: _collect(err, self._err), output=True)
        stdin = dio.stdin
        if stdin is not None:
            if self._stdin:
                pumps.add("stdin", lambda: self._write_stdin(stdin, pid), output=False)
            else:
                # Nothing to send: EOF right away, so that a process reading stdin does not wait forever.
                _close_stdin(stdin, pid)
        pumps.start()
        return self

    def _write_stdin(self, stdin: StdinStream, process_id: str) -> None:
        data, self._stdin = self._stdin or b"", None  # the payload need not live as long as the capture
        try:
            stdin.write(data)
            stdin.flush()
        except BrokenPipeError:
            log.debug("process %s stopped reading its stdin", process_id)
            return
        _close_stdin(stdin, process_id)

    @property
    def stdout(self) -> bytes:
        """What the process wrote to stdout so far (all of it once :meth:`wait` returned)."""
        return bytes(self._out)

    @property
    def stderr(self) -> bytes:
        """What the process wrote to stderr so far (``b""`` with a terminal)."""
        return bytes(self._err)

    @property
    def done(self) -> bool:
        """Whether the output reached EOF and the stdin payload was written."""
        pumps = self._pumps
        return pumps is not None and pumps.done(all_threads=True)

    def wait(self, timeout: float | None = None) -> Capture:
        """Block until stdout and stderr reached EOF and stdin was written; returns the capture.

        Raises:
            TimeoutError: not done within ``timeout`` seconds.
            errdefs.Conflict: the capture was never attached to a process.

        >>> out.wait(timeout=10).stdout  # doctest: +SKIP
        b'hello\\n'
        """
        pumps = self._pumps
        if pumps is None:
            raise errdefs.Conflict("this capture was never attached to a process (was it passed as attach_stdio?)")
        if not pumps.wait(timeout, all_threads=True):
            raise TimeoutError(f"output of process {pumps.dio.fifos.process_id} still open after {timeout} s")
        return self

    def cancel(self) -> None:
        """Stop reading and writing now; what was read stays in ``stdout``/``stderr``.

        >>> out.cancel()  # doctest: +SKIP
        """
        if self._pumps is not None:
            self._pumps.cancel()

    def close(self) -> None:
        """Cancel, join the threads and close the FIFOs; idempotent.

        >>> out.close()  # doctest: +SKIP
        """
        if self._pumps is not None:
            self._pumps.close()

    def __repr__(self) -> str:
        pumps = self._pumps
        state = "not attached" if pumps is None else ("done" if self.done else "running")
        return f"<Capture stdout={len(self._out)}B stderr={len(self._err)}B {state}>"


def capture(stdin: bytes | None = None) -> Capture:
    """A stdio callback that collects stdout/stderr as bytes and writes ``stdin`` (if given) then closes it.

    Args:
        stdin: bytes for the process's stdin; needs ``with_stdin=True``. When the
            process has a stdin FIFO but no bytes are given, stdin is closed at once.

    Returns:
        The :class:`Capture`, to pass as ``attach_stdio`` and then ``wait()`` on.

    >>> out = capture()
    >>> out
    <Capture stdout=0B stderr=0B not attached>
    """
    return Capture(stdin)


class Attached:
    """Pumps between the FIFOs of one process and the caller's binary file objects.

    The caller's files are never closed here; the caller's stdin reaching EOF closes
    the process's stdin instead. ``wait()`` waits for the output pumps only (a
    caller's stdin such as a terminal may never end), and once they are at EOF the
    stdin pump gives up at its next write; ``cancel()``/``close()`` also
    stop the stdin pump when the caller's stdin has a ``fileno()`` (file, pipe, tty,
    socket). A pump blocked inside the caller's own ``write`` cannot be interrupted.

    >>> attached = attach(stdout=sys.stdout.buffer)(dio)  # doctest: +SKIP
    """

    def __init__(
        self,
        dio: DirectIO,
        stdin: IO[bytes] | None,
        stdout: IO[bytes] | None,
        stderr: IO[bytes] | None,
    ) -> None:
        pid = dio.fifos.process_id
        if stdin is not None and dio.stdin is None:
            raise errdefs.InvalidParameter(f"attach(stdin=...) of process {pid} needs with_stdin=True")
        ours = (("stdin", dio.stdin), ("stdout", dio.stdout), ("stderr", dio.stderr))
        self._streams = [name for name, stream in ours if stream is not None]
        self._pumps = _Pumps(dio)
        # An output FIFO nobody wants is drained anyway: a full pipe would block the process.
        out, err = dio.stdout, dio.stderr
        if out is not None:
            self._pumps.add("stdout", lambda: _copy_out(out, stdout, f"stdout of process {pid}"), output=True)
        if err is not None:
            self._pumps.add("stderr", lambda: _copy_out(err, stderr, f"stderr of process {pid}"), output=True)
        fifo_stdin = dio.stdin
        if fifo_stdin is not None:
            if stdin is not None:
                src = stdin
                self._pumps.add("stdin", lambda: _feed(src, fifo_stdin, dio.canceller, pid), output=False)
            else:
                _close_stdin(fifo_stdin, pid)
        self._pumps.start()

    @property
    def done(self) -> bool:
        """Whether the output streams reached EOF."""
        return self._pumps.done(all_threads=False)

    def wait(self, timeout: float | None = None) -> Attached:
        """Block until stdout and stderr reached EOF (all copied and flushed); returns self.

        Raises:
            TimeoutError: not done within ``timeout`` seconds.

        >>> attached.wait(timeout=10)  # doctest: +SKIP
        """
        if not self._pumps.wait(timeout, all_threads=False):
            raise TimeoutError(f"output of process {self._pumps.dio.fifos.process_id} still open after {timeout} s")
        return self

    def cancel(self) -> None:
        """Stop the pumps now (data not yet copied is dropped).

        >>> attached.cancel()  # doctest: +SKIP
        """
        self._pumps.cancel()

    def close(self) -> None:
        """Cancel, join the pump threads (bounded) and close the FIFOs; idempotent.

        >>> attached.close()  # doctest: +SKIP
        """
        self._pumps.close()

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<Attached process={self._pumps.dio.fifos.process_id} {','.join(self._streams) or '-'} {state}>"


def attach(
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
) -> Callable[[DirectIO], Attached]:
    """A stdio callback that copies the caller's ``stdin`` into the process and its output into ``stdout``/``stderr``.

    Data streams in chunks of :data:`~libcontainerd.cio.CHUNK_SIZE` with flat memory,
    and each chunk is flushed. Output the caller does not want (``None``) is read and
    dropped. The caller's files stay open; the caller's stdin reaching EOF closes the
    process's stdin (which needs ``with_stdin=True``).

    Args:
        stdin: readable binary file object, or None.
        stdout: writable binary file object, or None.
        stderr: writable binary file object, or None (unused with a terminal).

    Returns:
        The callback; it returns an :class:`Attached` to ``wait()`` on.

    >>> import io
    >>> callback = attach(stdout=io.BytesIO())
    >>> callable(callback)
    True
    """

    def callback(dio: DirectIO) -> Attached:
        return Attached(dio, stdin, stdout, stderr)

    return callback


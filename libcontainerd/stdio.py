"""Ready-made stdio callbacks: capture a process's output, or pump it to and from files.

A stdio callback (``attach_stdio``) receives the opened FIFOs as a
:class:`~libcontainerd.cio.DirectIO` and returns the object the client manages
(:class:`~libcontainerd.cio.ProcessIO`): :func:`capture` collects stdout and stderr
as bytes and can feed stdin from bytes; :func:`attach` copies between the FIFOs and
the caller's binary file objects. Neither starts a thread of its own: the FIFOs of every
process of a client are read and written on that client's one I/O loop thread
(``libcontainerd-stdio-loop``, see :mod:`libcontainerd._ioloop`), and what may block -- a
caller's file's ``write`` or ``read``, ``CloseIO`` -- runs on its bounded delivery pool
(``libcontainerd-stdio-io-<n>``). Order within a stream is kept; a caller's file that does
not keep up makes the loop stop reading that one FIFO (above a high-water mark) until it has
caught up, so the process's own writes block as with any full pipe, and nothing else waits.
Once the output streams are at EOF, writing stdin stops. ``close()`` stops the pumps and
releases the loop, which stops when its last user is gone (or when the client closes). This
module must not talk to containerd: closing stdin towards the process (``CloseIO``) is the
client's hook behind ``DirectIO.stdin``.

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

from libcontainerd import _ioloop, errdefs
from libcontainerd.cio import CHUNK_SIZE, Canceller, DirectIO, FifoWriter, StdinStream
from libcontainerd.queue import KeyedSerialExecutor

__all__ = ["Attached", "Capture", "attach", "capture"]

log = logging.getLogger(__name__)

#: How long ``close()`` waits for writes in flight to the caller's files after cancelling.
CLOSE_JOIN_TIMEOUT = 5.0
# Waits happen in slices so that Ctrl-C reaches a main thread that waits.
_WAIT_SLICE = 0.2

# Which _Streams a pool worker is running a job of (so that close() from inside one does not wait for itself).
_current = threading.local()


class _Collect:
    """An output sink that appends to a bytearray (or drops the data, without one), on the loop."""

    def __init__(self, out: bytearray | None, on_done: Callable[[], None]) -> None:
        self._out = out
        self._on_done = on_done

    def push(self, data: bytes) -> bool:
        if self._out is not None:
            self._out += data
        return True

    def end(self, cancelled: bool) -> None:
        self._on_done()


class _Streams:
    """The pumps of one stdio object: set up, started on the loop, waited for, cancelled and closed together."""

    def __init__(self, dio: DirectIO) -> None:
        self.dio = dio
        self.pid = dio.fifos.process_id
        self._owner = dio.io_loop if dio.io_loop is not None else _ioloop.default_owner()
        self._loop: _ioloop.IOLoop | None = None
        self._pool: KeyedSerialExecutor | None = None
        self._key = f"{self.pid}@{id(self):x}"
        self._lock = threading.Lock()
        self._outputs: list[tuple[str, bytearray | None, IO[bytes] | None]] = []
        self._stdin_bytes: bytes | None = None
        self._stdin_file: IO[bytes] | None = None
        self._outputs_left = 0
        self._stdin_left = 0
        self._outputs_done = threading.Event()
        self._all_done = threading.Event()
        self._pumps: list[_ioloop.OutputPump | _ioloop.CopyPump] = []
        self._input: _ioloop.InputPump | None = None
        self._feeder: _Feeder | None = None
        self._closed = False

    # -- set-up ------------------------------------------------------------------------

    def collect(self, stream: str, out: bytearray) -> None:
        self._outputs.append((stream, out, None))

    def copy_out(self, stream: str, sink: IO[bytes] | None) -> None:
        self._outputs.append((stream, None, sink))

    def feed_bytes(self, data: bytes) -> None:
        self._stdin_bytes = data

    def feed_file(self, src: IO[bytes]) -> None:
        self._stdin_file = src

    def start(self) -> None:
        """Take the FIFOs over and start moving data on the loop; on a failure nothing stays taken."""
        loop, pool = self._owner.acquire()
        self._loop, self._pool = loop, pool
        try:
            self._start(loop, pool)
        except BaseException:
            self._cancel_on_loop()  # nothing was started on the loop yet: this closes what was taken
            self._owner.release(loop)
            raise

    def _start(self, loop: _ioloop.IOLoop, pool: KeyedSerialExecutor) -> None:
        self._outputs_left = len(self._outputs)
        has_stdin = self._stdin_bytes is not None or self._stdin_file is not None
        self._stdin_left = 1 if has_stdin else 0
        starts: list[Callable[[], None]] = []
        for stream, out, sink in self._outputs:
            fd = self.dio.take_output(stream)
            if fd is None:  # not our FIFO reader (the callback's caller replaced it): a blocking pump on the pool
                self._fallback_output(stream, out, sink)
                continue
            pump: _ioloop.OutputPump | _ioloop.CopyPump
            if out is not None or sink is None:  # an output nobody wants is drained anyway: a full pipe blocks
                pump = _ioloop.OutputPump(loop, fd, _Collect(out, self._output_done))
            else:
                name = f"{stream} of process {self.pid}"
                pump = _ioloop.CopyPump(loop, fd, pool, f"{self._key}/{stream}", _Writer(sink, name),
                                        self._output_done, self._job)
            self._pumps.append(pump)
            starts.append(pump.start)
        if has_stdin:
            writer = self.dio.stdin
            if isinstance(writer, FifoWriter) and not writer.closed:
                self._input = _ioloop.InputPump(loop, writer, self._stdin_ended)
                starts.append(self._input.start)
                if self._stdin_file is not None:
                    self._feeder = _Feeder(self, self._stdin_file, self._input)
                    starts.append(self._feeder.start)
                else:
                    data, self._stdin_bytes = self._stdin_bytes or b"", None  # need not live as long as we do
                    starts.append(lambda: self._start_bytes(data))
            else:
                self._fallback_stdin(writer)
        self._check_done()
        if not loop.call_soon(self._run_all, starts):
            self._cancel_on_loop()

    @staticmethod
    def _run_all(starts: list[Callable[[], None]]) -> None:
        for fn in starts:
            fn()

    def _start_bytes(self, data: bytes) -> None:
        assert self._input is not None
        self._input.write(data)
        self._input.close()

    def _fallback_output(self, stream: str, out: bytearray | None, sink: IO[bytes] | None) -> None:
        src = getattr(self.dio, stream)
        name = f"{stream} of process {self.pid}"
        if out is not None:
            self._submit(stream, lambda: _collect(src, out), self._output_done)
        else:
            self._submit(stream, lambda: _copy_out(src, sink, name), self._output_done)

    def _fallback_stdin(self, writer: StdinStream | None) -> None:
        if writer is None:
            self._stdin_done()
            return
        src = self._stdin_file
        if src is not None:
            canceller = self.dio.canceller
            self._submit("stdin", lambda: _feed(src, writer, canceller, self.pid), self._stdin_done)
        else:
            data, self._stdin_bytes = self._stdin_bytes or b"", None
            self._submit("stdin", lambda: _write_stdin(writer, data, self.pid), self._stdin_done)

    def _submit(self, stream: str, fn: Callable[[], None], then: Callable[[], None]) -> None:
        assert self._pool is not None

        def job() -> None:
            try:
                self._job(fn)
            finally:
                then()

        try:
            self._pool.submit(f"{self._key}/{stream}", job)
        except errdefs.LibcontainerdError:
            then()

    def _job(self, fn: Callable[[], None]) -> None:
        _current.streams = self
        try:
            fn()
        except Exception:
            log.exception("stdio of process %s failed", self.pid)
        finally:
            _current.streams = None

    # -- progress ------------------------------------------------------------------------

    def _output_done(self) -> None:
        with self._lock:
            self._outputs_left -= 1
            last = self._outputs_left == 0
        if last:
            # The process closed all its output, so it exited (or means to write nothing more). The real shim
            # keeps reading the stdin FIFO after the process exited (its copy blocks on the process's pipe),
            # so a stdin writer waiting for room would never learn; give up writing instead.
            self._abort_stdin()
        self._check_done()

    def _abort_stdin(self) -> None:
        pump, loop = self._input, self._loop
        if pump is not None and loop is not None:
            loop.call_soon(pump.abort)
        else:
            self.dio.abort_stdin()

    def _stdin_ended(self, how: str) -> None:
        """(loop) The input pump ended; "closed" means all was written and the FIFO is to be closed."""
        if self._feeder is not None:
            self._feeder.stop()
        writer = self.dio.stdin
        if how == "closed" and writer is not None:
            self._submit("stdin", lambda: _close_stdin(writer, self.pid), self._stdin_done)
        else:
            if how == "broken":
                log.debug("process %s stopped reading its stdin", self.pid)
            self._stdin_done()

    def _stdin_done(self) -> None:
        with self._lock:
            self._stdin_left -= 1
        self._check_done()

    def _check_done(self) -> None:
        with self._lock:
            outputs, others = self._outputs_left, self._stdin_left
        if outputs <= 0:
            self._outputs_done.set()
            if others <= 0:
                self._all_done.set()

    def wait(self, timeout: float | None, *, all_streams: bool) -> bool:
        event = self._all_done if all_streams else self._outputs_done
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _WAIT_SLICE if deadline is None else min(_WAIT_SLICE, deadline - time.monotonic())
            if left <= 0:
                return event.is_set()
            if event.wait(left):
                return True

    def done(self, *, all_streams: bool) -> bool:
        return (self._all_done if all_streams else self._outputs_done).is_set()

    # -- stopping ------------------------------------------------------------------------

    def _cancel_on_loop(self) -> None:
        if self._feeder is not None:
            self._feeder.stop()
        for pump in self._pumps:
            pump.cancel()
        if self._input is not None:
            self._input.cancel()

    def cancel(self) -> None:
        self.dio.cancel()
        loop = self._loop
        if loop is not None and not loop.call_soon(self._cancel_on_loop):
            self._cancel_on_loop()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.dio.cancel()
        loop = self._loop
        if loop is not None:
            loop.call(self._cancel_on_loop)  # from here on no pump touches our descriptors
            # Not from inside our own job (a caller's sink that closes us): that one ends when it returns.
            inside = getattr(_current, "streams", None) is self
            if not inside and not self.wait(CLOSE_JOIN_TIMEOUT, all_streams=True):
                # Only a write blocked in the caller's own file can be stuck; it ends when that file does.
                log.warning("stdio of process %s still blocked in the caller's files after close", self.pid)
            self._owner.release(loop)
        self.dio.close()


class _Writer:
    """Writes chunks to a caller's file (on the pool); after a failure it drops the rest, so the FIFO drains."""

    def __init__(self, sink: IO[bytes], name: str) -> None:
        self._sink: IO[bytes] | None = sink
        self._name = name

    def __call__(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            return
        try:
            _write_all(sink, data)
        except (OSError, ValueError) as exc:
            # Keep draining: a process whose output pipe fills up would block forever.
            log.warning("cannot write %s to the caller's file any more, dropping the rest: %s", self._name, exc)
            self._sink = None


class _Feeder:
    """Copies a caller's stdin into an :class:`~libcontainerd._ioloop.InputPump`.

    Reads run on the pool, one chunk at a time and only once the pump has written the last
    one out; a source that can be polled (pipe, terminal, socket) is read only after the loop
    saw it readable, so no worker waits in it. The caller's EOF becomes the process's EOF.
    """

    def __init__(self, streams: _Streams, src: IO[bytes], pump: _ioloop.InputPump) -> None:
        self._streams = streams
        self._read = getattr(src, "read1", None) or src.read
        try:
            self._fd: int | None = src.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # e.g. io.BytesIO: reads never block
        self._pump = pump
        self._armed = False
        self._stopped = False
        pump.on_room = self._next

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        """(loop) Ask for the next chunk."""
        if self._stopped or self._pump.ended:
            return
        loop = self._streams._loop
        assert loop is not None
        if self._fd is not None:
            try:
                loop.watch(self._fd, select.EPOLLIN, self._readable)
                self._armed = True
                return
            except OSError:  # a regular file (EPERM), or this loop watches the descriptor already
                self._fd = None
        self._streams._submit("stdin-read", self._read_one, lambda: None)

    def _readable(self, mask: int) -> None:
        self._disarm()
        self._streams._submit("stdin-read", self._read_one, lambda: None)

    def _disarm(self) -> None:
        if self._armed and self._fd is not None:
            self._armed = False
            loop = self._streams._loop
            assert loop is not None
            loop.unwatch(self._fd)

    def _read_one(self) -> None:
        """(pool) One read of the caller's stdin."""
        if self._stopped:
            return
        loop = self._streams._loop
        assert loop is not None
        try:
            chunk = self._read(CHUNK_SIZE)
        except (OSError, ValueError) as exc:  # the caller closed their stdin file, or it failed
            log.debug("reading the caller's stdin for process %s ended: %s", self._streams.pid, exc)
            loop.call_soon(self._pump.abort)
            return
        if not chunk:
            loop.call_soon(self._pump.close)
        else:
            loop.call_soon(self._got, chunk)

    def _got(self, chunk: bytes) -> None:
        if not self._stopped:
            self._pump.write(chunk)

    def stop(self) -> None:
        """(loop)"""
        self._stopped = True
        self._disarm()


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


def _write_stdin(stdin: StdinStream, data: bytes, process_id: str) -> None:
    try:
        stdin.write(data)
        stdin.flush()
    except BrokenPipeError:
        log.debug("process %s stopped reading its stdin", process_id)
        return
    _close_stdin(stdin, process_id)


def _close_stdin(dst: StdinStream, process_id: str) -> None:
    try:
        dst.close()
    except Exception:
        log.warning("closing stdin of process %s failed", process_id, exc_info=True)


class Capture:
    """Collects a process's stdout and stderr as bytes; optionally feeds its stdin from bytes.

    The capture is the stdio callback (call it with a DirectIO; it returns itself),
    then the handle to wait on. Stdin is written on the I/O loop while the output is
    read, so large payloads do not deadlock; then stdin is closed so that a process
    like ``cat`` ends. Writing stdin stops once stdout and stderr reached EOF: a
    process that exits before reading all of its stdin is fine (the rest is dropped).

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
        self._streams: _Streams | None = None
        self._out = bytearray()
        self._err = bytearray()

    def __call__(self, dio: DirectIO) -> Capture:
        """Start capturing from the FIFOs of ``dio``; returns the capture itself.

        Raises:
            errdefs.InvalidParameter: stdin bytes were given but the process has no stdin FIFO.
            errdefs.Conflict: the capture is attached to a process already.
            errdefs.Cancelled: the client of ``dio`` is closed.
        """
        pid = dio.fifos.process_id
        if self._stdin is not None and dio.stdin is None:
            raise errdefs.InvalidParameter(f"capture(stdin=...) of process {pid} needs with_stdin=True")
        with self._lock:
            if self._streams is not None:
                other = self._streams.dio.fifos.process_id
                raise errdefs.Conflict(f"this capture is attached to process {other} already")
            streams = self._streams = _Streams(dio)
        if dio.stdout is not None:
            streams.collect("stdout", self._out)
        if dio.stderr is not None:
            streams.collect("stderr", self._err)
        stdin = dio.stdin
        if stdin is not None:
            if self._stdin:
                streams.feed_bytes(self._stdin)
                self._stdin = None  # the payload need not live as long as the capture
            else:
                # Nothing to send: EOF right away, so that a process reading stdin does not wait forever.
                _close_stdin(stdin, pid)
        try:
            streams.start()
        except BaseException:
            with self._lock:
                self._streams = None
            raise
        return self

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
        streams = self._streams
        return streams is not None and streams.done(all_streams=True)

    def wait(self, timeout: float | None = None) -> Capture:
        """Block until stdout and stderr reached EOF and stdin was written; returns the capture.

        Raises:
            TimeoutError: not done within ``timeout`` seconds.
            errdefs.Conflict: the capture was never attached to a process.

        >>> out.wait(timeout=10).stdout  # doctest: +SKIP
        b'hello\\n'
        """
        streams = self._streams
        if streams is None:
            raise errdefs.Conflict("this capture was never attached to a process (was it passed as attach_stdio?)")
        if not streams.wait(timeout, all_streams=True):
            raise TimeoutError(f"output of process {streams.pid} still open after {timeout} s")
        return self

    def cancel(self) -> None:
        """Stop reading and writing now; what was read stays in ``stdout``/``stderr``.

        >>> out.cancel()  # doctest: +SKIP
        """
        if self._streams is not None:
            self._streams.cancel()

    def close(self) -> None:
        """Cancel, wait for what is in flight, release the I/O loop and close the FIFOs; idempotent.

        >>> out.close()  # doctest: +SKIP
        """
        if self._streams is not None:
            self._streams.close()

    def __repr__(self) -> str:
        streams = self._streams
        state = "not attached" if streams is None else ("done" if self.done else "running")
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
    the process's stdin instead. ``wait()`` waits for the output only (a caller's
    stdin such as a terminal may never end), and once it is at EOF writing stdin
    stops. Writes to the caller's files and reads of the caller's stdin run on the
    client's bounded delivery pool; a source with a ``fileno()`` that can be polled
    (pipe, terminal, socket) is read only once it is readable, so ``cancel()`` and
    ``close()`` never wait for it. A write blocked inside the caller's own file cannot
    be interrupted: ``close()`` waits for it a bounded time, and that FIFO alone stops
    being read meanwhile.

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
        self._names = [name for name, stream in ours if stream is not None]
        self._streams = streams = _Streams(dio)
        # An output FIFO nobody wants is drained anyway: a full pipe would block the process.
        if dio.stdout is not None:
            streams.copy_out("stdout", stdout)
        if dio.stderr is not None:
            streams.copy_out("stderr", stderr)
        fifo_stdin = dio.stdin
        if fifo_stdin is not None:
            if stdin is not None:
                streams.feed_file(stdin)
            else:
                _close_stdin(fifo_stdin, pid)
        streams.start()

    @property
    def done(self) -> bool:
        """Whether the output streams reached EOF (and all of it was written to the caller's files)."""
        return self._streams.done(all_streams=False)

    def wait(self, timeout: float | None = None) -> Attached:
        """Block until stdout and stderr reached EOF (all copied and flushed); returns self.

        Raises:
            TimeoutError: not done within ``timeout`` seconds.

        >>> attached.wait(timeout=10)  # doctest: +SKIP
        """
        if not self._streams.wait(timeout, all_streams=False):
            raise TimeoutError(f"output of process {self._streams.pid} still open after {timeout} s")
        return self

    def cancel(self) -> None:
        """Stop the pumps now (data not yet copied is dropped).

        >>> attached.cancel()  # doctest: +SKIP
        """
        self._streams.cancel()

    def close(self) -> None:
        """Cancel, wait (bounded) for writes in flight, release the I/O loop and close the FIFOs; idempotent.

        >>> attached.close()  # doctest: +SKIP
        """
        self._streams.close()

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<Attached process={self._streams.pid} {','.join(self._names) or '-'} {state}>"


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


"""The stdio I/O loop: one thread that moves the FIFO data of every process of a client.

This module owns the loop thread (``libcontainerd-stdio-loop``), which waits in ``epoll`` on
non-blocking FIFO descriptors, and the pumps that run on it: :class:`OutputPump` reads an
output FIFO and hands each chunk to a sink on the loop (capture), :class:`InputPump` writes a
stdin FIFO from a buffer and waits for ``EPOLLOUT`` while the pipe is full, :class:`CopyPump`
copies an output FIFO to a caller's file on the bounded delivery pool (a
:class:`~libcontainerd.queue.KeyedSerialExecutor`, threads ``libcontainerd-stdio-io-<n>``)
while data flows and leaves it to the loop while it is idle. :class:`LoopOwner` starts loop
and pool on first use and stops and joins them when the last user leaves or when its client
closes. Nothing here may block on the loop thread or run a caller's code on it: what can
block (a caller's ``write``/``read``, ``CloseIO``) goes to the pool. The ready-made callbacks
of :mod:`libcontainerd.stdio` are built from these parts; this module knows no containerd.

Linux facts it is built on (besides those of :mod:`libcontainerd.cio`, checked by
``tests/unit/test_ioloop.py``): ``epoll`` reports a FIFO's read side as it reports ``poll()``
(``EPOLLHUP`` only once a writer connected and left), and its write side ``EPOLLERR`` once no
reader is left; a descriptor that is closed leaves the epoll set by itself, so pumps always
unregister before they close. The runc shim keeps a read end of each output FIFO open itself
(containerd's ``pkg/process/io.go``), so a FIFO we stop reading only fills up: the process
then blocks in its write, which is the backpressure the pumps rely on.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import threading
from typing import Any, Callable, Protocol

from libcontainerd import errdefs
from libcontainerd.cio import CHUNK_SIZE, FifoWriter
from libcontainerd.queue import KeyedSerialExecutor

__all__ = ["LINGER", "CopyPump", "IOLoop", "InputPump", "LoopOwner", "OutputPump", "default_owner"]

log = logging.getLogger(__name__)

#: How long a pool worker that just read a bulk chunk waits for more before it hands the FIFO back.
LINGER = 0.02
# A read at least this big (the shim copies in 4 KiB writes) says "bulk": the worker lingers after it.
_BULK = 4096
# Reads one pool job makes before it hands the FIFO back (up to 4 MiB), so that busy streams take turns.
_SLICE_READS = 64
#: Threads that write to callers' files (and call CloseIO) for one loop.
POOL_WORKERS = 4
#: How long pool workers wait for work before they exit.
POOL_IDLE = 2.0

_Call = tuple[Callable[..., object], tuple[Any, ...]]


class Stoppable(Protocol):
    """A pump the loop abandons when it stops (its descriptors closed, its sink told)."""

    def cancel(self) -> None: ...


class IOLoop:
    """One thread waiting in ``epoll``; runs handlers for ready descriptors and calls queued from other threads.

    Handlers and calls run on the loop thread, one at a time, and must never block.
    :meth:`watch`, :meth:`unwatch` and the pump methods are for the loop thread only;
    :meth:`call_soon` and :meth:`call` are for any thread.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._calls: collections.deque[_Call] = collections.deque()
        self._wake_pending = False
        self._stopping = False
        self._finished = False
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._pumps: dict[Stoppable, None] = {}
        self._epoll = select.epoll()
        try:
            self._wake_r, self._wake_w = os.pipe()
        except BaseException:
            self._epoll.close()
            raise
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        try:
            self._thread.start()
        except BaseException:
            self._close_fds()
            raise

    def in_loop(self) -> bool:
        """Whether the caller runs on the loop thread."""
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop thread; False (and nothing runs) once the loop has finished."""
        with self._lock:
            if self._finished:
                return False
            self._calls.append((fn, args))
            if self._wake_pending:
                return True
            self._wake_pending = True
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # the pipe is full of wake-ups: the loop wakes anyway
            pass
        return True

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` on the loop thread and wait for it (inline on the loop, or once the loop is gone)."""
        if self.in_loop():
            fn()
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        if not self.call_soon(run):
            fn()  # the loop thread is gone: nothing else touches the pumps any more
            return
        while not done.wait(0.2):  # in slices, so that Ctrl-C reaches a main thread that waits
            pass

    # -- loop thread only --------------------------------------------------------------

    def watch(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        """Call ``handler(mask)`` whenever ``fd`` is ready for ``events`` (level-triggered)."""
        if fd in self._handlers:
            self._epoll.modify(fd, events)
        else:
            self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd``; a no-op when it is not watched."""
        if self._handlers.pop(fd, None) is None:
            return
        try:
            self._epoll.unregister(fd)
        except OSError as exc:  # closed under us (a caller's file): it left the set by itself
            if exc.errno not in (errno.EBADF, errno.ENOENT):
                raise

    def add_pump(self, pump: Stoppable) -> None:
        """Remember a pump to cancel if the loop stops before it ends."""
        self._pumps[pump] = None

    def remove_pump(self, pump: Stoppable) -> None:
        self._pumps.pop(pump, None)

    def close_pump(self, pump: Stoppable, fd: int) -> None:
        """(loop) The end of a pump that owns ``fd``: stop watching it, close it, forget the pump."""
        self.unwatch(fd)
        os.close(fd)
        self.remove_pump(pump)

    # -- lifetime ----------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> bool:
        """Cancel every pump still running, end the thread and join it (unless called on it).

        Returns:
            False if the thread was still running after ``timeout``.
        """
        with self._lock:
            if not self._finished:
                self._stopping = True
        self.call_soon(lambda: None)
        if self.in_loop():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stopping:
                for fd, mask in self._epoll.poll():
                    if fd == self._wake_r:
                        self._drain_wake()
                        continue
                    handler = self._handlers.get(fd)
                    if handler is None:
                        continue
                    try:
                        handler(mask)
                    except Exception:
                        log.exception("%s: handler of fd %d failed", self.name, fd)
                self._run_calls()
        finally:
            for pump in list(self._pumps):
                try:
                    pump.cancel()
                except Exception:
                    log.exception("%s: cancelling %r failed", self.name, pump)
            with self._lock:
                self._finished = True
            self._run_calls()
            self._close_fds()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, collections.deque()
            self._wake_pending = False
        for fn, args in calls:
            try:
                fn(*args)
            except Exception:
                log.exception("%s: call %r failed", self.name, fn)

    def _close_fds(self) -> None:
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __repr__(self) -> str:
        return f"<IOLoop {self.name} {'finished' if self._finished else 'running'} fds={len(self._handlers)}>"


class LoopOwner:
    """Starts an :class:`IOLoop` and its delivery pool on first use; stops and joins both when the
    last user leaves (:meth:`release`) or on :meth:`close`.

    A client owns one (its ``close()`` closes it); :func:`default_owner` serves DirectIOs
    opened without a client. After :meth:`close`, :meth:`acquire` raises ``errdefs.Cancelled``.

    >>> owner = LoopOwner("libcontainerd-doc")
    >>> loop, pool = owner.acquire()
    >>> owner.release(loop)
    >>> owner.running
    False
    """

    def __init__(self, name: str = "libcontainerd-stdio", *, pool_workers: int = POOL_WORKERS,
                 closable: bool = True) -> None:
        self._name = name
        self._pool_workers = pool_workers
        self._closable = closable
        self._lock = threading.Lock()
        self._users = 0
        self._loop: IOLoop | None = None
        self._pool: KeyedSerialExecutor | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """Whether the loop thread runs now."""
        return self._loop is not None

    @property
    def users(self) -> int:
        """Stdio objects that hold the loop now."""
        return self._users

    def acquire(self) -> tuple[IOLoop, KeyedSerialExecutor]:
        """Become a user: the loop and pool, started if none runs.

        Raises:
            errdefs.Cancelled: the owner (its client) is closed.
        """
        with self._lock:
            if self._closed:
                raise errdefs.Cancelled("stdio cannot start: the client is closed")
            if self._loop is None or self._pool is None:
                loop = IOLoop(f"{self._name}-loop")
                self._pool = KeyedSerialExecutor(self._pool_workers, name=f"{self._name}-io", idle_timeout=POOL_IDLE)
                self._loop = loop
            self._users += 1
            return self._loop, self._pool

    def release(self, loop: IOLoop) -> None:
        """A user is done with ``loop``; the last one stops and joins loop and pool."""
        with self._lock:
            if loop is not self._loop:
                return  # stopped already (by close())
            self._users -= 1
            if self._users > 0:
                return
            pool = self._pool
            self._loop = self._pool = None
        self._shutdown(loop, pool)

    def close(self, timeout: float = 2.0) -> None:
        """Cancel every pump, stop and join the loop and the pool; idempotent. Later users are refused."""
        with self._lock:
            self._closed = self._closable
            loop, pool = self._loop, self._pool
            self._loop = self._pool = None
            self._users = 0
        if loop is not None:
            self._shutdown(loop, pool, timeout)

    def _shutdown(self, loop: IOLoop, pool: KeyedSerialExecutor | None, timeout: float = 5.0) -> None:
        if not loop.stop(timeout):
            log.warning("%s did not stop within %s s", loop.name, timeout)
        if pool is not None:
            try:
                pool.close(timeout=timeout, drain=False)
            except errdefs.Deadline as exc:
                # Only a write blocked in a caller's own file can be stuck; it ends when that file does.
                log.warning("stdio delivery still blocked in the caller's files: %s", exc)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._loop is not None else "idle")
        return f"<LoopOwner {self._name} {state} users={self._users}>"


_default = LoopOwner(closable=False)


def default_owner() -> LoopOwner:
    """The process-wide owner, for DirectIOs opened without a client; it stops when its last user leaves."""
    return _default


class OutputSink(Protocol):
    """Where an :class:`OutputPump` puts what it read (called on the loop thread; must not block)."""

    def push(self, data: bytes) -> bool:
        """Take a chunk; False asks the pump to stop reading until :meth:`OutputPump.resume`."""
        ...

    def end(self, cancelled: bool) -> None:
        """No more chunks: EOF (``cancelled`` False) or cancel."""
        ...


class _OutputFifoPump:
    """What both output pumps share: one output FIFO descriptor they own, watched on the loop for
    reading from :meth:`start` on, and closed exactly once when the pump ends.

    A subclass reads in ``_ready(mask)`` and tells its consumer the end in ``_finish(cancelled)``.
    """

    def __init__(self, loop: IOLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._ended = False

    def start(self) -> None:
        """(loop) Begin watching."""
        if self._ended:
            return
        self._loop.add_pump(self)
        self._loop.watch(self._fd, select.EPOLLIN, self._ready)

    def _ready(self, mask: int) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def _end(self, cancelled: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self._loop.close_pump(self, self._fd)
        self._finish(cancelled)

    def _finish(self, cancelled: bool) -> None:
        raise NotImplementedError


class OutputPump(_OutputFifoPump):
    """Reads one output FIFO (a descriptor it owns) on the loop and hands the chunks to its sink, in order.

    EOF is a read of ``b""`` after the loop reported the FIFO ready, i.e. after a writer
    connected and left; the descriptor is closed then, or on :meth:`cancel`.
    """

    def __init__(self, loop: IOLoop, fd: int, sink: OutputSink) -> None:
        super().__init__(loop, fd)
        self._sink = sink
        self._paused = False

    def _ready(self, mask: int) -> None:
        try:
            data = os.read(self._fd, CHUNK_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("reading FIFO fd %d failed, ending the stream: %s", self._fd, exc)
            self._end(False)
            return
        if not data:
            self._end(False)
            return
        if not self._sink.push(data) and not self._ended:
            self._paused = True
            self._loop.unwatch(self._fd)

    def resume(self) -> None:
        """(loop) Read again after the sink drained."""
        if self._paused and not self._ended:
            self._paused = False
            self._loop.watch(self._fd, select.EPOLLIN, self._ready)

    def cancel(self) -> None:
        """(loop) Stop now; what was read stays delivered."""
        self._end(True)

    def _finish(self, cancelled: bool) -> None:
        self._sink.end(cancelled)


class InputPump:
    """Writes a stdin FIFO (a :class:`~libcontainerd.cio.FifoWriter`'s descriptor) from a buffer on the loop.

    Never blocks: what the pipe does not take waits for ``EPOLLOUT``. It ends ``"closed"``
    once :meth:`close` was asked and the buffer is written (the caller then closes the
    writer, which sends ``CloseIO``, off the loop), ``"broken"`` when the process's side is
    gone, ``"aborted"`` on :meth:`abort`, ``"cancelled"`` on :meth:`cancel`, and
    ``"released"`` when somebody closed the writer under it. ``on_end(how)`` is called
    once, on the loop; ``on_room()`` whenever the buffer has been written out.
    """

    def __init__(self, loop: IOLoop, writer: FifoWriter, on_end: Callable[[str], None],
                 on_room: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._writer = writer
        self._fd = writer.fileno()
        self.on_end = on_end
        self.on_room = on_room
        self._chunks: collections.deque[memoryview] = collections.deque()
        self.queued = 0
        self._closing = False
        self._watching = False
        self._ended = False
        # A user closing the writer (close_stdin()) must find the loop off its descriptor first.
        writer._on_release = lambda: loop.call(self._released)

    @property
    def ended(self) -> bool:
        return self._ended

    def start(self) -> None:
        """(loop)"""
        if not self._ended:
            self._loop.add_pump(self)

    def write(self, data: bytes) -> None:
        """(loop) Queue ``data`` and write what the pipe takes now."""
        if self._ended or self._closing or not data:
            return
        self._chunks.append(memoryview(data).cast("B"))
        self.queued += len(data)
        self._flush()

    def close(self) -> None:
        """(loop) End once the buffer is written."""
        if self._ended:
            return
        self._closing = True
        self._flush()

    def abort(self) -> None:
        """(loop) Give up: drop what is buffered."""
        self._end("aborted")

    def cancel(self) -> None:
        self._end("cancelled")

    def _released(self) -> None:
        self._end("released")

    def _ready(self, mask: int) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._ended:
            return
        writer = self._writer
        while self._chunks:
            if writer._aborted.is_set() or writer._canceller.is_set():
                self._end("aborted")
                return
            chunk = self._chunks[0]
            with writer._io_lock:
                if writer.closed:
                    n = -1
                else:
                    try:
                        n = os.write(self._fd, chunk)
                    except BlockingIOError:
                        n = 0
                    except OSError:  # EPIPE: the process's side is gone
                        n = -2
            if n == -1:
                self._end("released")
                return
            if n == -2:
                self._end("broken")
                return
            if n == 0:
                if not self._watching:
                    self._watching = True
                    # EPOLLOUT: room again; EPOLLERR: no reader left (the next write fails with EPIPE).
                    self._loop.watch(self._fd, select.EPOLLOUT, self._ready)
                return
            self.queued -= n
            if n < len(chunk):
                self._chunks[0] = chunk[n:]
            else:
                self._chunks.popleft()
        if self._watching:
            self._watching = False
            self._loop.unwatch(self._fd)
        if self._closing:
            self._end("closed")
        elif self.on_room is not None:
            self.on_room()

    def _end(self, how: str) -> None:
        if self._ended:
            return
        self._ended = True
        self._chunks.clear()
        self.queued = 0
        if self._watching:
            self._watching = False
            self._loop.unwatch(self._fd)
        self._writer._on_release = None
        self._loop.remove_pump(self)
        self.on_end(how)


class CopyPump(_OutputFifoPump):
    """Copies one output FIFO (a descriptor it owns) to a caller's file: the loop waits, a pool worker copies.

    While the FIFO is idle the loop watches it; once it is readable the loop lets go of it and
    one pool job (under the pump's own key) reads and writes until the FIFO runs dry, then hands
    it back. So chunks reach the file in order, a stream costs a worker only while data flows,
    and a file whose ``write`` blocks holds that one FIFO unread (at most one chunk in flight:
    the high-water mark), which makes the process block in its own write as with any full pipe,
    while the loop serves everybody else. After a chunk of 4 KiB or more the worker lingers up to
    :data:`LINGER` s for more, so that a bulk stream is not handed back and forth per chunk.
    ``write(chunk)`` must not raise; ``on_done()`` is called once, after EOF or a cancel.
    """

    def __init__(self, loop: IOLoop, fd: int, pool: KeyedSerialExecutor, key: str,
                 write: Callable[[bytes], None], on_done: Callable[[], None],
                 job: Callable[[Callable[[], None]], None]) -> None:
        super().__init__(loop, fd)
        self._pool = pool
        self._key = key
        self._write = write
        self._on_done = on_done
        self._job = job
        self._served = False  # a pool job owns the descriptor (loop-side state)
        self._cancelled = False
        self._poll: select.poll | None = None

    def _ready(self, mask: int) -> None:
        self._loop.unwatch(self._fd)
        self._served = True
        try:
            self._pool.submit(self._key, self._job, self._serve)
        except errdefs.LibcontainerdError:  # the pool is closed: the client is closing
            self._served = False
            self._end(True)

    def _serve(self) -> None:
        """(pool) Copy until the FIFO runs dry, then hand it back to the loop."""
        eof = True  # unless the loop below says otherwise: a failing write ends the stream
        try:
            eof = self._copy()
        finally:
            if not self._loop.call_soon(self._returned, eof):
                self._returned(eof)  # the loop is gone: nobody else holds the descriptor

    def _copy(self) -> bool:
        """(pool) Read and write until the FIFO is dry, cancelled, or the slice is used up (False), or EOF (True)."""
        bulk = False
        for _ in range(_SLICE_READS):
            if self._cancelled:
                return False
            try:
                data = os.read(self._fd, CHUNK_SIZE)
            except BlockingIOError:
                if bulk and self._more_soon():
                    bulk = False
                    continue
                return False
            except OSError as exc:
                log.warning("reading FIFO fd %d failed, ending the stream: %s", self._fd, exc)
                return True
            if not data:
                return True
            bulk = len(data) >= _BULK
            self._write(data)
        return False  # a stream that never runs dry goes to the back of the line: more streams than workers share

    def _more_soon(self) -> bool:
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)
        return bool(self._poll.poll(LINGER * 1000))

    def _returned(self, eof: bool) -> None:
        """(loop, or anywhere once the loop is gone) The pool job let go of the descriptor."""
        self._served = False
        if eof or self._cancelled:
            self._end(self._cancelled and not eof)
        elif not self._ended:
            self._loop.watch(self._fd, select.EPOLLIN, self._ready)

    def cancel(self) -> None:
        """(loop) Stop; a chunk being written finishes first."""
        self._cancelled = True
        if not self._served:
            self._end(True)

    def _finish(self, cancelled: bool) -> None:
        self._on_done()

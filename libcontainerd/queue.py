"""The keyed serial executor: per-key FIFO callbacks on a small, bounded pool of threads.

This is the Python form of moby's ``libcontainerd/queue``: callbacks submitted under one key
(a container id) run one at a time in submission order, callbacks of different keys run in
parallel. The module owns its worker threads from start to join and nothing else: it knows
nothing of containerd, events or gRPC, and it must never call user code while holding its lock
(so a callback may submit, read the counters, or even close the executor it runs on).

How the work is shared: a key with queued callbacks is either *ready* (waiting in a round-robin
line) or *owned* by exactly one worker that is running one of its callbacks. A worker runs one
callback, then puts its key back at the end of the line if more are queued and takes the key at
the front, so a busy key cannot starve the others. Workers start lazily, up to ``max_workers``,
and exit after ``idle_timeout`` seconds without work; an idle worker sleeps on a lock of its own,
so waking one is a single release and no wake-up can be lost.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

from libcontainerd import errdefs

__all__ = ["ExecutorClosedError", "KeyedSerialExecutor"]

logger = logging.getLogger(__name__)

#: ``on_error(key, exception, context)``: called on the worker after the failure is logged.
ErrorHandler = Callable[[str, BaseException, object], None]

# One queued callback: (fn, args, context).
_Item = tuple[Callable[..., object], tuple[Any, ...], object]


class ExecutorClosedError(errdefs.LibcontainerdError, RuntimeError):
    """Raised by :meth:`KeyedSerialExecutor.submit` once the executor is closed.

    It is a :class:`RuntimeError` too, as ``concurrent.futures`` raises after ``shutdown()``.
    """


class _Sleeper:
    """An idle worker's wake-up slot: a lock it blocks on and a flag set under the executor lock."""

    __slots__ = ("lock", "woken")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.woken = False


class KeyedSerialExecutor:
    """Run callbacks one at a time per key, in submission order; different keys in parallel.

    Callbacks should not block for long: while one runs, later callbacks of its key wait, and
    it holds one of the ``max_workers`` threads. A callback that raises is logged (logger
    ``libcontainerd.queue``, with the key and the submitter's ``context``), ``on_error`` is
    called if given, and the next callback of that key still runs.

    Threads are named ``<name>-<n>`` and are daemon threads only as a safety net: their owner
    is whoever calls :meth:`close`, which joins them.

    Args:
        max_workers: most threads running callbacks at once (at least 1).
        name: prefix of the worker thread names.
        on_error: optional ``(key, exception, context)`` hook called after a failure is logged.
        idle_timeout: seconds a worker waits for work before it exits.

    >>> ex = KeyedSerialExecutor(max_workers=2)
    >>> seen = []
    >>> for i in range(3):
    ...     ex.submit("ctr-1", seen.append, i)
    >>> ex.close()
    >>> seen
    [0, 1, 2]
    """

    def __init__(
        self,
        max_workers: int = 4,
        name: str = "libcontainerd-events",
        on_error: ErrorHandler | None = None,
        *,
        idle_timeout: float = 5.0,
    ) -> None:
        if max_workers < 1:
            raise errdefs.InvalidParameter(f"max_workers must be at least 1, not {max_workers!r}")
        if idle_timeout <= 0:
            raise errdefs.InvalidParameter(f"idle_timeout must be positive, not {idle_timeout!r}")
        self._max_workers = max_workers
        self._name = name
        self._on_error = on_error
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        # A key is in _queues while it has queued callbacks or is owned by a worker, and in
        # _ready while it has queued callbacks and no owner.
        self._queues: dict[str, collections.deque[_Item]] = {}
        self._ready: collections.deque[str] = collections.deque()
        self._sleepers: list[_Sleeper] = []
        self._threads: dict[threading.Thread, None] = {}
        self._exited: list[threading.Thread] = []
        self._pending = 0
        self._started = 0
        self._closed = False

    @property
    def pending(self) -> int:
        """Callbacks queued and not started yet.

        >>> KeyedSerialExecutor().pending
        0
        """
        return self._pending

    @property
    def workers(self) -> int:
        """Worker threads alive now (busy or idle).

        >>> KeyedSerialExecutor().workers
        0
        """
        return len(self._threads)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called.

        >>> KeyedSerialExecutor().closed
        False
        """
        return self._closed

    def submit(self, key: str, fn: Callable[..., object], /, *args: Any, context: object = None) -> None:
        """Queue ``fn(*args)`` to run after every callback already queued under ``key``.

        Args:
            key: the serialisation key (e.g. a container id).
            fn: the callback; its return value is ignored.
            *args: positional arguments for ``fn``.
            context: anything that helps to read a failure log (a string or a dict); it is
                logged with the key if ``fn`` raises, and passed to ``on_error``.

        Raises:
            ExecutorClosedError: the executor is closed (also a ``RuntimeError``).

        >>> ex = KeyedSerialExecutor()
        >>> ex.submit("ctr-1", print, "hello", context={"topic": "/tasks/start"})
        >>> ex.close()
        hello
        """
        item: _Item = (fn, args, context)
        with self._lock:
            if self._closed:
                raise ExecutorClosedError(f"cannot submit work for {key!r}: the {self._name} executor is closed")
            self._pending += 1
            queue = self._queues.get(key)
            if queue is not None:
                # Queued behind the key's owner or already in the ready line: someone will run it.
                queue.append(item)
                return
            self._queues[key] = collections.deque((item,))
            self._ready.append(key)
            if self._sleepers:
                sleeper = self._sleepers.pop()
                sleeper.woken = True
                sleeper.lock.release()
            elif len(self._threads) < self._max_workers:
                try:
                    self._start_worker()
                except RuntimeError:
                    if self._threads:
                        # A busy worker takes the key when it is done: a smaller pool, not lost work.
                        logger.warning("%s: could not start another worker", self._name, exc_info=True)
                        return
                    # Nobody would ever run it: take the callback back and tell the caller.
                    self._ready.pop()
                    del self._queues[key]
                    self._pending -= 1
                    raise
            # Otherwise every worker is busy, and each looks at the ready line before it sleeps.

    def close(self, timeout: float | None = None, *, drain: bool = True) -> None:
        """Stop accepting work, finish (or drop) what is queued, and join the workers.

        Idempotent: a later call joins whatever an earlier one left running, and
        ``drain=False`` drops what is still queued even after an earlier ``close()``.
        Safe to call from inside a callback: the calling worker is not joined (it exits by
        itself once its callback returns and the queue is empty; a later ``close()`` from
        another thread joins it).

        Args:
            timeout: seconds to wait for the workers in all; ``None`` waits as long as it takes.
            drain: run the queued callbacks first (default); ``False`` drops them, and only
                the callbacks already running are waited for.

        Raises:
            libcontainerd.errdefs.Deadline: some workers were still running when ``timeout``
                passed (also a ``TimeoutError``); they keep going and exit when done.

        >>> ex = KeyedSerialExecutor()
        >>> ex.submit("a", lambda: None)
        >>> ex.close(timeout=5)
        >>> ex.workers
        0
        """
        with self._lock:
            self._closed = True
            if not drain:
                dropped = self._pending
                for queue in self._queues.values():
                    queue.clear()
                self._ready.clear()
                self._pending = 0
                if dropped:
                    logger.debug("%s: closed without draining, dropped %d callbacks", self._name, dropped)
            for sleeper in self._sleepers:
                sleeper.woken = True
                sleeper.lock.release()
            self._sleepers.clear()
            me = threading.current_thread()
            threads = [t for t in (*self._threads, *self._exited) if t is not me]
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        with self._lock:
            self._exited = [t for t in self._exited if t.is_alive()]
        if alive:
            raise errdefs.Deadline(f"{len(alive)} {self._name} workers still running after {timeout}s: {alive}")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<KeyedSerialExecutor name={self._name!r} workers={len(self._threads)}/{self._max_workers} "
                f"pending={self._pending} {state}>")

    def _start_worker(self) -> None:
        # Called with the lock held. Workers that left on idle timeout are long gone by now.
        self._exited = [t for t in self._exited if t.is_alive()]
        self._started += 1
        thread = threading.Thread(target=self._work, name=f"{self._name}-{self._started}", daemon=True)
        self._threads[thread] = None
        try:
            thread.start()
        except BaseException:
            del self._threads[thread]
            raise

    def _work(self) -> None:
        lock = self._lock
        ready = self._ready
        queues = self._queues
        me = threading.current_thread()
        key: str | None = None
        queue: collections.deque[_Item] | None = None
        while True:
            with lock:
                if key is not None and queue is not None:
                    # Done with one callback of `key`: release it, back of the line if it has more.
                    if queue:
                        ready.append(key)
                    else:
                        del queues[key]
                    key = queue = None
                while not ready:
                    if self._closed or not self._sleep():
                        del self._threads[me]
                        # Still alive for a moment: close() joins it from here.
                        self._exited.append(me)
                        return
                key = ready.popleft()
                queue = queues[key]
                fn, args, context = queue.popleft()
                self._pending -= 1
            try:
                fn(*args)
            except BaseException as exc:  # a callback must never kill its worker
                self._report(key, exc, context)
            # Drop references before idling so that finished callbacks' objects can be freed.
            del fn, args, context

    def _sleep(self) -> bool:
        """Wait idle for work; called and returns with the lock held. False: time to exit."""
        sleeper = _Sleeper()
        self._sleepers.append(sleeper)
        self._lock.release()
        try:
            sleeper.lock.acquire(timeout=self._idle_timeout)
        finally:
            self._lock.acquire()
        if sleeper.woken:
            return True
        # Timed out and nobody picked this sleeper, so it is still in the list.
        self._sleepers.remove(sleeper)
        return bool(self._ready)

    def _report(self, key: str, exc: BaseException, context: object) -> None:
        if context is None:
            logger.error("%s: callback for key %r failed", self._name, key, exc_info=exc)
        else:
            logger.error("%s: callback for key %r failed (%s)", self._name, key, context, exc_info=exc)
        if self._on_error is not None:
            try:
                self._on_error(key, exc, context)
            except Exception:
                logger.exception("%s: on_error hook failed for key %r", self._name, key)

"""Ctrl-C while the command line or the demo creates or removes something: held off, or held back.

This module owns :func:`no_interrupts` (ignore Ctrl-C while cleaning up, so that a second
one cannot leave things half removed) and :func:`deferred_interrupts` (raise a Ctrl-C
that arrives during a create or start only once the block is done, so that what exists
is known and cleaned up). Both touch only SIGINT and only on the main thread, and leave
an ignored SIGINT or an embedding program's own handler alone. They must not do any
cleaning themselves.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["deferred_interrupts", "no_interrupts"]


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """Hold off Ctrl-C while cleaning up, so that a second Ctrl-C cannot leave things half removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold a Ctrl-C back until the block is done, then raise it.

    Creating and starting are RPCs that containerd completes even when the caller stops
    waiting: interrupted half-way, the caller would not know what exists. Deferred, the
    interrupt arrives when the container or process is known, and the usual cleanup runs.

    Only Python's own Ctrl-C handling is deferred: a process started with SIGINT ignored (a
    background job, nohup) keeps ignoring it, and an embedding program's handler is left alone.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    pending: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if pending:
        raise KeyboardInterrupt

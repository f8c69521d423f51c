"""Signals while the command line or the demo creates, follows or removes something.

This module owns :func:`no_interrupts` (ignore Ctrl-C while cleaning up, so that a second
one cannot leave things half removed), :func:`deferred_interrupts` (raise a Ctrl-C
that arrives during a create or start only once the block is done, so that what exists
is known and cleaned up) and :func:`forwarded_signals` (SIGTERM, SIGHUP and SIGINT sent to
an attached process while it is followed). All act only on the main thread, and leave an
ignored signal or an embedding program's own SIGINT handler alone. They must not do any
cleaning themselves.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any, Callable

__all__ = ["deferred_interrupts", "forwarded_signals", "interruptible", "no_interrupts"]


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
def interruptible() -> Iterator[None]:
    """Inside :func:`no_interrupts`, let Ctrl-C through again for a block that only waits (and may be given up)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not \
            signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


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


# What a user sends an attached `run`/`exec` to reach its process, as docker's and ctr's signal proxy do.
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def forwarded_signals(send: Callable[[int], None], on_first_interrupt: Callable[[], None]) -> Iterator[None]:
    """While following an attached process: SIGTERM, SIGHUP and a first SIGINT are sent to it.

    The process decides what they mean (its trap runs, it exits with its own code, which becomes
    ours). A second SIGINT is Python's Ctrl-C again, so that a process that ignores SIGINT (a
    container's pid 1 without a handler does) cannot trap the user: the caller then kills and
    removes it. A signal this process ignores (a background job, nohup) stays ignored, and an
    embedding program's own SIGINT handler is left alone.

    Args:
        send: sends a signal to the process (errors are the caller's to swallow).
        on_first_interrupt: called after the first SIGINT was sent (to tell the user about the second).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupts = 0

    def handler(signum: int, frame: object) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                raise KeyboardInterrupt
        send(signum)
        if signum == signal.SIGINT:
            on_first_interrupt()

    old: dict[signal.Signals, Any] = {}
    for forwarded in _FORWARDED:
        current = signal.getsignal(forwarded)
        if current is signal.SIG_IGN or (forwarded == signal.SIGINT and current is not signal.default_int_handler):
            continue
        old[forwarded] = signal.signal(forwarded, handler)
    try:
        yield
    finally:
        for forwarded, previous in old.items():
            signal.signal(forwarded, previous)

"""The local terminal of ``run`` and ``exec``: stdio wiring, raw mode, size and SIGWINCH, the drain.

This module owns how an attached process meets the person at the terminal: which of our
streams it gets (:func:`stdio_callback`), its terminal size from its first moment
(:func:`with_console_size`), raw mode from before the start (:func:`raw_input`), every SIGWINCH
forwarded as a resize while it
runs, and waiting for its exit and then for its output to drain (:func:`follow`). It
restores the terminal and the SIGWINCH handler whatever happens. It must not create,
start or remove anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any, Protocol

import libcontainerd
from libcontainerd import errdefs

__all__ = ["AttachedProcess", "follow", "raw_input", "resized", "stdio_callback", "with_console_size"]

log = logging.getLogger(__name__)

# After the process exited, how long its output may take to drain (a background child may hold it open).
_DRAIN_TIMEOUT = 5.0


class AttachedProcess(Protocol):
    """What run and exec share of Task and Process."""

    @property
    def io(self) -> Any: ...

    def wait(self, timeout: float | None = None) -> libcontainerd.ExitStatus: ...

    def resize(self, width: int, height: int) -> None: ...


def stdio_callback(tty_mode: bool, interactive: bool) -> Any:
    """Our stdout (and stderr, without a terminal) for the process, and our stdin with ``-i``."""
    from libcontainerd import stdio

    return stdio.attach(
        stdin=sys.stdin.buffer if interactive else None,
        stdout=sys.stdout.buffer,
        stderr=None if tty_mode else sys.stderr.buffer,
    )


def with_console_size(process: dict[str, Any], tty_mode: bool) -> None:
    """Give a terminal process the local terminal's size from its first moment (OCI ``consoleSize``).

    Resizing after the start leaves a window in which the process sees a 0x0 terminal.
    """
    size = _terminal_size() if tty_mode else None
    if size is not None and size[0] > 0 and size[1] > 0:
        process["consoleSize"] = {"width": size[0], "height": size[1]}


def _terminal_size() -> tuple[int, int] | None:
    for stream in (sys.stdout, sys.stdin, sys.stderr):
        try:
            if stream.isatty():
                size = os.get_terminal_size(stream.fileno())
                return size.columns, size.lines
        except (OSError, ValueError):
            continue
    return None


@contextlib.contextmanager
def raw_input(tty_mode: bool, interactive: bool) -> Iterator[None]:
    """With ``-it`` on a terminal: the local terminal in raw mode, from before the process starts.

    A shell asks the terminal where the cursor is as it starts (``ESC [ 6 n``); an answer that
    arrives while the terminal is still in cooked mode is echoed (``/ # ^[[6;5R``) and held
    back until Enter. Restored whatever happens.
    """
    if not (tty_mode and interactive and sys.stdin.isatty()):
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # not tty's default TCSAFLUSH: that would drop what was typed ahead
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def resized(proc: AttachedProcess, tty_mode: bool) -> Iterator[None]:
    """With a container terminal: its size forwarded now and on every SIGWINCH."""
    if not tty_mode:
        yield
        return

    def resize(*_: object) -> None:
        size = _terminal_size()
        if size is not None:
            try:
                proc.resize(*size)
            except errdefs.LibcontainerdError as exc:  # the process may be gone already
                log.debug("resize failed: %s", exc)

    resize()
    old_winch = signal.signal(signal.SIGWINCH, resize)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, old_winch)


def follow(proc: AttachedProcess, tty_mode: bool) -> int:
    """Wait for an attached process, then for its output to drain; return its exit code."""
    with resized(proc, tty_mode):
        status = proc.wait()
        io = proc.io
        if io is not None:
            try:
                io.wait(timeout=_DRAIN_TIMEOUT)
            except TimeoutError:
                log.debug("output still open %s s after the exit; dropping the rest", _DRAIN_TIMEOUT)
    return status.code

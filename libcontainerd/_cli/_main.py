"""One invocation: parse, send the SDK's log records to stderr, run the command, turn its end into an exit code.

This module owns :func:`main`: the log handler of the invocation (filtered by logger
name: the ``libcontainerd`` logger and its children, without the event stream's unless
the command shows events, and removed again, since ``main`` may be embedded) and the
mapping of every way a command can end to one line on stderr and an exit code, with a
traceback only under ``--debug``. It must not know any command by name.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Callable

from libcontainerd import errdefs

from ._context import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, PROG, Context, UsageError
from ._format import error_line
from ._parser import build_parser
from ._registry import Command

__all__ = ["main"]


_EVENT_STREAM_LOGGER = "libcontainerd.remote._events"
# runc's words when the process to run cannot be: `exec: "<path>": <why>` (create and exec alike).
_CANNOT_EXEC = re.compile(r'exec: "[^"]*": (?:stat [^:]*: )?(?P<why>executable file not found|no such file or '
                          r'directory|permission denied|is a directory|exec format error)')
# As docker (and a shell): 127 when the command is not there, 126 when it is but cannot be run.
EXIT_NOT_FOUND, EXIT_CANNOT_RUN = 127, 126


def _exit_code(exc: errdefs.LibcontainerdError) -> int:
    """The exit code of an error: 127/126 when the container's command could not be found/run, else 1."""
    found = _CANNOT_EXEC.search(str(exc))
    if found is None:
        return EXIT_ERROR
    return EXIT_NOT_FOUND if found["why"] in ("executable file not found", "no such file or directory") else \
        EXIT_CANNOT_RUN


def _not_event_stream(record: logging.LogRecord) -> bool:
    # The event stream's logger is the one named "...events" (its module's, or "libcontainerd.events").
    return record.name.rsplit(".", 1)[-1].lstrip("_") != "events"


def _setup_logging(debug: bool, *, quiet_event_stream: bool) -> Callable[[], None]:
    """Send the SDK's log records to stderr for this command; returns what undoes it (main() may be embedded)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s" if debug else f"{PROG}: %(levelname)s: %(message)s"))
    if quiet_event_stream and not debug:
        # Every client reads the event stream; only `events` cares that it broke (the call's own error says why).
        handler.addFilter(_not_event_stream)
    root = logging.getLogger("libcontainerd")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    # `events` also says when containerd is back (and what it learned then), not only when it was lost.
    stream = logging.getLogger(_EVENT_STREAM_LOGGER)
    old_stream_level = stream.level
    if not quiet_event_stream and not debug:
        stream.setLevel(logging.INFO)

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(old_level)
        stream.setLevel(old_stream_level)

    return undo


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    >>> main(["version", "--address", "/nonexistent.sock"])  # doctest: +SKIP
    1
    """
    try:
        parser = build_parser()
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        command: Command | None = getattr(args, "_command", None)
        if command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        ctx = Context(args)
        undo_logging = _setup_logging(ctx.debug, quiet_event_stream=not command.reports_event_stream)
        try:
            return _dispatch(command, args, ctx)
        finally:
            undo_logging()
    except KeyboardInterrupt:  # before or after the command ran: nothing to clean up, nothing to say
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED


def _dispatch(command: Command, args: argparse.Namespace, ctx: Context) -> int:
    try:
        return command.handler(args, ctx)
    except KeyboardInterrupt:
        if ctx.debug:
            traceback.print_exc()
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        error_line(str(exc))
        return EXIT_USAGE
    except errdefs.LibcontainerdError as exc:
        if ctx.debug:
            traceback.print_exc()
        message = str(exc)
        if isinstance(exc, errdefs.Unavailable):
            message += f" — is containerd running at {ctx.address}? Start one with `{PROG} daemon`, or pass --address"
        error_line(message)
        return _exit_code(exc)
    except BrokenPipeError:
        # The reader of our stdout left (e.g. `| head`): not an error; keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # anything else is a bug or an OS error: still one line, unless debugging
        if ctx.debug:
            traceback.print_exc()
        error_line(f"{type(exc).__name__}: {exc}" + ("" if ctx.debug else " (run with --debug for the traceback)"))
        return EXIT_ERROR

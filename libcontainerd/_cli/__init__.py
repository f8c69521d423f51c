"""The command line: argparse subcommands over the public SDK (``libcontainerd run``, ``ps``, ``events`` ...).

This package is the one place of libcontainerd that writes to stdout/stderr, and it
uses the public API only (``new_client``, ``Container``, ``Task``, ``oci``, ``stdio``,
``supervisor``, ``testing``), never the client's private parts or the generated gRPC
modules. Every error becomes one line on stderr and an exit code, with a traceback only
under ``--debug``. One module per concern:

* :mod:`._main` -- :func:`main`: parse, log to stderr, run, map errors to exit codes.
* :mod:`._parser` -- the parser and the global options (``--address``, ``--namespace``,
  ``--state-dir``, ``--debug``, also from ``LIBCONTAINERD_*``, before or after the subcommand).
* :mod:`._registry` -- :class:`Command` and the ``@command`` decorator: a command is declared once.
* :mod:`._commands` -- the subcommands themselves, in the order ``--help`` lists them.
* :mod:`._attached` -- ``run``/``exec`` in the foreground: spec, start, follow, the one removal path.
* :mod:`._terminal` -- raw mode, SIGWINCH and the terminal size, stdio wiring, the drain.
* :mod:`._signals` -- Ctrl-C held off while removing, held back while creating.
* :mod:`._values` -- ``--memory`` sizes and ``--user`` names (the rootfs's passwd and group).
* :mod:`._format` -- human units, tables, timestamps, event details, stdout/stderr lines.
* :mod:`._context` -- defaults, environment variables, exit codes, the resolved options.
* :mod:`._demo` -- ``libcontainerd demo``, which shares :mod:`._format` and :mod:`._signals`.
"""

from __future__ import annotations

from ._main import main

__all__ = ["main"]

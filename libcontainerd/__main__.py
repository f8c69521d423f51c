"""``python -m libcontainerd`` and the ``libcontainerd`` console script.

This module only hands the command line to :func:`libcontainerd._cli.main`, which owns
the parser and the subcommands; it must not hold any logic of its own, so that
importing it (the console script does) stays cheap.
"""

from __future__ import annotations

import sys

from libcontainerd._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

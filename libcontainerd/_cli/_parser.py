"""The argparse parser: global options before and after the subcommand, one subparser per registered command.

This module owns the parser's shape: one-line usage errors with exit code 2, the global
options (accepted before and after the subcommand, the later one winning, absent ones
left to the environment and the defaults), and a subparser for each command of the
registry with its help, example and arguments. It must not declare commands itself.
"""

from __future__ import annotations

import argparse
import os
from typing import NoReturn

import libcontainerd

from . import _commands, _images  # noqa: F401  (declare the commands into the registry)
from ._context import (
    DEFAULT_ADDRESS,
    DEFAULT_NAMESPACE,
    DEFAULT_STATE_DIR,
    ENV_ADDRESS,
    ENV_DEBUG,
    ENV_NAMESPACE,
    ENV_STATE_DIR,
    EXIT_USAGE,
    PROG,
)
from ._registry import COMMANDS

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line in the style of every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _address(value: str) -> str:
    """``--address``: not empty; a socket path relative to the working directory is made absolute.

    >>> _address("host:1234"), _address("unix:///a.sock"), _address("/a.sock") == "/a.sock"
    ('host:1234', 'unix:///a.sock', True)
    """
    if not value:
        raise argparse.ArgumentTypeError("must not be empty: give containerd's socket path or host:port")
    if not value.startswith("unix:") and ("/" in value or ":" not in value):  # a path, not host:port
        return os.path.abspath(value)
    return value


def _global_options(parser: argparse.ArgumentParser, where: str) -> None:
    # SUPPRESS: an option given neither before nor after the subcommand leaves no attribute, so
    # the env var and then the default apply, and one given after the subcommand wins.
    group = parser.add_argument_group(f"global options (also accepted {where} the subcommand)")
    group.add_argument("--address", metavar="SOCKET", default=argparse.SUPPRESS, type=_address,
                       help=f"containerd's socket or host:port (${ENV_ADDRESS}; default {DEFAULT_ADDRESS})")
    group.add_argument("--namespace", metavar="NS", default=argparse.SUPPRESS,
                       help=f"containerd namespace (${ENV_NAMESPACE}; default {DEFAULT_NAMESPACE})")
    group.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                       help=f"where bundles and FIFOs live (${ENV_STATE_DIR}; default {DEFAULT_STATE_DIR})")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"debug logging and tracebacks on errors (${ENV_DEBUG}=1)")


def build_parser() -> argparse.ArgumentParser:
    """The full parser; each subparser's ``_command`` default is the registered :class:`Command` it runs.

    >>> build_parser().parse_args(["run", "--busybox", "box", "sh", "-c", "echo hi"]).command
    ['sh', '-c', 'echo hi']
    """
    parser = _Parser(
        prog=PROG, formatter_class=_Formatter, allow_abbrev=False,
        description="A command line for containerd over the libcontainerd Python SDK.",
        epilog=f"examples:\n  {PROG} demo\n  {PROG} daemon --root /tmp/lcd &\n"
               f"  {PROG} --address /tmp/lcd/state/containerd.sock run --rm --busybox hi echo hello\n\n"
               f"`{PROG} COMMAND --help` shows the options and an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {libcontainerd.__version__}")
    _global_options(parser, "after")
    common = _Parser(add_help=False)
    _global_options(common, "before")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", title="commands")
    for cmd in COMMANDS:
        p = sub.add_parser(
            cmd.name, aliases=list(cmd.aliases), help=cmd.help, description=cmd.help[0].upper() + cmd.help[1:] + ".",
            epilog=cmd.example, parents=[common], formatter_class=_Formatter, allow_abbrev=False,
        )
        cmd.arguments(p)
        p.set_defaults(_command=cmd)
    return parser

"""The command registry: each subcommand is declared once, with its help, example, options and handler.

This module owns :class:`Command` and the :func:`command` decorator that adds one to
:data:`COMMANDS` in the order of declaration (the order ``--help`` lists them in). A
command's module declares everything about it at one place: the decorator takes the
name, aliases, one-line help, the example shown by ``COMMAND --help`` and a function
that adds the command's own arguments. It must not build the parser (that is
:mod:`._parser`) nor import the command modules.
"""

from __future__ import annotations

import argparse
from typing import Callable

import attrs

from ._context import Context

__all__ = ["COMMANDS", "Command", "Handler", "command"]

Handler = Callable[[argparse.Namespace, Context], int]
Arguments = Callable[[argparse.ArgumentParser], None]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@attrs.frozen
class Command:
    """One subcommand: how it is called, what its help says, which arguments it takes, what runs it."""

    name: str
    help: str
    example: str
    handler: Handler
    arguments: Arguments = _no_arguments
    aliases: tuple[str, ...] = ()
    # Every client reads the event stream; only a command that shows events cares that it broke.
    reports_event_stream: bool = False


COMMANDS: list[Command] = []


def command(name: str, help: str, example: str, *, arguments: Arguments = _no_arguments,
            aliases: tuple[str, ...] = (), reports_event_stream: bool = False) -> Callable[[Handler], Handler]:
    """Declare the decorated function as the handler of subcommand ``name`` (see :class:`Command`)."""

    def register(handler: Handler) -> Handler:
        COMMANDS.append(Command(name, help, example, handler, arguments, aliases, reports_event_stream))
        return handler

    return register

"""What the command line and the demo write: human units, tables, timestamps, event details, lines.

This module owns the look of the output: :func:`human_bytes` and :func:`human_duration`,
aligned tables, ISO timestamps, the details of an event, and the three ways a line
leaves the program (:func:`out` on stdout, :func:`note` and :func:`error_line` on
stderr). It must not call containerd, read the command line, or decide exit codes.
"""

from __future__ import annotations

import base64
import datetime
import sys
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from libcontainerd.types import EventInfo, EventType

from ._context import PROG

__all__ = ["describe_event", "error_line", "human_bytes", "human_duration", "iso", "json_message", "note", "out",
           "table"]


def _json_value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return json_message(value)
    if field.enum_type is not None:
        named = field.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def json_message(message: Message) -> dict[str, Any]:
    """A protobuf message as a JSON-ready dict of its set fields (camelCase names, as protobuf's JSON has).

    Unlike protobuf's own JSON mapping, 64-bit integers stay numbers (it writes them as strings,
    for JavaScript's sake), so that ``stats --json | jq '.metrics.memory.usage.usage > 0'`` works.

    >>> from google.protobuf import duration_pb2
    >>> json_message(duration_pb2.Duration(seconds=2**40, nanos=5))
    {'seconds': 1099511627776, 'nanos': 5}
    """
    doc: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            doc[field.json_name] = {str(k): _json_value(value_field, v) for k, v in value.items()}
        elif isinstance(value, (Message, str, bytes, int, float)):  # bool is an int
            doc[field.json_name] = _json_value(field, value)
        else:  # a repeated field's container
            doc[field.json_name] = [_json_value(field, v) for v in value]
    return doc


def human_bytes(n: int) -> str:
    """A byte count in binary units with one decimal.

    >>> human_bytes(12_900_000)
    '12.3 MiB'
    >>> human_bytes(512)
    '512 B'
    """
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def human_duration(ns: int) -> str:
    """A CPU time in nanoseconds, in the largest unit that keeps it readable.

    >>> human_duration(1_234_000_000), human_duration(45_600_000), human_duration(3_700_000_000_000)
    ('1.23 s', '45.6 ms', '1h01m40s')
    """
    if ns < 1_000:
        return f"{ns} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    seconds = ns / 1e9
    if seconds < 60:
        return f"{seconds:.2f} s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Aligned columns, three spaces apart; the columns in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    last = len(headers) - 1
    lines = []
    for row in [list(headers), *rows]:
        cells = []
        for i, cell in enumerate(row):
            if i in right:
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell if i == last else cell.ljust(widths[i]))
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def iso(when: datetime.datetime | None) -> str | None:
    """A time in UTC as ISO 8601 with milliseconds and a ``Z``; None stays None."""
    if when is None:
        return None
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe_event(container_id: str, event_type: EventType, info: EventInfo) -> str:
    """The details of an event for a human: exec id, pid, exit code (with a leading separator)."""
    parts = []
    if info.process_id and info.process_id != container_id:
        parts.append(f"exec {info.process_id}")
    if info.pid:
        parts.append(f"pid {info.pid}")
    if event_type is EventType.EXIT:
        parts.append(f"exit code {info.exit_code}")
    if info.error:
        parts.append(f"({info.error})")
    return ("  " + ", ".join(parts)) if parts else ""


def out(text: str = "") -> None:
    """A line of the command's result on stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def note(text: str) -> None:
    """A message for the person at the terminal (stderr, so that stdout stays parseable)."""
    sys.stderr.write(f"{PROG}: {text}\n")
    sys.stderr.flush()


def error_line(message: str) -> None:
    """An error as one line on stderr, whatever the message looked like.

    Of a multi-line message (e.g. a daemon's log tail) the first line says what failed and
    the last one, usually, why.
    """
    lines = [" ".join(line.split()) for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    if len(lines) > 1:
        text += f" … {lines[-1]}"
    sys.stderr.write(f"{PROG}: error: {text}\n")
    sys.stderr.flush()

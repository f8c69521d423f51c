"""Packing and unpacking ``google.protobuf.Any`` the way containerd's ``typeurl`` does.

Two kinds of payload travel in an ``Any``: OCI runtime-spec documents, as JSON under a
``types.containerd.io/opencontainers/runtime-spec/1/<Type>`` URL, and messages generated
from containerd's .proto files, under their full proto name (``containerd.events.TaskExit``,
``containerd.runc.v1.Options``, ``io.containerd.cgroups.v1.Metrics`` ...). This module knows
which generated class belongs to which URL; it does no I/O.
"""

from __future__ import annotations

import json
from typing import Any as _AnyT

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from . import errdefs

__all__ = ["PROCESS_URL", "RESOURCES_URL", "SPEC_URL", "pack_json", "pack_message", "register", "unpack", "unpack_json"]

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"

_registry: dict[str, type[Message]] = {}


def register(*classes: type[Message]) -> None:
    """Make generated message classes decodable by :func:`unpack`."""
    for cls in classes:
        _registry[cls.DESCRIPTOR.full_name] = cls


def _ensure_registry() -> None:
    if _registry:
        return
    from ._api.cgroups.stats.v1 import metrics_pb2 as v1
    from ._api.cgroups.v2.stats import metrics_pb2 as v2
    from ._api.containerd.api.events import task_pb2 as ev
    from ._api.containerd.runtime.v2.runc.options import oci_pb2 as runc

    register(
        ev.TaskCreate, ev.TaskStart, ev.TaskDelete, ev.TaskIO, ev.TaskExit, ev.TaskOOM, ev.TaskExecAdded,
        ev.TaskExecStarted, ev.TaskPaused, ev.TaskResumed, ev.TaskCheckpointed,
        runc.Options, runc.CheckpointOptions, runc.ProcessDetails,
        v1.Metrics, v2.Metrics,
    )


def pack_json(url: str, document: object, what: str = "document") -> any_pb2.Any:
    """Encode a JSON-able document (an OCI spec dict) as an ``Any``.

    Raises:
        errdefs.InvalidParameter: the document is not JSON (sets, NaN, bytes ...).
    """
    try:
        value = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise errdefs.InvalidParameter(f"{what} is not valid JSON: {exc}") from exc
    return any_pb2.Any(type_url=url, value=value)


def pack_message(message: Message) -> any_pb2.Any:
    """Encode a generated message under its full proto name, as containerd's typeurl does."""
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


def _name(type_url: str) -> str:
    return type_url.rsplit("/", 1)[-1] if type_url.startswith(("type.googleapis.com/",)) else type_url


def unpack(value: any_pb2.Any) -> Message:
    """Decode an ``Any`` holding one of containerd's generated messages.

    Raises:
        errdefs.NotImplemented: the type URL is not one this SDK knows.
        errdefs.DataLoss: the payload does not decode as that type.
    """
    _ensure_registry()
    cls = _registry.get(_name(value.type_url))
    if cls is None:
        raise errdefs.NotImplemented(f"unknown type URL {value.type_url!r}")
    msg = cls()
    try:
        msg.ParseFromString(value.value)
    except DecodeError as exc:
        raise errdefs.DataLoss(f"cannot decode {value.type_url}: {exc}") from exc
    return msg


def unpack_json(value: any_pb2.Any) -> _AnyT:
    """Decode an ``Any`` holding a JSON document (a runtime spec)."""
    try:
        return json.loads(value.value)
    except ValueError as exc:
        raise errdefs.DataLoss(f"cannot decode {value.type_url} as JSON: {exc}") from exc

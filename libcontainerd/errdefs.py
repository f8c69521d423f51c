"""Typed errors, and the one place where gRPC errors become them.

Every error this SDK raises on purpose is a :class:`LibcontainerdError`; catch that
to catch them all. The subclasses are named after moby's ``errdefs`` package, and
where Python has a builtin exception that means the same thing, the class is *also*
that builtin, so code that knows nothing of this SDK still catches it sensibly::

    LibcontainerdError(Exception)
    ├── NotFound            (also LookupError)
    ├── InvalidParameter    (also ValueError)
    ├── Conflict
    ├── Unauthorized        (also PermissionError)
    ├── Forbidden           (also PermissionError)
    ├── Unavailable         (also ConnectionError)
    ├── System
    ├── NotModified
    ├── NotImplemented      (also NotImplementedError)
    ├── Unknown
    ├── Cancelled
    ├── Deadline            (also TimeoutError)
    └── DataLoss

``Conflict``, ``System``, ``NotModified``, ``Unknown``, ``Cancelled`` and ``DataLoss``
have no builtin twin that would not mislead (``FileExistsError`` and friends are
``OSError`` and promise an ``errno``), so they are plain.

A gRPC error is mapped by its status code (:data:`GRPC_CODE_MAP`) and, as in moby's
``wrapError``, any error whose message says "container does not exist", "not found"
or "no such container" becomes :class:`NotFound`. The gRPC error stays as
``__cause__``; ``str()`` is one sentence naming the object, with containerd's (or the
runtime's) own message, never a gRPC dump.

This module must not import anything of the rest of the package. It imports ``grpc`` only
when a gRPC error is mapped, so that ``import libcontainerd`` (which loads this module)
does not pay for it.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

__all__ = [
    "GRPC_CODE_MAP",
    "Cancelled",
    "Conflict",
    "DataLoss",
    "Deadline",
    "Forbidden",
    "InvalidParameter",
    "LibcontainerdError",
    "NotFound",
    "NotImplemented",
    "NotModified",
    "System",
    "Unauthorized",
    "Unavailable",
    "Unknown",
    "from_grpc",
    "grpc_errors",
]


class LibcontainerdError(Exception):
    """Base of every error raised by libcontainerd.

    Attributes:
        explanation: the daemon's or runtime's own message, when there is one.
        code: the gRPC status code the error came from, or ``None``.
    """

    explanation: str | None
    code: grpc.StatusCode | None

    def __init__(self, message: str, *, explanation: str | None = None, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.explanation = explanation
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class NotFound(LibcontainerdError, LookupError):
    """The object (container, task, process, content) does not exist."""


class InvalidParameter(LibcontainerdError, ValueError):
    """The caller passed something invalid; nothing was changed."""


class Conflict(LibcontainerdError):
    """The object exists already, or is in a state that forbids the operation."""


class Unauthorized(LibcontainerdError, PermissionError):
    """The caller is not authenticated."""


class Forbidden(LibcontainerdError, PermissionError):
    """The caller may not do this."""


class Unavailable(LibcontainerdError, ConnectionError):
    """containerd cannot be reached (not running, restarting, socket gone)."""


class System(LibcontainerdError):
    """containerd or the runtime failed internally."""


class NotModified(LibcontainerdError):
    """Nothing was changed (e.g. pausing a paused task)."""


class NotImplemented(LibcontainerdError, builtins.NotImplementedError):
    """containerd, the shim or this platform does not implement the operation."""


class Unknown(LibcontainerdError):
    """An error that fits no other class."""


class Cancelled(LibcontainerdError):
    """The call was cancelled (e.g. the client was closed under it)."""


class Deadline(LibcontainerdError, TimeoutError):
    """The call's deadline passed before containerd answered."""


class DataLoss(LibcontainerdError):
    """Unrecoverable data loss or corruption."""


class _CodeMap(Mapping["grpc.StatusCode", "type[LibcontainerdError]"]):
    """A read-only dict built on first use, because building it needs ``grpc``."""

    _map: dict[grpc.StatusCode, type[LibcontainerdError]] | None = None

    def _get(self) -> dict[grpc.StatusCode, type[LibcontainerdError]]:
        if self._map is None:
            self._map = _build_code_map()
        return self._map

    def __getitem__(self, code: grpc.StatusCode) -> type[LibcontainerdError]:
        return self._get()[code]

    def __iter__(self) -> Iterator[grpc.StatusCode]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())


#: Every gRPC status code except OK, and the class it maps to.
GRPC_CODE_MAP: Mapping[grpc.StatusCode, type[LibcontainerdError]] = _CodeMap()


def _build_code_map() -> dict[grpc.StatusCode, type[LibcontainerdError]]:
    """The contents of :data:`GRPC_CODE_MAP`."""
    import grpc

    return {
        grpc.StatusCode.CANCELLED: Cancelled,
        grpc.StatusCode.UNKNOWN: Unknown,
        grpc.StatusCode.INVALID_ARGUMENT: InvalidParameter,
        grpc.StatusCode.DEADLINE_EXCEEDED: Deadline,
        grpc.StatusCode.NOT_FOUND: NotFound,
        grpc.StatusCode.ALREADY_EXISTS: Conflict,
        grpc.StatusCode.PERMISSION_DENIED: Forbidden,
        grpc.StatusCode.RESOURCE_EXHAUSTED: System,
        # containerd answers FailedPrecondition for "task must be stopped" and the like:
        # the object is in the wrong state, which is moby's Conflict.
        grpc.StatusCode.FAILED_PRECONDITION: Conflict,
        grpc.StatusCode.ABORTED: Conflict,
        grpc.StatusCode.OUT_OF_RANGE: InvalidParameter,
        grpc.StatusCode.UNIMPLEMENTED: NotImplemented,
        grpc.StatusCode.INTERNAL: System,
        grpc.StatusCode.UNAVAILABLE: Unavailable,
        grpc.StatusCode.DATA_LOSS: DataLoss,
        grpc.StatusCode.UNAUTHENTICATED: Unauthorized,
    }


_NOT_FOUND_MESSAGES = ("container does not exist", "not found", "no such container")
# containerd passes on a context's "deadline exceeded" under whatever code the failing layer chose
# (UNKNOWN from a shim call, INTERNAL, ...): it is a deadline whatever the code says.
_DEADLINE_MESSAGE = "deadline exceeded"
# The words of a `what` ("exec e1 of container web") that are followed by an object's id.
_KINDS = frozenset({"container", "task", "exec", "process"})


def _is_id_char(char: str) -> bool:
    """A character that can continue an id: a word character (``\\w``), ``.`` or ``-``."""
    return char.isalnum() or char in "_.-"


def _names_id(details: str, ident: str) -> bool:
    """Whether ``ident`` occurs in ``details`` as a whole id, not inside a longer one.

    A plain scan rather than a regex: the pattern would differ per id, and compiling one on every
    mapped error (a ``NotFound`` that ``Container.delete`` expects, each time) cost more than the call.
    """
    start = details.find(ident)
    while start >= 0:
        end = start + len(ident)
        if not (start and _is_id_char(details[start - 1])) and not (end < len(details) and _is_id_char(details[end])):
            return True
        start = details.find(ident, start + 1)
    return False


def _names_all_ids(what: str, details: str) -> bool:
    """Whether ``details`` already names every object of ``what`` (then a prefix would say it twice)."""
    words = what.split()
    ids = [word for kind, word in zip(words, words[1:]) if kind in _KINDS]
    return bool(ids) and all(_names_id(details, i) for i in ids)


def _details(err: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else None
    return code, (details or (code.name.lower().replace("_", " ") if code else str(err)))


def from_grpc(err: grpc.RpcError, what: str = "") -> LibcontainerdError:
    """Map a gRPC error to the most specific :class:`LibcontainerdError`.

    Args:
        err: the error a stub raised.
        what: the object the call was about ("container web-1"), prefixed to the message unless
            containerd's message already names it (``container "web-1" in namespace "n": not found``).

    Returns:
        The typed error (not raised); raise it ``from err`` to keep the cause.

    >>> import grpc
    >>> class E(grpc.RpcError):
    ...     def code(self): return grpc.StatusCode.NOT_FOUND
    ...     def details(self): return "container \\"x\\" in namespace \\"n\\": not found"
    >>> type(from_grpc(E(), "container x")).__name__
    'NotFound'
    """
    import grpc

    code, details = _details(err)
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
        details = "containerd is not reachable (" + details + ")"
    cls = GRPC_CODE_MAP.get(code, Unknown) if code is not None else Unknown
    lowered = details.lower()
    if _DEADLINE_MESSAGE in lowered:
        cls = Deadline
    elif cls is not Deadline and any(m in lowered for m in _NOT_FOUND_MESSAGES):
        cls = NotFound
    message = f"{what}: {details}" if what and not _names_all_ids(what, details) else details
    return cls(message, explanation=details, code=code)


@contextlib.contextmanager
def grpc_errors(what: str = "") -> Iterator[None]:
    """Context manager that turns any ``grpc.RpcError`` raised inside into a typed error.

    >>> with grpc_errors("container web-1"):
    ...     pass
    """
    import grpc

    try:
        yield
    except grpc.RpcError as err:
        raise from_grpc(err, what) from err

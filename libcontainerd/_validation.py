"""The input rules: what containerd, runc and the kernel would refuse, checked here first.

Every check raises :class:`~libcontainerd.errdefs.InvalidParameter` with a message naming the
bad value, and returns the value (converted where the rule says so) when it passes. Checking
before anything touches the filesystem or the wire means a bad input costs no RPC and leaves
nothing behind, and an id such as ``../x`` can never name a path outside the state dir.

This module owns the rules only: it must not talk to containerd, touch the filesystem or
build specs. :mod:`libcontainerd.oci` checks its builders' arguments with it, the remote
handles check ids, specs, signals, timeouts and terminal sizes with it.
"""

from __future__ import annotations

import re
import signal as _signal
from collections.abc import Mapping, Sequence
from typing import Any

from .errdefs import InvalidParameter

#: containerd's ``pkg/identifiers``: letters and digits joined by single ``.``, ``_`` or ``-``.
MAX_ID_LENGTH = 76
_ID_PATTERN = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*\Z")
#: uid, gid and user namespace mapping fields are uint32 in the runtime spec (``uid_t``/``gid_t``).
UINT32_MAX = 2**32 - 1
#: terminal width and height are uint16 (``struct winsize``).
UINT16_MAX = 2**16 - 1


def identifier(value: object, kind: str = "container id") -> str:
    """Return ``value`` if containerd would accept it as an id (containerd's ``identifiers.Validate``).

    Raises:
        InvalidParameter: it is not a string, empty, too long or has other characters.

    >>> identifier("web-1.a_b")
    'web-1.a_b'
    """
    if not isinstance(value, str):
        raise InvalidParameter(f"{kind} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidParameter(f"{kind} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidParameter(f"{kind} {value[:20]!r}... is longer than {MAX_ID_LENGTH} characters")
    if not _ID_PATTERN.match(value):
        raise InvalidParameter(
            f"{kind} {value!r} is invalid: use letters and digits joined by single '.', '_' or '-'"
        )
    return value


def is_uint32(value: object) -> bool:
    """True for an ``int`` (not a ``bool``) from 0 to :data:`UINT32_MAX`.

    >>> is_uint32(0), is_uint32(2**32), is_uint32(True)
    (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT32_MAX


def uint32(value: object, what: str) -> int:
    """Return ``value`` if it is a uid, gid or mapping field (see :func:`is_uint32`)."""
    if not is_uint32(value):
        raise InvalidParameter(f"{what} must be an integer from 0 to {UINT32_MAX}, not {value!r}")
    assert isinstance(value, int)
    return value


def text(value: object, what: str) -> str:
    """A string without NUL bytes (the kernel ends C strings there)."""
    if not isinstance(value, str):
        raise InvalidParameter(f"{what} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidParameter(f"{what} must not contain a NUL byte: {value!r}")
    return value


#: The longest hostname the kernel takes (``HOST_NAME_MAX``): runc's sethostname fails with EINVAL beyond it.
HOST_NAME_MAX = 64


def hostname(value: object, what: str = "hostname") -> str:
    """A hostname the kernel accepts: a string of at most 64 bytes, without NUL."""
    name = text(value, what)
    if len(name.encode("utf-8", "surrogateescape")) > HOST_NAME_MAX:
        raise InvalidParameter(f"{what} {name!r} is longer than the kernel's {HOST_NAME_MAX} bytes")
    return name


def args(value: object) -> list[str]:
    """A command line: a non-empty sequence of strings (not one string)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidParameter(f"args must be a non-empty list of strings, not {value!r}")
    if not value:
        raise InvalidParameter("args must be a non-empty list of strings: the command to run is missing")
    return [text(arg, f"args[{i}]") for i, arg in enumerate(value)]


def user(value: object) -> tuple[int, int]:
    """A ``(uid, gid)`` pair."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise InvalidParameter(f"user must be a (uid, gid) pair of non-negative integers, not {value!r}")
    return uint32(value[0], "user uid"), uint32(value[1], "user gid")


def cwd(value: object) -> str:
    """An absolute working directory (runc refuses a relative or empty one)."""
    path = text(value, "cwd")
    if not path.startswith("/"):
        raise InvalidParameter(f"cwd must be an absolute path, not {path!r}")
    return path


def process_spec(spec: object, what: str = "process spec") -> Mapping[str, Any]:
    """Reject an OCI process spec that runc would reject, before any RPC."""
    if not isinstance(spec, Mapping):
        raise InvalidParameter(f"{what} must be a dict, not {type(spec).__name__}")
    argv = spec.get("args")
    if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidParameter(f"{what} needs 'args', a non-empty list of strings")
    if any("\x00" in a for a in argv):
        raise InvalidParameter(f"{what}: 'args' must not contain NUL characters")
    if "terminal" in spec and not isinstance(spec["terminal"], bool):
        raise InvalidParameter(f"{what}: 'terminal' must be a bool")
    workdir = spec.get("cwd")  # runc refuses a missing cwd ("Cwd property must not be empty"), so no default here
    if not isinstance(workdir, str) or not workdir.startswith("/"):
        raise InvalidParameter(f"{what}: 'cwd' must be an absolute path")
    owner = spec.get("user", {})
    if not isinstance(owner, Mapping) or not all(is_uint32(owner.get(k, 0)) for k in ("uid", "gid")):
        raise InvalidParameter(f"{what}: 'user' must have integer 'uid' and 'gid' from 0 to {UINT32_MAX}")
    env = spec.get("env", [])
    if not isinstance(env, (list, tuple)) or not all(isinstance(e, str) for e in env):
        raise InvalidParameter(f"{what}: 'env' must be a list of 'KEY=value' strings")
    return spec


def runtime_spec(spec: object) -> Mapping[str, Any]:
    """Reject an OCI runtime spec that can be known bad locally, before any RPC or file."""
    if not isinstance(spec, Mapping):
        raise InvalidParameter(f"spec must be an OCI runtime spec dict, not {type(spec).__name__}")
    if "process" not in spec:
        raise InvalidParameter("spec has no 'process': a container needs a process to run")
    process_spec(spec["process"], "spec 'process'")
    root = spec.get("root")
    if root is not None and (not isinstance(root, Mapping) or not isinstance(root.get("path"), str)):
        raise InvalidParameter("spec 'root' must be a dict with a string 'path'")
    for key, kind in (("linux", Mapping), ("annotations", Mapping), ("mounts", list)):
        if key in spec and spec[key] is not None and not isinstance(spec[key], kind):
            raise InvalidParameter(f"spec {key!r} must be a {'dict' if kind is Mapping else 'list'}")
    if spec.get("hostname") is not None:
        hostname(spec["hostname"], "spec 'hostname'")
    _user_namespace(spec.get("linux") or {})
    return spec


def _user_namespace(linux: Mapping[str, Any]) -> None:
    """The parts of ``linux`` that the bundle dir is made from (it is chowned to the remapped root)."""
    namespaces = linux.get("namespaces") or []
    if not isinstance(namespaces, list) or not all(
            isinstance(ns, Mapping) and isinstance(ns.get("type"), str) for ns in namespaces):
        raise InvalidParameter("spec 'linux.namespaces' must be a list of dicts with a string 'type'")
    for key in ("uidMappings", "gidMappings"):
        mappings = linux.get(key) or []
        if not isinstance(mappings, list) or not all(
                isinstance(m, Mapping) and all(is_uint32(m.get(f, 0)) for f in ("containerID", "hostID", "size"))
                for m in mappings):
            raise InvalidParameter(
                f"spec 'linux.{key}' must be a list of dicts of integers 'containerID', 'hostID', 'size' "
                f"from 0 to {UINT32_MAX}")


def labels(value: Mapping[str, str] | None) -> dict[str, str]:
    """A fresh dict of string labels (``None``: none)."""
    checked = dict(value or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in checked.items()):
        raise InvalidParameter("labels must map strings to strings")
    return checked


def runtime_name(value: object) -> str:
    """A containerd runtime (shim) name."""
    if not isinstance(value, str) or not value:
        raise InvalidParameter("shim must be a runtime name such as 'io.containerd.runc.v2'")
    return value


def timeout(value: object) -> float | None:
    """A deadline in seconds: a positive number, or ``None`` for none."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise InvalidParameter(f"timeout must be a positive number of seconds or None, not {value!r}")
    return value


def terminal_size(value: object, name: str) -> int:
    """A terminal width or height (uint16)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT16_MAX:
        raise InvalidParameter(f"terminal {name} must be an int from 0 to {UINT16_MAX}, got {value!r}")
    return value


def signal_number(sig: int | str | _signal.Signals) -> int:
    """A signal number from a number, a ``signal.Signals`` or a name ("TERM", "SIGKILL").

    >>> signal_number("kill")
    9
    """
    if isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(_signal.Signals[name])
        except KeyError:
            if sig.isascii() and sig.isdigit():  # str.isdigit() is also true of '²', which int() refuses
                return signal_number(int(sig))
            raise InvalidParameter(f"unknown signal {sig!r}") from None
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise InvalidParameter(f"signal must be an int or a name, not {type(sig).__name__}")
    if not 1 <= int(sig) <= 64:
        raise InvalidParameter(f"signal {int(sig)} is out of range 1..64")
    return int(sig)

"""Command-line values that need more than argparse: memory sizes and users (from the rootfs's passwd).

This module owns :func:`parse_memory` (``64m``, ``512MiB``, ``1g`` in bytes) and
:func:`parse_user` (``UID[:GID]`` or ``NAME[:GROUP]``, names looked up in the
container's ``/etc/passwd`` and ``/etc/group``). Each raises :class:`UsageError` with
the option in its message. It must only read files of the given rootfs, never the
host's user database.
"""

from __future__ import annotations

import os
import re

from ._context import UsageError

__all__ = ["parse_memory", "parse_user"]

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_memory(text: str) -> int:
    """A memory size such as ``64m``, ``1g``, ``512MiB`` or ``1048576`` in bytes (binary units).

    >>> parse_memory("64m"), parse_memory("1.5G"), parse_memory("4096")
    (67108864, 1610612736, 4096)
    """
    m = _MEMORY.match(text)
    if m is None:
        raise UsageError(f"--memory {text!r} is not a size like 64m, 512MiB or 1g")
    size = int(float(m.group(1)) * 1024 ** _UNITS[m.group(2).lower()])
    if size <= 0:
        raise UsageError(f"--memory {text!r} must be more than 0 bytes")
    return size


def _lookup(path: str, name: str) -> tuple[int, int] | None:
    """``(id, gid)`` of ``name`` (or of a numeric id) in a passwd- or group-style file; None when absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 3 and (fields[0] == name or fields[2] == name):
                    gid = fields[3] if len(fields) > 3 and fields[3].isdigit() else fields[2]
                    return int(fields[2]), int(gid) if gid.isdigit() else 0
    except OSError:
        pass
    return None


def parse_user(text: str, rootfs: str | None) -> tuple[int, int]:
    """``UID[:GID]`` or ``NAME[:GROUP]`` (names from the rootfs's /etc/passwd and /etc/group).

    >>> parse_user("1000:100", None)
    (1000, 100)
    """
    user, _, group = text.partition(":")
    passwd = _lookup(os.path.join(rootfs, "etc", "passwd"), user) if rootfs else None
    if user.isdigit():
        uid = int(user)
        gid = passwd[1] if passwd else 0
    elif passwd is not None:
        uid, gid = passwd
    else:
        raise UsageError(f"--user {text!r}: no user {user!r} in the container's /etc/passwd; give a number")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = _lookup(os.path.join(rootfs, "etc", "group"), group) if rootfs else None
            if found is None:
                raise UsageError(f"--user {text!r}: no group {group!r} in the container's /etc/group; give a number")
            gid = found[0]
    return uid, gid

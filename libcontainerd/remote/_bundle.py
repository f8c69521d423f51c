"""Bundle directories: ``<state_dir>/<container id>``, made as moby's ``WithBundle`` does.

A bundle holds the container's FIFOs. Normally it is 0755 and owned by root. When the
spec maps a user namespace, it must be reachable by the remapped root: every path
component that this uid cannot traverse is swapped for a private sibling
``<name>.<uid>.<gid>`` (mode 0700, owned by the remapped root). Nothing here talks to
containerd.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from .. import errdefs

log = logging.getLogger(__name__)

BUNDLE_LABEL = "com.docker/engine.bundle.path"


def _host_id(container_id: int, mappings: Sequence[Mapping[str, Any]]) -> int:
    for m in mappings or ():
        start, size = int(m.get("containerID", 0)), int(m.get("size", 0))
        if start <= container_id <= start + size - 1:
            return int(m.get("hostID", 0)) + container_id - start
    return 0


def _has_userns(spec: Mapping[str, Any]) -> bool:
    linux = spec.get("linux") or {}
    return any(ns.get("type") == "user" for ns in linux.get("namespaces") or ())


def remapped_root(spec: Mapping[str, Any]) -> tuple[int, int]:
    """Host uid/gid of the container's root: (0, 0) without a user namespace (moby's getSpecUser)."""
    if not _has_userns(spec):
        return 0, 0
    linux = spec.get("linux") or {}
    return _host_id(0, linux.get("uidMappings") or ()), _host_id(0, linux.get("gidMappings") or ())


def process_host_user(spec: Mapping[str, Any]) -> tuple[int, int]:
    """Host uid/gid of the spec's process user (through the user namespace maps, if any).

    The runc shim makes the process's stdio pipes owned by this user (``io_uid``/``io_gid``),
    so that a non-root process can reopen them (``/dev/stdout``).
    """
    user = (spec.get("process") or {}).get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    if not _has_userns(spec):
        return uid, gid
    linux = spec.get("linux") or {}
    return _host_id(uid, linux.get("uidMappings") or ()), _host_id(gid, linux.get("gidMappings") or ())


def _check_existing(path: str) -> None:
    """Reuse an existing bundle path only if it is a real directory: a symlink there would make the
    FIFOs (and the chown of a remapped root) land wherever it points, outside the state dir."""
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise errdefs.Conflict(f"bundle path {path} exists and is not a directory (a symlink or a file); remove it")


def create(path: str, spec: Mapping[str, Any]) -> tuple[str, bool]:
    """Create the bundle dir; return (the path to record in the label, whether we made it).

    Raises:
        errdefs.System: the directory cannot be made.
        errdefs.Conflict: something that is not a directory (e.g. a symlink) is at the path.
    """
    uid, gid = remapped_root(spec)
    try:
        if uid == 0 and gid == 0:
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                _check_existing(path)
                return path, False
            os.chmod(path, 0o755)  # whatever the umask
            return path, True
        made = False
        current = "/"
        for part in [p for p in path.split("/") if p]:
            current = os.path.join(current, part)
            try:
                st = os.stat(current)
                traversable = bool(st.st_mode & 0o001)
            except FileNotFoundError:
                traversable = False
            if not traversable:
                current = f"{current}.{uid}.{gid}"
                try:
                    os.mkdir(current, 0o700)
                    made = True
                except FileExistsError:
                    _check_existing(current)
                os.chown(current, uid, gid)
                os.chmod(current, 0o700)
        return current, made
    except OSError as exc:
        raise errdefs.System(f"cannot create bundle directory {path}: {exc.strerror or exc}") from exc


def remove(path: str, container_id: str, namespace: str) -> None:
    """Remove a bundle dir; a failure is logged with the container, namespace and path, never raised."""
    if not path:
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("failed to remove bundle dir %s of container %s: %s", path, container_id, exc,
                  extra={"container_id": container_id, "namespace": namespace})

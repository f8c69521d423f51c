"""Unpacking image layers into a snapshotter, and the snapshots containers run on.

This module owns the snapshot side of images, done server-side as containerd's Go client does
(``unpacker.go``): per layer in order, ``Snapshots.Prepare(extract-<unique> <chain id>, parent)``,
``Diff.Apply(layer, mounts)`` (containerd reads the blob and applies the tar, whiteouts included),
a check that the applied diff id is the one the image config names, and
``Snapshots.Commit(<chain id>)``; a chain id already committed is skipped. Then the labels the
garbage collector follows: ``containerd.io/uncompressed`` on a compressed layer and
``containerd.io/gc.ref.snapshot.<snapshotter>`` on the config. A container's snapshot is
``Snapshots.Prepare(key=<container id>, parent=<top chain id>)``. Nothing here fetches content.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from .. import errdefs
from .._api.containerd.api.services.diff.v1 import diff_pb2
from .._api.containerd.api.services.snapshots.v1 import snapshots_pb2
from .._imagespec import chain_ids
from ..types import Descriptor
from . import _content
from ._rpc import Connection

log = logging.getLogger("libcontainerd")

DEFAULT_SNAPSHOTTER = "overlayfs"
SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"
GC_SNAPSHOT_LABEL = "containerd.io/gc.ref.snapshot.{}"


def check_snapshotter(snapshotter: object) -> str:
    """The snapshotter name (``None`` means containerd's default, ``overlayfs``).

    Raises:
        errdefs.InvalidParameter: not a non-empty string.
    """
    if snapshotter is None:
        return DEFAULT_SNAPSHOTTER
    if not isinstance(snapshotter, str) or not snapshotter or "/" in snapshotter:
        raise errdefs.InvalidParameter(
            f"snapshotter must be a snapshotter name such as 'overlayfs', not {snapshotter!r}")
    return snapshotter


def snapshot_exists(conn: Connection, snapshotter: str, key: str) -> bool:
    """True when the snapshotter has a snapshot (committed or active) of that key."""
    try:
        conn.call(conn.snapshots.Stat, snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key),
                  f"snapshot {key}")
    except errdefs.NotFound:
        return False
    return True


def _unique() -> str:
    return f"{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


def unpack(conn: Connection, layers: Sequence[Descriptor], diff_ids: Sequence[str], config_digest: str,
           snapshotter: str, lease_id: str, what: str) -> str:
    """Apply the layers in order into ``snapshotter``; return the top chain id.

    Raises:
        errdefs.DataLoss: a layer's content does not give the diff id its config names (the
            extraction snapshot is removed).
    """
    if len(layers) != len(diff_ids):
        raise errdefs.DataLoss(f"{what}: the manifest has {len(layers)} layers but the config {len(diff_ids)} diff ids")
    if not layers:
        raise errdefs.InvalidParameter(f"{what}: the image has no layers to unpack")
    parent = ""
    chain = chain_ids(diff_ids)
    for layer, diff_id, chain_id in zip(layers, diff_ids, chain):
        if not snapshot_exists(conn, snapshotter, chain_id):
            _apply(conn, layer, diff_id, chain_id, parent, snapshotter, lease_id, what)
        parent = chain_id
    _content.set_labels(conn, config_digest, {GC_SNAPSHOT_LABEL.format(snapshotter): chain[-1]}, lease_id)
    return chain[-1]


def _apply(conn: Connection, layer: Descriptor, diff_id: str, chain_id: str, parent: str, snapshotter: str,
           lease_id: str, what: str) -> None:
    labels = {SNAPSHOT_REF_LABEL: chain_id}
    for _ in range(3):
        key = f"extract-{_unique()} {chain_id}"
        try:
            resp = conn.call(conn.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
                snapshotter=snapshotter, key=key, parent=parent, labels=labels), f"{what}: snapshot {key}",
                lease=lease_id)
            break
        except errdefs.Conflict:
            if snapshot_exists(conn, snapshotter, chain_id):
                return  # another unpack committed it meanwhile
    else:
        raise errdefs.Conflict(f"{what}: cannot prepare an extraction snapshot for {chain_id}")
    try:
        applied = conn.call(conn.diff.Apply, diff_pb2.ApplyRequest(
            diff=_content.descriptor_message(layer), mounts=resp.mounts), f"{what}: layer {layer.digest}",
            lease=lease_id)
        if applied.applied.digest != diff_id:
            raise errdefs.DataLoss(f"{what}: layer {layer.digest} unpacks to {applied.applied.digest}, but the image "
                                   f"config says {diff_id}")
        conn.call(conn.snapshots.Commit, snapshots_pb2.CommitSnapshotRequest(
            snapshotter=snapshotter, name=chain_id, key=key, labels=labels), f"{what}: snapshot {chain_id}",
            lease=lease_id)
    except errdefs.Conflict:
        remove(conn, snapshotter, key)  # committed by another unpack meanwhile: theirs is as good
        return
    except BaseException:
        remove(conn, snapshotter, key)
        raise
    if layer.digest != diff_id:
        _content.set_labels(conn, layer.digest, {UNCOMPRESSED_LABEL: diff_id}, lease_id)


def remove(conn: Connection, snapshotter: str, key: str) -> None:
    """Remove a snapshot; a missing one is fine, another failure is logged (with the key)."""
    try:
        conn.call(conn.snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
                  f"snapshot {key}")
    except errdefs.NotFound:
        pass
    except errdefs.LibcontainerdError as exc:
        log.warning("failed to remove snapshot %s of %s: %s", key, snapshotter, exc)


def prepare(conn: Connection, snapshotter: str, key: str, parent: str, lease_id: str, what: str) -> None:
    """An active snapshot ``key`` on top of ``parent`` (a container's root filesystem).

    Raises:
        errdefs.Conflict: a snapshot of that key exists.
    """
    try:
        conn.call(conn.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent), what, lease=lease_id)
    except errdefs.Conflict as exc:
        raise errdefs.Conflict(f"{what}: snapshot {key!r} of {snapshotter} exists already",
                               explanation=exc.explanation, code=exc.code) from exc.__cause__


def mounts(conn: Connection, snapshotter: str, key: str, what: str) -> list[Any]:
    """The mounts of a snapshot (``containerd.types.Mount`` messages), as a task's rootfs takes them."""
    resp = conn.call(conn.snapshots.Mounts, snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key), what)
    return list(resp.mounts)


def top_chain_id(diff_ids: Sequence[str]) -> str | None:
    """The chain id of all layers, ``None`` for none."""
    chain = chain_ids(diff_ids)
    return chain[-1] if chain else None

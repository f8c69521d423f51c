"""containerd's content store and leases, as the image side uses them.

This module owns blob writes (``Content.Write``: a ``STAT`` that declares the expected digest
and size and learns how much an earlier ingest of the same ref already holds, ``WRITE``s from
that offset, a ``COMMIT`` with the expected digest), blob reads, label updates and leases. Every
call goes through the :class:`~libcontainerd.remote._rpc.Connection`; nothing here knows of
registries or archives (a write reads from whatever :data:`Opener` it is given).

Facts it is built on (containerd 1.6 ``contentserver`` and ``metadata`` sources, each checked by
the image tests): a ``STAT`` with ``expected`` answers ``AlreadyExists`` when this namespace has
the blob, and an offset equal to the size when another namespace has it (the shared policy:
committing then costs no bytes); a ``WRITE`` at offset 0 truncates an earlier ingest; containerd
verifies the digest and size again at commit; an ingest ref is locked while one writer holds it
(``Unavailable``, "locked").
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Callable

from google.protobuf import field_mask_pb2

from .. import errdefs
from .._api.containerd.api.services.content.v1 import content_pb2
from .._api.containerd.api.services.leases.v1 import leases_pb2
from ..types import Descriptor
from ._rpc import Connection, Stream

log = logging.getLogger("libcontainerd")

GC_EXPIRE_LABEL = "containerd.io/gc.expire"
_LOCK_WAIT = 300.0  # seconds to wait for another writer of the same blob (Go retries as long)

#: ``opener(offset) -> (start, chunks)``: the blob's bytes from ``start`` (``offset`` or 0).
Opener = Callable[[int], tuple[int, Iterator[bytes]]]
#: ``report(offset, status)`` for progress.
Reporter = Callable[[int, str], None]


def _rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Lease:
    """A lease (expiring after 24 h should the client die); content and snapshots made under it
    survive containerd's garbage collector until it is deleted.

    As a context manager: deleted at the end, asynchronously on success (what it protected is
    referenced by then), synchronously on failure, so that what the failed operation wrote is
    collected before the error reaches the caller.
    """

    def __init__(self, conn: Connection, purpose: str) -> None:
        self._rpc = conn
        self.id = f"libcontainerd-{purpose}-{uuid.uuid4().hex[:16]}"
        expire = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=24)
        conn.call(conn.leases.Create, leases_pb2.CreateRequest(id=self.id, labels={GC_EXPIRE_LABEL: _rfc3339(expire)}),
                  f"lease {self.id}")

    def delete(self, sync: bool = False) -> None:
        """Delete the lease; a failure is logged (with the lease id), never raised."""
        try:
            self._rpc.call(self._rpc.leases.Delete, leases_pb2.DeleteRequest(id=self.id, sync=sync),
                            f"lease {self.id}")
        except errdefs.LibcontainerdError as exc:
            log.warning("failed to delete lease %s: %s", self.id, exc)

    def __enter__(self) -> str:
        return self.id

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.delete(sync=exc_type is not None)


def lease(conn: Connection, purpose: str) -> Lease:
    """A new :class:`Lease`; ``with lease(conn, "pull") as lease_id: ...``."""
    return Lease(conn, purpose)


def exists(conn: Connection, digest: str) -> bool:
    """True when this namespace's content store holds the blob."""
    try:
        conn.call(conn.content.Info, content_pb2.InfoRequest(digest=digest), f"content {digest}")
    except errdefs.NotFound:
        return False
    return True


def labels_of(conn: Connection, digest: str) -> dict[str, str]:
    """The labels of a blob.

    Raises:
        errdefs.NotFound: no such blob in this namespace.
    """
    resp = conn.call(conn.content.Info, content_pb2.InfoRequest(digest=digest), f"content {digest}")
    return dict(resp.info.labels)


def set_labels(conn: Connection, digest: str, labels: Mapping[str, str], lease_id: str | None = None) -> None:
    """Set (add or replace) these labels of a blob, leaving its others alone."""
    if not labels:
        return
    request = content_pb2.UpdateRequest(
        info=content_pb2.Info(digest=digest, labels=dict(labels)),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels]))
    conn.call(conn.content.Update, request, f"content {digest}", lease=lease_id)


def read(conn: Connection, digest: str, what: str, limit: int = 16 << 20) -> bytes:
    """A whole (small) blob: a manifest, an index or a config.

    Raises:
        errdefs.NotFound: no such blob.
        errdefs.DataLoss: larger than ``limit`` or not matching its digest.
    """
    out = bytearray()
    for resp in conn.stream(conn.content.Read, content_pb2.ReadContentRequest(digest=digest),
                            f"{what}: blob {digest}"):
        out += resp.data
        if len(out) > limit:
            raise errdefs.DataLoss(f"{what}: blob {digest} is larger than {limit} bytes")
    if "sha256:" + hashlib.sha256(out).hexdigest() != digest:
        raise errdefs.DataLoss(f"{what}: blob {digest} in the content store does not match its digest")
    return bytes(out)


def stream(conn: Connection, digest: str, what: str) -> Iterator[bytes]:
    """A blob's bytes, chunk by chunk (for layers)."""
    for resp in conn.stream(conn.content.Read, content_pb2.ReadContentRequest(digest=digest),
                            f"{what}: blob {digest}"):
        yield resp.data


def _status(exc: errdefs.LibcontainerdError) -> str:
    """The name of containerd's status code behind a mapped error ("ALREADY_EXISTS"), or ""."""
    return getattr(exc.code, "name", "")


def abort(conn: Connection, ref: str, lease_id: str | None, *, container_id: str = "",
          log_extra: Mapping[str, str] | None = None) -> None:
    """Abort an ingest (gone already is fine); a failure is logged with its ref and container, never raised."""
    try:
        conn.call(conn.content.Abort, content_pb2.AbortRequest(ref=ref), f"content ingest {ref}", timeout=30.0,
                  lease=lease_id)
    except errdefs.NotFound:
        pass
    except errdefs.LibcontainerdError as exc:
        log.warning("failed to abort content ingest %s of container %s: %s", ref, container_id or "-", exc,
                    extra=log_extra)


def write(conn: Connection, desc: Descriptor, ref: str, opener: Opener, *, lease_id: str | None,
          labels: Mapping[str, str], what: str, report: Reporter | None = None,
          cancel: threading.Event | None = None) -> bool:
    """Make sure the blob ``desc`` is in the content store, fetching it through ``opener`` if needed.

    The bytes are hashed as they stream and checked against ``desc`` before the commit (and
    containerd checks them again at the commit, which also covers a resumed ingest). A blob that
    another writer is ingesting under the same ref is waited for. On any failure the ingest is
    aborted, so no partial data stays behind.

    Returns:
        True when bytes were fetched, False when the blob was there already (its labels are then
        updated with ``labels``).

    Raises:
        errdefs.DataLoss: the bytes do not match the digest or the size.
        errdefs.Cancelled: ``cancel`` was set.
    """
    deadline = time.monotonic() + _LOCK_WAIT
    delay = 0.05
    while True:
        try:
            fetched = _write_once(conn, desc, ref, opener, lease_id, labels, what, report, cancel)
        except errdefs.Unavailable as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            if cancel is None:
                time.sleep(delay)
            elif cancel.wait(delay):
                raise errdefs.Cancelled(f"{what}: cancelled") from None
            delay = min(delay * 2, 1.0)
            continue
        if not fetched:
            set_labels(conn, desc.digest, labels, lease_id)
        return fetched


def _writer(conn: Connection, what: str, lease_id: str | None) -> tuple[
        queue.SimpleQueue[content_pb2.WriteContentRequest | None], Stream, Iterator[Any]]:
    """A ``Content.Write`` stream fed from a queue (``None`` ends it): the queue, the call, its answers.

    Each request is put when the previous answer came back, so the writer can stop between any two.
    """
    requests: queue.SimpleQueue[content_pb2.WriteContentRequest | None] = queue.SimpleQueue()

    def feed() -> Iterator[content_pb2.WriteContentRequest]:
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    call = conn.stream(conn.content.Write, feed(), what, timeout=None, lease=lease_id)
    return requests, call, iter(call)


def _end_writer(conn: Connection, requests: queue.SimpleQueue[content_pb2.WriteContentRequest | None], call: Stream,
                ref: str, lease_id: str | None, *, committed: bool) -> None:
    """End a :func:`_writer`'s stream; an ingest not committed is cancelled and aborted."""
    requests.put(None)
    if not committed:
        call.cancel()  # ends the stream, which releases the ingest's lock
        abort(conn, ref, lease_id)


class ChunkReader(io.RawIOBase):
    """A binary file over an iterator of byte chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _write_once(conn: Connection, desc: Descriptor, ref: str, opener: Opener, lease_id: str | None,
                labels: Mapping[str, str], what: str, report: Reporter | None,
                cancel: threading.Event | None) -> bool:
    blob = f"{what}: blob {desc.digest}"
    requests, call, answers = _writer(conn, blob, lease_id)
    # Until the STAT is answered the ingest is not ours: when another writer holds it ("locked"),
    # aborting it would break that writer's pull.
    committed = True
    try:
        requests.put(content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=ref, total=desc.size,
                                                     expected=desc.digest))
        try:
            status = next(answers)
        except errdefs.Conflict as exc:
            if _status(exc) == "ALREADY_EXISTS":
                if report:
                    report(desc.size, "exists")
                return False
            raise
        committed = False
        offset = int(status.offset)
        fetched = offset < desc.size
        if fetched:
            start, chunks = opener(offset)
            hasher = hashlib.sha256() if start == 0 else None
            pos = start
            if report:
                report(pos, "downloading")
            try:
                for chunk in chunks:
                    if cancel is not None and cancel.is_set():
                        raise errdefs.Cancelled(f"{what}: cancelled")
                    if pos + len(chunk) > desc.size:
                        raise errdefs.DataLoss(f"{blob}: the source sent more than its size {desc.size}")
                    if hasher is not None:
                        hasher.update(chunk)
                    requests.put(content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=ref, offset=pos,
                                                                 data=chunk))
                    next(answers)
                    pos += len(chunk)
                    if report:
                        report(pos, "downloading")
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            if pos != desc.size:
                raise errdefs.DataLoss(f"{blob}: the source ended after {pos} of {desc.size} bytes")
            if hasher is not None and "sha256:" + hasher.hexdigest() != desc.digest:
                raise errdefs.DataLoss(f"{blob}: the data has digest sha256:{hasher.hexdigest()}; nothing was kept")
        requests.put(content_pb2.WriteContentRequest(action=content_pb2.COMMIT, ref=ref, offset=desc.size,
                                                     total=desc.size, expected=desc.digest, labels=dict(labels)))
        try:
            next(answers)
        except (errdefs.Conflict, errdefs.InvalidParameter) as exc:
            if _status(exc) == "ALREADY_EXISTS":
                committed = True
                if report:
                    report(desc.size, "exists")
                return False
            if _status(exc) in ("FAILED_PRECONDITION", "INVALID_ARGUMENT"):
                raise errdefs.DataLoss(f"{blob}: containerd refused the commit: {exc.explanation}; nothing was kept") \
                    from exc.__cause__
            raise
        committed = True
        if report:
            report(desc.size, "done" if fetched else "exists")
        return fetched
    finally:
        _end_writer(conn, requests, call, ref, lease_id, committed=committed)


def write_bytes(conn: Connection, desc: Descriptor, ref: str, data: bytes, *, lease_id: str | None,
                labels: Mapping[str, str], what: str, report: Reporter | None = None) -> bool:
    """:func:`write` for a document already in memory (a manifest, an index, a config)."""
    return write(conn, desc, ref, lambda offset: (0, iter((data,))), lease_id=lease_id, labels=labels, what=what,
                 report=report)


def descriptor_message(desc: Descriptor) -> Any:
    """The ``containerd.types.Descriptor`` message of a :class:`Descriptor`."""
    from .._api.containerd.api.types import descriptor_pb2

    return descriptor_pb2.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)


def write_unknown(conn: Connection, ref: str, size: int, chunks: Iterator[bytes], *, lease_id: str | None,
                  what: str, labels: Mapping[str, str] | None = None) -> str:
    """Store a blob whose digest is learnt while it streams (a ``docker save`` file); return the digest.

    Raises:
        errdefs.DataLoss: the stream is not ``size`` bytes long.
    """
    requests, call, answers = _writer(conn, f"{what}: {ref}", lease_id)
    hasher = hashlib.sha256()
    committed = True  # see _write_once: not ours to abort before the STAT is answered
    try:
        requests.put(content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=ref, total=size))
        next(answers)
        committed = False
        pos = 0
        for chunk in chunks:  # the first WRITE at offset 0 truncates what an earlier ingest left
            hasher.update(chunk)
            requests.put(content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=ref, offset=pos, data=chunk))
            next(answers)
            pos += len(chunk)
        if pos != size:
            raise errdefs.DataLoss(f"{what}: {ref} ended after {pos} of {size} bytes")
        digest = "sha256:" + hasher.hexdigest()
        requests.put(content_pb2.WriteContentRequest(action=content_pb2.COMMIT, ref=ref, offset=size, total=size,
                                                     expected=digest, labels=dict(labels or {})))
        try:
            next(answers)
        except errdefs.Conflict as exc:
            if _status(exc) != "ALREADY_EXISTS":
                raise
        committed = True
        return digest
    finally:
        _end_writer(conn, requests, call, ref, lease_id, committed=committed)

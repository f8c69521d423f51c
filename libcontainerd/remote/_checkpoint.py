"""Checkpoints through containerd's content store: upload, create, read back, extract safely.

Restoring (``Container.start(checkpoint_dir=...)``) tars the directory into a content blob
of media type :data:`CHECKPOINT_MEDIA_TYPE` and hands its descriptor to the task; the blob
is deleted afterwards whatever happens. Checkpointing (``Task.create_checkpoint``) does what
containerd's Go client does -- a lease, a pause (a task paused already stays paused),
``Tasks.Checkpoint``, an OCI index of the returned descriptors, a
``containerd.io/checkpoint/<id>:<time>`` image -- and then what moby does:
read the index back, find the checkpoint tar, extract it into the directory, and delete the
image (and the lease, so the garbage collector takes the blobs) whatever happens.

Archives are extracted with :func:`safe_extract`: nothing outside the target directory is
ever written (no absolute paths, no ``..``, no links leading out, no device nodes or FIFOs).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import logging
import lzma
import os
import posixpath
import re
import tarfile
import threading
import uuid
import zlib
from collections.abc import Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

import attrs

from .. import errdefs
from .._api.containerd.api.services.content.v1 import content_pb2
from .._api.containerd.api.services.images.v1 import images_pb2
from .._api.containerd.api.services.leases.v1 import leases_pb2
from .._api.containerd.api.services.tasks.v1 import tasks_pb2
from .._api.containerd.api.types import descriptor_pb2
from .._api.containerd.runtime.v2.runc.options import oci_pb2 as runc_options
from .._typeurl import pack_message
from ..types import Status
from ._container import Container, uses_runc_options
from ._content import ChunkReader, abort

if TYPE_CHECKING:
    from ._process import Task
    from ._session import Session

log = logging.getLogger(__name__)

CHECKPOINT_MEDIA_TYPE = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
GC_ROOT_LABEL = "containerd.io/gc.root"
GC_REF_CONTENT = "containerd.io/gc.ref.content.{}"
GC_EXPIRE_LABEL = "containerd.io/gc.expire"
CHECKPOINT_LABEL = "containerd.io/checkpoint"
CHUNK = 1 << 20
_HAS_FILTERS = hasattr(tarfile, "fully_trusted_filter")


def _rfc3339(when: datetime.datetime | None = None) -> str:
    when = when or datetime.datetime.now(datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class Blob:
    """A blob in the content store, and how to remove it."""

    session: Session = attrs.field(repr=False)
    descriptor: descriptor_pb2.Descriptor = attrs.field(repr=lambda d: f"{d.media_type} {d.digest} {d.size}B")
    ref: str = ""
    container_id: str = ""

    def delete(self) -> None:
        """Delete the blob; a failure is logged with its ref, digest and container, never raised."""
        delete_content(self.session, self.descriptor.digest, ref=self.ref, container_id=self.container_id)


def write_content(
    session: Session,
    reader: IO[bytes],
    media_type: str,
    *,
    ref: str | None = None,
    labels: Mapping[str, str] | None = None,
    expected_digest: str | None = None,
    lease: str | None = None,
    gc_root: bool = True,
    container_id: str = "",
) -> descriptor_pb2.Descriptor:
    """Stream ``reader`` into the content store (1 MiB chunks) and commit it.

    Args:
        reader: a binary file object, read to its end.
        media_type: the descriptor's media type.
        ref: the ingest ref (unique by default).
        labels: labels for the committed blob; ``containerd.io/gc.root`` is added with the
            current UTC time when ``gc_root``.
        expected_digest: commit only if the data has this digest (``sha256:...``).
        lease: a lease id to write under.
        container_id: the container the content belongs to, for the log records of a clean-up.

    Returns:
        The descriptor (media type, digest, size).

    Raises:
        errdefs.DataLoss: the data did not match ``expected_digest``; the ingest is aborted.
        Exception: whatever ``reader`` raised; nothing is committed and the ingest is aborted.
    """
    ref = ref or f"libcontainerd-{uuid.uuid4().hex}"
    all_labels = dict(labels or {})
    if gc_root:
        all_labels.setdefault(GC_ROOT_LABEL, _rfc3339())
    hasher = hashlib.sha256()
    state = {"size": 0}
    failed: list[Exception] = []

    def requests() -> Iterator[content_pb2.WriteContentRequest]:
        yield content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=ref)
        while True:
            try:
                chunk = reader.read(CHUNK)
            except Exception as exc:
                # End the stream without a commit: what was written stays an ingest, aborted below.
                # (Raised here, gRPC would log it as a crash of the request iterator.)
                failed.append(exc)
                return
            if not chunk:
                break
            hasher.update(chunk)
            yield content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=ref, offset=state["size"], data=chunk)
            state["size"] += len(chunk)
        digest = expected_digest or "sha256:" + hasher.hexdigest()
        yield content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT, ref=ref, offset=state["size"], total=state["size"], expected=digest,
            labels=all_labels,
        )

    conn = session.conn
    what = f"content {ref}"
    try:
        for _ in conn.stream(conn.content.Write, requests(), what, lease=lease):
            pass
        if failed:
            raise failed[0]
    except errdefs.LibcontainerdError as exc:
        _abort(session, ref, lease, container_id)
        if isinstance(exc, errdefs.Conflict) and "already exists" in str(exc):
            pass  # the same bytes are there already: as good as committed (as in Go's writeContent)
        elif expected_digest and "digest" in str(exc).lower():
            raise errdefs.DataLoss(f"{what}: written data does not match the expected digest {expected_digest}: "
                                   f"{exc.explanation}") from exc.__cause__
        else:
            raise
    except BaseException:
        _abort(session, ref, lease, container_id)
        raise
    return descriptor_pb2.Descriptor(media_type=media_type, digest="sha256:" + hasher.hexdigest(), size=state["size"])


def _abort(session: Session, ref: str, lease: str | None, container_id: str) -> None:
    abort(session.conn, ref, lease, container_id=container_id, log_extra=session.log_extra(container_id))


def read_content(session: Session, digest: str, lease: str | None = None) -> Iterator[bytes]:
    """Stream a blob's bytes from the content store."""
    conn = session.conn
    for resp in conn.stream(conn.content.Read, content_pb2.ReadContentRequest(digest=digest), f"content {digest}",
                            lease=lease):
        yield resp.data


def delete_content(session: Session, digest: str, *, ref: str = "", container_id: str = "") -> None:
    """Delete a blob; log (with its ingest ref, digest and container) rather than raise on failure."""
    try:
        conn = session.conn
        conn.call(conn.content.Delete, content_pb2.DeleteContentRequest(digest=digest), f"content {digest}")
    except errdefs.NotFound:
        pass
    except errdefs.LibcontainerdError as exc:
        log.warning("failed to delete content %s (ref %s) of container %s: %s", digest, ref or "-",
                    container_id or "-", exc, extra=session.log_extra(container_id))


# -- upload for restore ---------------------------------------------------------------


def _check_dir(checkpoint_dir: object) -> str:
    if not isinstance(checkpoint_dir, (str, os.PathLike)) or not os.fspath(checkpoint_dir):
        raise errdefs.InvalidParameter("checkpoint_dir must be a directory path")
    path = os.fspath(checkpoint_dir)
    if not os.path.isdir(path):
        raise errdefs.InvalidParameter(f"checkpoint dir {path} does not exist or is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise errdefs.InvalidParameter(f"checkpoint dir {path} is not readable")
    return path


class _TarPipe(io.RawIOBase):
    """The read end of the tar producer's pipe: its end is an error when the producer failed.

    The producer closes the pipe when it stops, for whatever reason; a tar cut short must not
    reach containerd's commit as if it were whole.
    """

    def __init__(self, fd: int, errors: list[BaseException]) -> None:
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._errors = errors

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._file.readinto(b)
        if not n and self._errors:
            raise OSError(f"the checkpoint tar was cut short: {self._errors[0]}")
        return n or 0

    def close(self) -> None:
        self._file.close()
        super().close()


def upload_checkpoint_dir(session: Session, checkpoint_dir: str, container_id: str) -> Blob:
    """Tar ``checkpoint_dir`` (a plain tar of its content) into the content store.

    Raises:
        errdefs.InvalidParameter: the directory is missing or unreadable, or a file could not
            be read whole; nothing is committed.
    """
    path = _check_dir(checkpoint_dir)
    rfd, wfd = os.pipe()
    errors: list[BaseException] = []
    reader = _TarPipe(rfd, errors)

    def produce() -> None:
        w = os.fdopen(wfd, "wb")
        try:
            with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(os.listdir(path)):
                    tar.add(os.path.join(path, name), arcname=name)
        except BrokenPipeError:
            pass  # the upload stopped reading: its error is the one to report
        except BaseException as exc:
            errors.append(exc)  # before the pipe closes: the reader must see it at the end
        finally:
            try:
                w.close()
            except BrokenPipeError:
                pass

    producer = threading.Thread(target=produce, name=f"libcontainerd-checkpoint-tar-{container_id}", daemon=True)
    producer.start()
    ref = f"checkpoint-{container_id}-{uuid.uuid4().hex}"
    try:
        desc = write_content(session, io.BufferedReader(reader, CHUNK), CHECKPOINT_MEDIA_TYPE, ref=ref,
                             container_id=container_id)
    except OSError:
        if not errors:
            raise
    finally:
        reader.close()
        producer.join()
    if errors:
        raise errdefs.InvalidParameter(f"cannot read checkpoint dir {path}: {errors[0]}") from errors[0]
    return Blob(session, desc, ref, container_id)


# -- checkpoint -------------------------------------------------------------------------


def _create_lease(session: Session) -> str:
    lease_id = f"libcontainerd-checkpoint-{uuid.uuid4().hex}"
    expire = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=24)
    conn = session.conn
    conn.call(conn.leases.Create, leases_pb2.CreateRequest(id=lease_id, labels={GC_EXPIRE_LABEL: _rfc3339(expire)}),
              f"lease {lease_id}")
    return lease_id


def _delete_lease(session: Session, lease_id: str, container_id: str) -> None:
    conn = session.conn
    try:
        conn.call(conn.leases.Delete, leases_pb2.DeleteRequest(id=lease_id, sync=True), f"lease {lease_id}")
    except errdefs.LibcontainerdError as exc:
        log.warning("failed to delete lease %s of the checkpoint of container %s: %s", lease_id, container_id, exc,
                    extra=session.log_extra(container_id))


def _checkpoint_options(container: Container, exit: bool) -> Any | None:
    return pack_message(runc_options.CheckpointOptions(exit=exit)) if uses_runc_options(container) else None


def create_checkpoint(session: Session, task: Task, checkpoint_dir: str, *, exit: bool = False) -> None:
    """Checkpoint ``task`` with CRIU and extract the checkpoint into ``checkpoint_dir``.

    Raises:
        errdefs.System: CRIU or the runtime failed (the message has their words), or the
            checkpoint image was invalid. Nothing is left in containerd either way.
        errdefs.DataLoss: the checkpoint archive read back was corrupt.
    """
    container = task.container
    cid = container.id
    if not isinstance(checkpoint_dir, (str, os.PathLike)) or not os.fspath(checkpoint_dir):
        raise errdefs.InvalidParameter("checkpoint_dir must be a directory path")
    target = os.fspath(checkpoint_dir)
    if os.path.exists(target) and not os.path.isdir(target):
        raise errdefs.InvalidParameter(f"checkpoint dir {target} exists and is not a directory")
    if "\x00" in target:
        raise errdefs.InvalidParameter("checkpoint dir must not contain NUL characters")
    # A missing dir is made after the dump; find out now whether it can be, not after CRIU ran.
    ancestor = os.path.dirname(os.path.abspath(target))
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise errdefs.InvalidParameter(f"checkpoint dir {target} cannot be made: {ancestor} is not a directory")
    lease = _create_lease(session)
    image_name = ""
    try:
        with _paused(session, task, exit):
            image_name, index_desc = _checkpoint_image(session, container, lease, exit)
        extract_checkpoint(session, index_desc.digest, target, what=f"task {cid}", lease=lease)
    finally:
        if image_name:
            conn = session.conn
            try:
                conn.call(conn.images.Delete, images_pb2.DeleteImageRequest(name=image_name, sync=True),
                          f"image {image_name}")
            except errdefs.LibcontainerdError as exc:
                log.warning("failed to delete checkpoint image %s of container %s: %s", image_name, cid, exc,
                            extra=session.log_extra(cid))
        _delete_lease(session, lease, cid)


@contextlib.contextmanager
def _paused(session: Session, task: Task, exit: bool) -> Iterator[None]:
    """Pause a running task for the dump and resume it after, as containerd's Go client does.

    The image is then of a frozen task, and the backend sees ``PAUSED`` then ``RESUMED``,
    also when the dump fails. A task that was paused already stays paused; one that the
    checkpoint stopped (``exit``) is not resumed.
    """
    if task.status() is not Status.RUNNING:
        yield
        return
    task.pause()
    stopped = False
    try:
        yield
        stopped = exit
    finally:
        if not stopped:
            try:
                task.resume()
            except errdefs.LibcontainerdError as exc:
                log.warning("failed to resume task %s after its checkpoint: %s", task.id, exc,
                            extra=session.log_extra(task.id))


def extract_checkpoint(session: Session, index_digest: str, target: str, *, what: str = "checkpoint",
                       lease: str | None = None) -> list[str]:
    """Read a checkpoint's OCI index blob, find the CRIU tar by media type, extract it safely.

    Raises:
        errdefs.System: the index does not decode or has no checkpoint descriptor ("invalid checkpoint"),
            or the files cannot be written into ``target``.
        errdefs.DataLoss: the archive is corrupt (not a tar, cut short, bad compression).
        errdefs.InvalidParameter: the archive is hostile (see :func:`safe_extract`).
    """
    try:
        index = json.loads(b"".join(read_content(session, index_digest, lease)))
        manifests = index.get("manifests") or ()
        found = next((m for m in manifests if m.get("mediaType") == CHECKPOINT_MEDIA_TYPE), None)
    except (ValueError, AttributeError, TypeError) as exc:
        raise errdefs.System(f"{what}: failed to decode checkpoint data: {exc}") from exc
    if found is None or not isinstance(found.get("digest"), str):
        raise errdefs.System(f"{what}: invalid checkpoint: no {CHECKPOINT_MEDIA_TYPE} in the index")
    try:
        os.makedirs(target, exist_ok=True)
        return safe_extract(ChunkReader(read_content(session, found["digest"], lease)), target)
    except errdefs.LibcontainerdError:
        raise
    except (tarfile.TarError, zlib.error, lzma.LZMAError, EOFError) as exc:
        raise errdefs.DataLoss(f"{what}: checkpoint archive is corrupt: {exc}") from exc
    except OSError as exc:
        if exc.errno is None:  # bz2 says "Invalid data stream" this way
            raise errdefs.DataLoss(f"{what}: checkpoint archive is corrupt: {exc}") from exc
        raise errdefs.System(f"{what}: cannot extract the checkpoint into {target}: {exc}") from exc


def _checkpoint_image(session: Session, container: Container, lease: str,
                      exit: bool) -> tuple[str, descriptor_pb2.Descriptor]:
    conn = session.conn
    cid = container.id
    request = tasks_pb2.CheckpointTaskRequest(container_id=cid, options=_checkpoint_options(container, exit))
    try:
        resp = conn.call(conn.tasks.Checkpoint, request, f"checkpoint of task {cid}", lease=lease)
    except errdefs.LibcontainerdError as exc:
        if type(exc) in (errdefs.Unknown, errdefs.System):
            why = criu_log_errors(exc.explanation or "")
            raise errdefs.System(f"checkpoint of task {cid} failed: {exc.explanation}"
                                 + (f" (CRIU says: {why})" if why else ""),
                                 explanation=exc.explanation, code=exc.code) from exc.__cause__
        raise
    manifests = []
    labels = {}
    for i, d in enumerate(resp.descriptors):
        manifests.append({
            "mediaType": d.media_type, "digest": d.digest, "size": d.size,
            "platform": {"os": "linux", "architecture": _goarch()},
            **({"annotations": dict(d.annotations)} if d.annotations else {}),
        })
        labels[GC_REF_CONTENT.format(i)] = d.digest
    index = {"schemaVersion": 2, "manifests": manifests, "annotations": {}}
    data = json.dumps(index).encode() + b"\n"
    desc = write_content(session, io.BytesIO(data), INDEX_MEDIA_TYPE, ref=f"checkpoint-index-{cid}-{uuid.uuid4().hex}",
                         labels=labels, lease=lease, gc_root=False, container_id=cid)
    name = f"containerd.io/checkpoint/{cid}:{datetime.datetime.now():%m-%d-%Y-%H:%M:%S}"
    image = images_pb2.Image(name=name, labels={CHECKPOINT_LABEL: "true"}, target=desc)
    conn.call(conn.images.Create, images_pb2.CreateImageRequest(image=image), f"checkpoint image {name}", lease=lease)
    return name, desc


_CRIU_LOG = re.compile(r"path= ?(/\S+\.log)")
_CRIU_ERROR = re.compile(r"^\([0-9.]+\) Error \([^)]*\): (.*)$", re.M)


def criu_log_errors(message: str, most: int = 3) -> str:
    """CRIU's own reason for a failure: the last ``Error`` lines of the log a runc error names.

    runc says only ``criu failed: type DUMP errno 0 path=<bundle>/criu-dump.log``, and that log goes
    with the task: read it now, while it is there. "" when there is no such log or no error in it.

    >>> criu_log_errors("criu failed: type NOTIFY errno 0 path= /nonexistent/criu-dump.log: unknown")
    ''
    """
    match = _CRIU_LOG.search(message)
    if match is None:
        return ""
    try:
        with open(match.group(1), encoding="utf-8", errors="replace") as f:
            errors = _CRIU_ERROR.findall(f.read())
    except OSError:
        return ""
    return "; ".join(e.strip() for e in errors[-most:])


def _goarch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


# -- safe extraction --------------------------------------------------------------------


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def safe_extract(fileobj: IO[bytes] | io.RawIOBase, dest: str) -> list[str]:
    """Extract a tar stream into ``dest``, refusing anything that could write outside it.

    Refused (``errdefs.InvalidParameter``, nothing written outside ``dest``): absolute
    names, ``..`` components, symlinks or hard links that point outside, device nodes and
    FIFOs, and writes through a link that leads outside. Members are checked one by one
    as the stream is read, so a hostile member stops the extraction where it stands.

    Returns:
        The extracted member names.
    """
    root = os.path.realpath(dest)
    names: list[str] = []
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            name = member.name
            norm = posixpath.normpath(name)
            if name.startswith("/") or norm.startswith("../") or norm == ".." or "/../" in f"/{name}/":
                raise errdefs.InvalidParameter(f"checkpoint archive: refusing member {name!r} (path escapes)")
            if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
                raise errdefs.InvalidParameter(f"checkpoint archive: refusing device or FIFO {name!r}")
            target = os.path.join(root, norm)
            parent = os.path.realpath(os.path.dirname(target))
            if not _inside(root, parent):
                raise errdefs.InvalidParameter(f"checkpoint archive: {name!r} would be written through a link outside")
            if member.issym():
                link = member.linkname
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(norm), link))
                if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    raise errdefs.InvalidParameter(f"checkpoint archive: symlink {name!r} -> {link!r} leads outside")
            if member.islnk():
                link = posixpath.normpath(member.linkname)
                if member.linkname.startswith("/") or link.startswith("..") or not _inside(
                        root, os.path.realpath(os.path.join(root, link))):
                    raise errdefs.InvalidParameter(f"checkpoint archive: hard link {name!r} leads outside")
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise errdefs.InvalidParameter(f"checkpoint archive: unsupported member type of {name!r}")
            member.mode &= 0o7777 & ~0o6000  # no setuid/setgid from an archive
            if _HAS_FILTERS:  # our checks above are the filter; keep tarfile from adding its own
                tar.extract(member, root, set_attrs=True, numeric_owner=True, filter="fully_trusted")
            else:
                tar.extract(member, root, set_attrs=True, numeric_owner=True)
            names.append(norm)
    return names

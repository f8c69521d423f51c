"""Images in containerd: the :class:`Image` handle, image records, pull and import.

This module owns what containerd's Go client does around an image record: resolving a
reference through a registry (:mod:`libcontainerd._registry`), picking the platform's manifest
from an index, fetching the blobs in parallel (a bounded pool) into the content store under a
lease with the garbage-collection labels Go sets (``containerd.io/gc.ref.content.m.<i>`` on an
index, ``.config`` and ``.l.<i>`` on a manifest, ``containerd.io/distribution.source.<host>``
on everything pulled), creating or updating the image record, and unpacking
(:mod:`._unpack`). Every containerd call goes through the connection; every registry request
through the registry client. Progress callbacks run on the pull's threads, one at a time.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import posixpath
import tarfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

from .. import errdefs
from .._api.containerd.api.services.images.v1 import images_pb2
from .._imagespec import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Reference,
    descriptor,
    diff_ids,
    host_platform,
    ingest_ref,
    manifest_parts,
    parse_json,
    parse_platform,
    select_manifest,
    sha256_digest,
)
from ..types import Descriptor, PullProgress
from . import _content, _unpack
from ._rpc import Connection

log = logging.getLogger("libcontainerd")

GC_REF_MANIFEST = "containerd.io/gc.ref.content.m.{}"
GC_REF_CONFIG = "containerd.io/gc.ref.content.config"
GC_REF_LAYER = "containerd.io/gc.ref.content.l.{}"
SOURCE_LABEL = "containerd.io/distribution.source.{}"
PULL_WORKERS = 3

ProgressCallback = Callable[[PullProgress], None]


def _desc(entry: tuple[str, str, int]) -> Descriptor:
    return Descriptor(media_type=entry[0], digest=entry[1], size=entry[2])


class Image:
    """An image of containerd's image store (one namespace), as :meth:`Client.pull` returns it.

    Attributes:
        name: the image name (``host/repo:tag``).
        target: the descriptor of its index or manifest.
        labels: the image record's labels.

    >>> img = client.pull("127.0.0.1:5000/busybox:latest", plain_http=True)  # doctest: +SKIP
    >>> img.config()["config"]["Cmd"]  # doctest: +SKIP
    ['sh']
    """

    def __init__(self, conn: Connection, name: str, target: Descriptor, labels: Mapping[str, str]) -> None:
        self._rpc = conn
        self.name = name
        self.target = target
        self.labels = dict(labels)

    def __repr__(self) -> str:
        return f"<Image {self.name} {self.target.digest[:19]}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and (self.name, self.target) == (other.name, other.target)

    def __hash__(self) -> int:
        return hash((self.name, self.target))

    # -- reading ---------------------------------------------------------------------

    def _what(self) -> str:
        return f"image {self.name}"

    def _manifest(self, platform: str | None = None) -> tuple[Descriptor, dict[str, Any]]:
        """The manifest for ``platform`` (default: this machine's), read from the content store."""
        what = self._what()
        desc = self.target
        doc = parse_json(_content.read(self._rpc, desc.digest, what), f"{what}: {desc.media_type}")
        if desc.media_type in INDEX_TYPES or (desc.media_type not in MANIFEST_TYPES and "manifests" in doc):
            try:
                entry = select_manifest(doc, platform or host_platform(), what)
                if platform is None and not _content.exists(self._rpc, entry["digest"]):
                    raise errdefs.NotFound(f"{what}: the manifest for {host_platform()} was not pulled")
            except errdefs.NotFound:
                present = None if platform is not None else self._first_present(doc)  # pulled for another one
                if present is None:
                    raise
                entry = present
            desc = _desc(descriptor(entry, what))
            doc = parse_json(_content.read(self._rpc, desc.digest, what), f"{what}: manifest {desc.digest}")
        return desc, doc

    def _first_present(self, index: dict[str, Any]) -> dict[str, Any] | None:
        for entry in index.get("manifests") or []:
            if (isinstance(entry, dict) and entry.get("mediaType") in MANIFEST_TYPES
                    and isinstance(entry.get("digest"), str) and _content.exists(self._rpc, entry["digest"])):
                return entry
        return None

    def _parts(self, platform: str | None = None) -> tuple[Descriptor, Descriptor, list[Descriptor], list[str]]:
        """(manifest, config, layers, diff ids) for ``platform``."""
        what = self._what()
        manifest, doc = self._manifest(platform)
        config, layers = manifest_parts(doc, what)
        config_doc = parse_json(_content.read(self._rpc, config[1], what), f"{what}: config")
        return manifest, _desc(config), [_desc(layer) for layer in layers], diff_ids(config_doc, what)

    def config(self) -> dict[str, Any]:
        """The image config (the OCI image config JSON) for this machine's platform (of an index
        pulled for another platform only: for the first platform whose manifest is in the store).

        >>> img.config()["config"].get("Entrypoint")  # doctest: +SKIP
        """
        _, doc = self._manifest()
        config, _ = manifest_parts(doc, self._what())
        return parse_json(_content.read(self._rpc, config[1], self._what()), f"{self._what()}: config")

    def size(self) -> int:
        """Bytes of its content for this machine's platform: index, manifest, config and layers.

        >>> img.size()  # doctest: +SKIP
        1056768
        """
        manifest, config, layers, _ = self._parts()
        total = manifest.size + config.size + sum(layer.size for layer in layers)
        return total + (self.target.size if self.target != manifest else 0)

    def read_file(self, path: str) -> bytes | None:
        """A small file of the image's root filesystem (e.g. ``/etc/passwd``), or ``None``.

        Read from the layers in the content store, top layer first (a whiteout hides it), so
        it works on an image that is not unpacked. Files larger than 16 MiB are refused.

        >>> img.read_file("/etc/os-release")  # doctest: +SKIP
        """
        if not isinstance(path, str) or not path.startswith("/"):
            raise errdefs.InvalidParameter(f"path must be absolute, not {path!r}")
        wanted = posixpath.normpath(path).lstrip("/")
        parent, base = posixpath.split(wanted)
        hiders = {posixpath.join(parent, ".wh." + base)}
        walk = parent
        while walk:  # an opaque marker or a whiteout of any parent directory hides it too
            hiders.add(posixpath.join(walk, ".wh..wh..opq"))
            up, name = posixpath.split(walk)
            hiders.add(posixpath.join(up, ".wh." + name))
            walk = up
        _, _, layers, _ = self._parts()
        for layer in reversed(layers):
            reader = _content.ChunkReader(_content.stream(self._rpc, layer.digest, self._what()))
            try:
                with tarfile.open(fileobj=reader, mode="r|*") as tar:
                    for member in tar:
                        name = posixpath.normpath(member.name.lstrip("/").removeprefix("./"))
                        if name in hiders:
                            return None
                        if name == wanted and member.isfile():
                            if member.size > 16 << 20:
                                raise errdefs.InvalidParameter(f"{self._what()}: {path} is larger than 16 MiB")
                            f = tar.extractfile(member)
                            return f.read() if f is not None else None
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise errdefs.DataLoss(f"{self._what()}: layer {layer.digest} is not a readable tar: {exc}") from exc
        return None

    def rootfs_chain_id(self) -> str:
        """The chain id of all its layers: the snapshot a container of it starts from."""
        _, _, _, ids = self._parts()
        top = _unpack.top_chain_id(ids)
        if top is None:
            raise errdefs.InvalidParameter(f"{self._what()} has no layers")
        return top

    def is_unpacked(self, snapshotter: str | None = None) -> bool:
        """True when its layers are unpacked in ``snapshotter`` (default ``overlayfs``).

        >>> img.is_unpacked()  # doctest: +SKIP
        True
        """
        return _unpack.snapshot_exists(self._rpc, _unpack.check_snapshotter(snapshotter), self.rootfs_chain_id())

    def unpack(self, snapshotter: str | None = None) -> None:
        """Apply its layers into ``snapshotter`` (default ``overlayfs``); what is there is skipped.

        Raises:
            errdefs.DataLoss: a layer does not unpack to the diff id its config names.

        >>> img.unpack("native")  # doctest: +SKIP
        """
        name = _unpack.check_snapshotter(snapshotter)
        _, config, layers, ids = self._parts()
        with _content.lease(self._rpc, "unpack") as lease_id:
            _unpack.unpack(self._rpc, layers, ids, config.digest, name, lease_id, self._what())


# -- image records ------------------------------------------------------------------------


def _from_record(conn: Connection, record: Any) -> Image:
    t = record.target
    return Image(conn, record.name, Descriptor(t.media_type, t.digest, int(t.size)), dict(record.labels))


def list_images(conn: Connection) -> list[Image]:
    """Every image of the namespace, sorted by name."""
    resp = conn.call(conn.images.List, images_pb2.ListImagesRequest(), "images")
    return sorted((_from_record(conn, r) for r in resp.images), key=lambda i: i.name)


def _candidates(name: str) -> list[str]:
    try:
        normalized = Reference.parse(name).name
    except errdefs.InvalidParameter:
        return [name]
    return [name] if normalized == name else [name, normalized]


def get_image(conn: Connection, name: object) -> Image:
    """The image of that name; a short name (``busybox``) also finds ``docker.io/library/busybox:latest``.

    Raises:
        errdefs.NotFound: no such image.
    """
    if not isinstance(name, str) or not name:
        raise errdefs.InvalidParameter(f"image name must be a non-empty string, not {name!r}")
    for candidate in _candidates(name):
        try:
            resp = conn.call(conn.images.Get, images_pb2.GetImageRequest(name=candidate), f"image {candidate}")
        except errdefs.NotFound:
            continue
        return _from_record(conn, resp.image)
    raise errdefs.NotFound(f"image {name}: not found")


def remove_image(conn: Connection, name: object, sync: bool = False) -> None:
    """Delete the image record (containerd's GC frees what nothing else uses; ``sync`` waits for it).

    Raises:
        errdefs.NotFound: no such image.
    """
    image = get_image(conn, name)
    conn.call(conn.images.Delete, images_pb2.DeleteImageRequest(name=image.name, sync=bool(sync)),
              f"image {image.name}")


def put_record(conn: Connection, name: str, target: Descriptor, lease_id: str,
               labels: Mapping[str, str] | None = None) -> Image:
    """Create the image record, or point an existing one of that name at ``target``."""
    record = images_pb2.Image(name=name, target=_content.descriptor_message(target), labels=dict(labels or {}))
    try:
        conn.call(conn.images.Create, images_pb2.CreateImageRequest(image=record), f"image {name}", lease=lease_id)
    except errdefs.Conflict:
        conn.call(conn.images.Update, images_pb2.UpdateImageRequest(image=record), f"image {name}", lease=lease_id)
    return Image(conn, name, target, labels or {})


# -- progress -----------------------------------------------------------------------------


class _Progress:
    """Delivers ``PullProgress`` values to the user's callback one at a time; a failing callback is
    logged once and ignored (the pull goes on)."""

    def __init__(self, ref: str, callback: ProgressCallback | None) -> None:
        if callback is not None and not callable(callback):
            raise errdefs.InvalidParameter(f"progress must be a callable taking a PullProgress, not {callback!r}")
        self._ref = ref
        self._callback = callback
        self._lock = threading.Lock()
        self._failed = False

    def reporter(self, desc: Descriptor) -> _content.Reporter | None:
        if self._callback is None:
            return None

        def report(offset: int, status: str) -> None:
            self.emit(desc, offset, status)

        return report

    def emit(self, desc: Descriptor, offset: int, status: str) -> None:
        if self._callback is None:
            return
        value = PullProgress(self._ref, desc.digest, desc.media_type, offset, desc.size, status)
        with self._lock:
            if self._failed:
                return
            try:
                self._callback(value)
            except Exception:
                self._failed = True
                log.exception("progress callback of %s failed; no more progress is reported", self._ref)


def fetch_all(conn: Connection, blobs: Iterable[tuple[Descriptor, _content.Opener, Mapping[str, str]]],
              lease_id: str, what: str, progress: _Progress) -> None:
    """Write the blobs in parallel (at most :data:`PULL_WORKERS` at once); the first failure cancels the rest.

    Raises:
        The first error (a ``DataLoss`` before any other), once every worker has stopped.
    """
    items = list(blobs)
    for desc, _, _ in items:
        progress.emit(desc, 0, "waiting")
    cancel = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(max_workers=PULL_WORKERS,
                                               thread_name_prefix="libcontainerd-pull") as pool:
        futures = [pool.submit(_content.write, conn, desc, ingest_ref(desc.media_type, desc.digest), opener,
                               lease_id=lease_id, labels=labels, what=what, report=progress.reporter(desc),
                               cancel=cancel) for desc, opener, labels in items]
        try:
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        finally:
            # After a failure (or Ctrl-C here) the other downloads stop at their next chunk; after
            # success every worker is done and this changes nothing.
            cancel.set()
            for future in futures:
                future.cancel()
    errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
    errors.sort(key=lambda e: (not isinstance(e, errdefs.DataLoss), isinstance(e, errdefs.Cancelled)))
    if errors:
        raise errors[0]  # type: ignore[misc]


# -- pull ---------------------------------------------------------------------------------


def pull(conn: Connection, ref: str, *, platform: str | None = None, unpack: bool = True,
         snapshotter: str | None = None, plain_http: bool = False, auth: tuple[str, str] | None = None,
         ca_file: str | None = None, progress: ProgressCallback | None = None) -> Image:
    """Pull ``ref`` from its registry into containerd (see :meth:`Client.pull`)."""
    from .._registry import Registry

    reference = Reference.parse(ref)
    platform = platform or host_platform()
    parse_platform(platform)
    snapshotter_name = _unpack.check_snapshotter(snapshotter)
    reporter = _Progress(reference.name, progress)
    registry = Registry(reference, plain_http=plain_http, auth=auth, ca_file=ca_file)
    what = f"image {reference.name}"
    source = {SOURCE_LABEL.format(reference.host): reference.repository}
    with _content.lease(conn, "pull") as lease_id:
        media_type, digest, data = registry.manifest(reference.object, reference.digest)
        doc = parse_json(data, f"{what}: manifest")
        if not media_type:  # neither Content-Type nor mediaType: OCI documents may omit the field
            media_type = MEDIA_OCI_INDEX if "manifests" in doc else MEDIA_OCI_MANIFEST
        top = Descriptor(media_type, digest, len(data))
        index_data: bytes | None = None
        if media_type in INDEX_TYPES or (media_type not in MANIFEST_TYPES and "manifests" in doc):
            index_data = data
            entry = select_manifest(doc, platform, what)
            manifest = _desc(descriptor(entry, what))
            _, _, data = registry.manifest(manifest.digest, manifest.digest)
            if len(data) != manifest.size:
                raise errdefs.DataLoss(f"{what}: manifest {manifest.digest} has {len(data)} bytes, the index says "
                                       f"{manifest.size}")
            doc = parse_json(data, f"{what}: manifest")
        elif media_type in MANIFEST_TYPES or "layers" in doc:
            manifest = top
        else:
            raise errdefs.InvalidParameter(f"{what}: unsupported manifest media type {media_type!r}")
        config_entry, layer_entries = manifest_parts(doc, what)
        config = _desc(config_entry)
        layers = [_desc(layer) for layer in layer_entries]

        def opener(digest: str) -> _content.Opener:
            return lambda offset: registry.blob(digest, offset)

        fetch_all(conn, [(config, opener(config.digest), source)]
                  + [(layer, opener(layer.digest), source) for layer in layers], lease_id, what, reporter)
        manifest_labels = {GC_REF_CONFIG: config.digest, **source,
                           **{GC_REF_LAYER.format(i): layer.digest for i, layer in enumerate(layers)}}
        _content.write_bytes(conn, manifest, ingest_ref(manifest.media_type, manifest.digest), data, lease_id=lease_id,
                             labels=manifest_labels, what=what, report=reporter.reporter(manifest))
        if index_data is not None:
            _content.write_bytes(conn, top, ingest_ref(top.media_type, top.digest), index_data, lease_id=lease_id,
                                 labels={GC_REF_MANIFEST.format(0): manifest.digest, **source}, what=what,
                                 report=reporter.reporter(top))
        config_doc = parse_json(_content.read(conn, config.digest, what), f"{what}: config")
        ids = diff_ids(config_doc, what)
        if unpack:
            _unpack.unpack(conn, layers, ids, config.digest, snapshotter_name, lease_id, what)
        return put_record(conn, reference.name, top, lease_id)


def label_tree(conn: Connection, target: Descriptor, platform: str, lease_id: str, what: str) -> None:
    """Set the GC labels Go's importer sets below ``target``: an index on its manifest for ``platform``
    (what other platforms' blobs the archive held is then left to the garbage collector), a manifest
    on its config and layers.
    """
    desc = target
    doc = parse_json(_content.read(conn, desc.digest, what), f"{what}: {desc.media_type or 'manifest'}")
    parents: list[tuple[Descriptor, dict[str, str]]] = []
    while desc.media_type in INDEX_TYPES or (desc.media_type not in MANIFEST_TYPES and "manifests" in doc):
        child = _desc(descriptor(select_manifest(doc, platform, what), what))
        parents.append((desc, {GC_REF_MANIFEST.format(0): child.digest}))
        desc = child
        doc = parse_json(_content.read(conn, desc.digest, what), f"{what}: manifest {desc.digest}")
    config, layers = manifest_parts(doc, what)
    parents.append((desc, {GC_REF_CONFIG: config[1],
                           **{GC_REF_LAYER.format(i): layer[1] for i, layer in enumerate(layers)}}))
    for parent, labels in parents:
        _content.set_labels(conn, parent.digest, labels, lease_id)


def import_archive(conn: Connection, archive: Any, *, unpack: bool = True, snapshotter: str | None = None,
                   progress: ProgressCallback | None = None) -> list[Image]:
    """Import a ``docker save`` or OCI layout archive (see :meth:`Client.import_images`)."""
    from .. import _archive

    snapshotter_name = _unpack.check_snapshotter(snapshotter)
    label = os.fspath(archive) if isinstance(archive, (str, os.PathLike)) else "archive"
    reporter = _Progress(str(label), progress)
    what = f"image archive {label}"

    class Store:
        def ingest(self, ref: str, size: int, chunks: Iterator[bytes], digest: str | None) -> str:
            if digest is None:
                digest = _content.write_unknown(conn, ref, size, chunks, lease_id=lease_id, what=what)
                reporter.emit(Descriptor("", digest, size), size, "done")
                return digest
            desc = Descriptor("", digest, size)
            _content.write(conn, desc, ref, lambda offset: (0, chunks), lease_id=lease_id, labels={}, what=what,
                           report=reporter.reporter(desc))
            return digest

        def put(self, media_type: str, data: bytes) -> Descriptor:
            desc = Descriptor(media_type, sha256_digest(data), len(data))
            _content.write_bytes(conn, desc, ingest_ref(media_type, desc.digest), data, lease_id=lease_id, labels={},
                                 what=what)
            return desc

    images: list[Image] = []
    with _content.lease(conn, "import") as lease_id:
        for name, target in _archive.import_stream(archive, Store()):
            label_tree(conn, target, host_platform(), lease_id, f"image {name}")
            image = put_record(conn, name, target, lease_id)
            if unpack:
                _, config, layers, ids = image._parts()
                _unpack.unpack(conn, layers, ids, config.digest, snapshotter_name, lease_id, f"image {name}")
            images.append(image)
    return images


class ContainerSnapshot:
    """The snapshot a new container of an image runs on (key = the container id), under a lease
    until the container record that references it exists (as Go's ``NewContainer`` does)."""

    def __init__(self, conn: Connection, key: str, image: Image, snapshotter: str, lease: _content.Lease) -> None:
        self._rpc = conn
        self.key = key
        self.image = image
        self.snapshotter = snapshotter
        self._lease = lease

    @classmethod
    def prepare(cls, conn: Connection, key: str, image: object, snapshotter: str | None) -> ContainerSnapshot:
        """Resolve the image (unpacking it if needed) and prepare the snapshot.

        Raises:
            errdefs.NotFound: no such image (nothing was made).
            errdefs.Conflict: a snapshot of that key exists.
        """
        name = _unpack.check_snapshotter(snapshotter)
        img = image if isinstance(image, Image) else get_image(conn, image)
        parent = img.rootfs_chain_id()
        lease = _content.lease(conn, "container")
        try:
            if not _unpack.snapshot_exists(conn, name, parent):
                _, config, layers, ids = img._parts()
                _unpack.unpack(conn, layers, ids, config.digest, name, lease.id, f"image {img.name}")
            _unpack.prepare(conn, name, key, parent, lease.id, f"container {key}")
        except BaseException:
            lease.delete(sync=True)
            raise
        return cls(conn, key, img, name, lease)

    def discard(self) -> None:
        """The container was not made: remove the snapshot and end the lease."""
        _unpack.remove(self._rpc, self.snapshotter, self.key)
        self._lease.delete(sync=True)

    def release(self) -> None:
        """The container record holds the snapshot from now on: end the lease."""
        self._lease.delete()

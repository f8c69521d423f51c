"""Image archives: ``docker save`` tars and OCI image layouts, read as one stream.

This module owns the archive formats, as containerd's importer (``images/archive/importer.go``)
reads them: every regular file of the tar is streamed into the content store as it comes (a
file under ``blobs/<alg>/<hex>`` with its digest known, any other with the digest computed on
the way), small JSON files are also kept in memory; at the end, an ``oci-layout`` file means an
OCI layout (the images are the entries of ``index.json``), else ``manifest.json`` means a
``docker save`` archive of the old kind (dockerd 20.10: ``<id>/layer.tar``, ``<config>.json``),
for which a Docker schema 2 manifest is written per image, byte for byte as containerd's Go
importer writes it (so both clients give the same digests). dockerd >= 25 writes an OCI layout
with a ``manifest.json`` beside it: the layout wins, as in Go.

Names are those ``ctr images import`` gives: ``io.containerd.image.name`` of an index entry, else
its ``org.opencontainers.image.ref.name`` (a bare tag becomes ``import-<YYYY-MM-DD>:<tag>``);
a ``docker save`` ``RepoTags`` entry normalised (``busybox:latest`` ->
``docker.io/library/busybox:latest``). The archive is never read whole into memory; nothing
here talks to containerd but through the :class:`Store` it is given.
"""

from __future__ import annotations

import datetime
import json
import os
import posixpath
import tarfile
from collections.abc import Iterator, Mapping
from typing import IO, Any, Protocol

from . import errdefs
from ._imagespec import (
    MEDIA_DOCKER_CONFIG,
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_MANIFEST,
    Reference,
    check_digest,
    descriptor,
    parse_json,
)
from .types import Descriptor

MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
_JSON_LIMIT = 20 << 20
_CHUNK = 1 << 20


class Store(Protocol):
    """Where the archive's blobs go (the content store, under the import's lease)."""

    def ingest(self, ref: str, size: int, chunks: Iterator[bytes], digest: str | None) -> str:
        """Store a blob of ``size`` bytes (verified against ``digest`` when known); return its digest."""

    def put(self, media_type: str, data: bytes) -> Descriptor:
        """Store a document made here (a generated manifest) and return its descriptor."""


class _Chunks:
    """The chunks of one tar member, with its first bytes kept (to tell a gzip layer from a tar)."""

    def __init__(self, member: IO[bytes], size: int) -> None:
        self._member = member
        self.left = size
        self.head = b""

    def __iter__(self) -> Iterator[bytes]:
        while self.left > 0:
            chunk = self._member.read(min(_CHUNK, self.left))
            if not chunk:
                raise errdefs.DataLoss("the archive ends inside a file")
            self.left -= len(chunk)
            if len(self.head) < 4:
                self.head += chunk[:4 - len(self.head)]
            yield chunk


def _open(archive: str | os.PathLike[str] | IO[bytes]) -> tarfile.TarFile:
    try:
        if isinstance(archive, (str, os.PathLike)):
            return tarfile.open(os.fspath(archive), mode="r|*")
        if hasattr(archive, "read"):
            return tarfile.open(fileobj=archive, mode="r|*")
    except FileNotFoundError as exc:
        raise errdefs.NotFound(f"image archive {archive}: no such file") from exc
    except (OSError, tarfile.TarError) as exc:
        raise errdefs.InvalidParameter(f"image archive {archive!r} cannot be read as a tar: {exc}") from exc
    raise errdefs.InvalidParameter(f"archive must be a path or a binary file object, not {archive!r}")


def import_stream(archive: str | os.PathLike[str] | IO[bytes], store: Store) -> list[tuple[str, Descriptor]]:
    """Stream the archive into ``store``; return ``(image name, target descriptor)`` pairs.

    Raises:
        errdefs.InvalidParameter: not a tar, or neither an OCI layout nor a ``docker save`` archive.
        errdefs.DataLoss: a blob does not match its digest, or a document is malformed.
    """
    what = f"image archive {archive}" if isinstance(archive, (str, os.PathLike)) else "image archive"
    blobs: dict[str, Descriptor] = {}
    heads: dict[str, bytes] = {}
    docs: dict[str, bytes] = {}
    symlinks: dict[str, str] = {}
    layout: dict[str, Any] | None = None
    manifests: list[Any] | None = None
    with _open(archive) as tar:
        try:
            for member in tar:
                name = posixpath.normpath(member.name.lstrip("/"))
                if member.issym():
                    symlinks[name] = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
                if not member.isfile():
                    continue
                fileobj = tar.extractfile(member)
                if fileobj is None:
                    continue
                if name == "oci-layout":
                    layout = parse_json(fileobj.read(_JSON_LIMIT), f"{what}: oci-layout")
                    continue
                if name == "manifest.json":
                    doc = json.loads(fileobj.read(_JSON_LIMIT))
                    if not isinstance(doc, list):
                        raise errdefs.DataLoss(f"{what}: manifest.json is not a list")
                    manifests = doc
                    continue
                known = _layout_digest(name)
                chunks = _Chunks(fileobj, member.size)
                keep = name.endswith(".json") and member.size <= _JSON_LIMIT
                if keep:
                    data = b"".join(chunks)
                    docs[name] = data
                    digest = store.ingest(f"tar-{name}", member.size, iter((data,)), known)
                else:
                    digest = store.ingest(f"tar-{name}", member.size, iter(chunks), known)
                blobs[name] = Descriptor("", digest, member.size)
                heads[digest] = chunks.head
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise errdefs.InvalidParameter(f"{what}: cannot be read as a tar: {exc}") from exc
        except ValueError as exc:
            raise errdefs.DataLoss(f"{what}: malformed JSON: {exc}") from exc
    if layout is not None:
        return _oci_images(what, layout, docs, blobs)
    if manifests is not None:
        for link, target in symlinks.items():
            if target in blobs:
                blobs[link] = blobs[target]
        return _docker_images(what, manifests, blobs, heads, store)
    raise errdefs.InvalidParameter(f"{what}: neither an OCI image layout (oci-layout) nor a docker save archive "
                                   "(manifest.json)")


def _layout_digest(name: str) -> str | None:
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs" and parts[1] == "sha256":
        return check_digest(f"sha256:{parts[2]}", name)
    return None


def _oci_images(what: str, layout: Mapping[str, Any], docs: Mapping[str, bytes],
                blobs: Mapping[str, Descriptor]) -> list[tuple[str, Descriptor]]:
    if layout.get("imageLayoutVersion") != "1.0.0":
        raise errdefs.InvalidParameter(f"{what}: unsupported OCI layout version {layout.get('imageLayoutVersion')!r}")
    if "index.json" not in docs:
        raise errdefs.InvalidParameter(f"{what}: the OCI layout has no index.json")
    index = parse_json(docs["index.json"], f"{what}: index.json")
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise errdefs.DataLoss(f"{what}: index.json has no manifests list")
    prefix = f"import-{datetime.date.today():%Y-%m-%d}"
    out = []
    for entry in entries:
        media_type, digest, size = descriptor(entry, what)
        annotations = entry.get("annotations") or {}
        name = annotations.get(ANNOTATION_IMAGE_NAME) or ""
        if not name and annotations.get(ANNOTATION_REF_NAME):
            ref = str(annotations[ANNOTATION_REF_NAME])
            name = ref if any(c in ref for c in "/:@") else f"{prefix}:{ref}"
        if not name:
            continue
        if f"blobs/{digest.replace(':', '/')}" not in blobs:
            raise errdefs.DataLoss(f"{what}: index.json names {digest}, which the archive lacks")
        out.append((name, Descriptor(media_type, digest, size)))
    return out


def _docker_images(what: str, manifests: list[Any], blobs: Mapping[str, Descriptor], heads: Mapping[str, bytes],
                   store: Store) -> list[tuple[str, Descriptor]]:
    out = []
    for entry in manifests:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise errdefs.DataLoss(f"{what}: a manifest.json entry has no Config")
        config_name = posixpath.normpath(entry["Config"])
        if config_name not in blobs:
            raise errdefs.DataLoss(f"{what}: image config {entry['Config']!r} not found")
        config = blobs[config_name]
        layers = []
        for layer_name in entry.get("Layers") or []:
            blob = blobs.get(posixpath.normpath(str(layer_name)))
            if blob is None:
                raise errdefs.DataLoss(f"{what}: layer {layer_name!r} not found")
            gzip = heads.get(blob.digest, b"")[:2] == b"\x1f\x8b"
            layers.append({"mediaType": MEDIA_DOCKER_LAYER_GZIP if gzip else MEDIA_DOCKER_LAYER,
                           "digest": blob.digest, "size": blob.size})
        # containerd's Go importer marshals this struct: field order and compact separators as Go's json.
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
                    "config": {"mediaType": MEDIA_DOCKER_CONFIG, "digest": config.digest, "size": config.size},
                    "layers": layers}
        target = store.put(MEDIA_DOCKER_MANIFEST, json.dumps(manifest, separators=(",", ":")).encode())
        for tag in entry.get("RepoTags") or []:
            out.append((Reference.parse(str(tag)).name, target))
    return out


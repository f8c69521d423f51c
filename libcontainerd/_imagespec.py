"""Image formats: references, media types, manifests and indexes, platforms, chain ids.

This module owns the pure facts of the OCI image spec and Docker's image formats that the
pull, the import and the unpack share: how a reference names a repository, which media type
is an index or a manifest, how a manifest is picked from an index for a platform, and how a
chain id is computed. It must not do I/O (no HTTP, no gRPC, no files): every function here is
checked by unit tests with literal documents.

Facts it is built on:
- a reference without a registry host means Docker Hub (``docker.io/library/<name>`` for a
  single-component name) and a reference without a tag means ``:latest``; the first component
  is a host when it has a ``.`` or a ``:`` or is ``localhost`` (docker/distribution's reference);
- the chain id of layers ``L1..Ln`` with diff ids ``D1..Dn`` is ``D1`` for one layer and
  ``sha256(ChainID(n-1) + " " + Dn)`` after that (the OCI image spec, "Layer ChainID");
- containerd's Go client names an ingest after the descriptor's kind (``remotes.MakeRefKey``:
  ``manifest-``, ``index-``, ``layer-``, ``config-``), so an interrupted pull by either client
  resumes the other's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from . import errdefs

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({MEDIA_OCI_CONFIG, MEDIA_DOCKER_CONFIG})
#: What a registry is asked for a manifest, most specific first.
MANIFEST_ACCEPT = ", ".join([MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST, "*/*"])

DOCKER_HUB = "docker.io"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_HOST_RE = re.compile(r"^(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")


@attrs.frozen
class Reference:
    """A parsed image reference: registry host, repository, tag and/or digest.

    >>> r = Reference.parse("busybox")
    >>> r.host, r.repository, r.tag, r.name
    ('docker.io', 'library/busybox', 'latest', 'docker.io/library/busybox:latest')
    >>> Reference.parse("127.0.0.1:5000/tools/bb@sha256:" + "a" * 64).object == "sha256:" + "a" * 64
    True
    """

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: object) -> Reference:
        """Parse ``[host[:port]/]repo[:tag][@sha256:...]``.

        Raises:
            errdefs.InvalidParameter: not a valid reference (the message quotes it).
        """
        if not isinstance(ref, str) or not ref:
            raise errdefs.InvalidParameter(f"image reference must be a non-empty string, not {ref!r}")
        rest, digest = ref, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST_RE.match(digest):
                raise errdefs.InvalidParameter(f"image reference {ref!r}: {digest!r} is not a sha256 digest")
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            host, path = first, remainder
            if not _HOST_RE.match(host):
                raise errdefs.InvalidParameter(f"image reference {ref!r}: {host!r} is not a registry host")
        else:
            host, path = DOCKER_HUB, rest
        tag = None
        last_slash = path.rfind("/")
        colon = path.rfind(":")
        if colon > last_slash:
            path, tag = path[:colon], path[colon + 1:]
            if not _TAG_RE.match(tag):
                raise errdefs.InvalidParameter(f"image reference {ref!r}: {tag!r} is not a valid tag")
        if host == DOCKER_HUB and "/" not in path:
            path = "library/" + path
        if not _REPO_RE.match(path):
            raise errdefs.InvalidParameter(
                f"image reference {ref!r}: {path!r} is not a valid repository (lower case letters, digits, "
                "separators)")
        if tag is None and digest is None:
            tag = "latest"
        return cls(host=host, repository=path, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """The image name containerd's Go client stores (``host/repo:tag``, ``host/repo@digest``,
        or ``host/repo:tag@digest``)."""
        out = f"{self.host}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def object(self) -> str:
        """What the registry's manifest endpoint is asked for: the digest if any, else the tag."""
        return self.digest or self.tag or "latest"


def check_digest(digest: object, what: str) -> str:
    """A ``sha256:<64 hex>`` digest, or ``errdefs.DataLoss`` naming ``what``."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise errdefs.DataLoss(f"{what}: {digest!r} is not a sha256 digest")
    return digest


def sha256_digest(data: bytes) -> str:
    """The ``sha256:`` digest of ``data``.

    >>> sha256_digest(b"")
    'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain id of each prefix of ``diff_ids`` (OCI image spec).

    >>> a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    >>> ids = chain_ids([a, b])
    >>> ids[0] == a, ids[1] == sha256_digest(f"{a} {b}".encode())
    (True, True)
    """
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


def ingest_ref(media_type: str, digest: str) -> str:
    """The ingest ref containerd's Go client uses for a descriptor (``remotes.MakeRefKey``).

    >>> ingest_ref(MEDIA_DOCKER_LAYER_GZIP, "sha256:ab")
    'layer-sha256:ab'
    """
    if media_type in MANIFEST_TYPES:
        kind = "manifest"
    elif media_type in INDEX_TYPES:
        kind = "index"
    elif media_type in CONFIG_TYPES:
        kind = "config"
    elif "layer" in media_type or "rootfs.diff" in media_type:
        kind = "layer"
    else:
        kind = "unknown"
    return f"{kind}-{digest}"


def host_platform() -> str:
    """This machine's platform as ``os/arch[/variant]`` (Go's names).

    >>> host_platform().startswith("linux/")
    True
    """
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7", "armv6l": "arm/v6", "i686": "386",
            "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)
    return f"linux/{arch}"


def parse_platform(platform: object) -> tuple[str, str, str]:
    """``"os/arch[/variant]"`` as a tuple; ``arm64`` means variant ``v8``.

    >>> parse_platform("linux/arm64")
    ('linux', 'arm64', 'v8')

    Raises:
        errdefs.InvalidParameter: not of that form.
    """
    if not isinstance(platform, str) or not re.fullmatch(r"[a-z0-9_]+/[a-z0-9_]+(/[a-z0-9_]+)?", platform):
        raise errdefs.InvalidParameter(f"platform must look like 'linux/amd64' or 'linux/arm/v7', not {platform!r}")
    parts = platform.split("/")
    os_, arch = parts[0], parts[1]
    variant = parts[2] if len(parts) == 3 else ("v8" if arch == "arm64" else "")
    return os_, arch, variant


def _matches(entry: Mapping[str, Any], want: tuple[str, str, str]) -> bool:
    plat = entry.get("platform")
    if not isinstance(plat, Mapping):
        return False
    variant = plat.get("variant") or ("v8" if plat.get("architecture") == "arm64" else "")
    if (plat.get("os"), plat.get("architecture")) != want[:2]:
        return False
    return not want[2] or variant == want[2]


def select_manifest(index: Mapping[str, Any], platform: str, what: str) -> dict[str, Any]:
    """The index entry (a descriptor dict) of the manifest for ``platform``.

    Raises:
        errdefs.NotFound: the index has no manifest for that platform (the message lists those it has).
        errdefs.DataLoss: the index is malformed.
    """
    want = parse_platform(platform)
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise errdefs.DataLoss(f"{what}: the index has no 'manifests' list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("mediaType") in MANIFEST_TYPES and _matches(entry, want):
            return entry
    have = sorted({"/".join(filter(None, (e.get("platform", {}).get("os"), e.get("platform", {}).get("architecture"),
                                          e.get("platform", {}).get("variant"))))
                   for e in entries if isinstance(e, dict) and isinstance(e.get("platform"), dict)})
    raise errdefs.NotFound(f"{what}: no manifest for platform {platform} (the index has {', '.join(have) or 'none'})")


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object, or ``errdefs.DataLoss`` naming ``what``."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errdefs.DataLoss(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise errdefs.DataLoss(f"{what} is not a JSON object")
    return doc


def descriptor(entry: object, what: str) -> tuple[str, str, int]:
    """``(media_type, digest, size)`` of a descriptor dict, checked.

    Raises:
        errdefs.DataLoss: a missing or malformed field.
    """
    if not isinstance(entry, Mapping):
        raise errdefs.DataLoss(f"{what}: a descriptor is not an object")
    media_type, size = entry.get("mediaType"), entry.get("size")
    digest = check_digest(entry.get("digest"), what)
    if not isinstance(media_type, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise errdefs.DataLoss(f"{what}: descriptor {digest} lacks a media type or a size")
    return media_type, digest, size


def manifest_parts(manifest: Mapping[str, Any], what: str) -> tuple[tuple[str, str, int], list[tuple[str, str, int]]]:
    """The config descriptor and the layer descriptors of an image manifest.

    Raises:
        errdefs.DataLoss: the manifest is malformed.
    """
    if manifest.get("schemaVersion") != 2:
        raise errdefs.DataLoss(f"{what}: unsupported manifest schema version {manifest.get('schemaVersion')!r}")
    config = descriptor(manifest.get("config"), what)
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise errdefs.DataLoss(f"{what}: the manifest has no 'layers' list")
    return config, [descriptor(layer, what) for layer in layers]


def diff_ids(config: Mapping[str, Any], what: str) -> list[str]:
    """The config's ``rootfs.diff_ids``, checked.

    Raises:
        errdefs.DataLoss: missing or malformed.
    """
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    if not isinstance(ids, list):
        raise errdefs.DataLoss(f"{what}: the image config has no rootfs.diff_ids")
    return [check_digest(d, what) for d in ids]

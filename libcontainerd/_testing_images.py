"""Test images and a real local registry, for the image tests, the demo and the benchmarks.

This module owns what those need around images and nothing the SDK itself uses: it builds
images from the busybox root filesystem of :func:`libcontainerd.testing.busybox_rootfs` as an
OCI image layout directory or a ``docker save`` archive (deterministic bytes, so the same
content has the same digests; a ``salt`` makes digests no containerd has seen yet), and it runs
Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1 in four flavours over one storage
directory: plain http without auth, htpasswd basic auth, bearer tokens from a token realm served
here (RS256 JWTs signed with ``openssl``, the certificate in the token's ``x5c``), and TLS with
a test CA made here. ``skopeo`` pushes into the plain one. Each registry's log is kept so a
test can count the blob requests it served. Nothing here runs outside a temp dir it was given.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import gzip
import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
USER, PASSWORD = "lcd-user", "lcd-secret-password"
SERVICE, ISSUER = "lcd-test-registry", "lcd-test-issuer"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _info(name: str, *, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE, link: str = "",
          uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.linkname, info.uid, info.gid, info.mtime = size, mode, kind, link, uid, gid, 0
    return info


def tar_of(entries: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A deterministic tar of the given members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def rootfs_tar(rootfs: str, extra: Mapping[str, bytes] = {}) -> bytes:
    """A deterministic tar of a directory tree (owners and modes kept, mtimes 0), plus ``extra`` files."""
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, rootfs)
        for name in [*dirnames, *sorted(filenames)]:
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            if os.path.islink(path):
                entries.append((_info(rel, kind=tarfile.SYMTYPE, link=os.readlink(path), mode=0o777), None))
            elif os.path.isdir(path):
                entries.append((_info(rel, kind=tarfile.DIRTYPE, mode=st.st_mode & 0o7777, uid=st.st_uid,
                                      gid=st.st_gid), None))
            else:
                with open(path, "rb") as f:
                    data = f.read()
                entries.append((_info(rel, size=len(data), mode=st.st_mode & 0o7777), data))
    for name, data in extra.items():
        entries.append((_info(name, size=len(data)), data))
    return tar_of(entries)


def gz(data: bytes) -> bytes:
    """Deterministic gzip (mtime 0)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as f:
        f.write(data)
    return buf.getvalue()


@attrs.frozen
class TestImage:
    """What :func:`build_layout` wrote: the layout dir, its top descriptor and its layers' diff ids."""

    layout: str
    target_digest: str
    manifest_digest: str
    layer_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]


def image_layers(rootfs: str, salt: str = "") -> list[bytes]:
    """The two uncompressed layers of the standard test image.

    Layer 1 is the busybox rootfs plus ``/etc/doomed``, ``/data/keep`` and ``/etc/lower-salt``;
    layer 2 deletes ``/etc/doomed`` (a whiteout), adds ``/hello.txt`` and ``/etc/salt``. Both
    hold ``salt``, so a new salt gives layers no containerd has seen.
    """
    lower = rootfs_tar(rootfs, {"etc/doomed": b"lower layer file\n", "data/keep": b"kept\n",
                                "etc/lower-salt": salt.encode()})
    upper = tar_of([
        (_info("etc", kind=tarfile.DIRTYPE, mode=0o755), None),
        (_info("etc/.wh.doomed"), b""),
        (_info("etc/salt", size=len(salt.encode())), salt.encode()),
        (_info("hello.txt", size=len(b"hello from the upper layer\n")), b"hello from the upper layer\n"),
    ])
    return [lower, upper]


def build_layout(dest: str, layers: Sequence[bytes], *, config: Mapping[str, Any] | None = None,
                 compress: bool = True, tag: str = "latest", extra_platforms: Sequence[str] = (),
                 ) -> TestImage:
    """Write an OCI image layout directory at ``dest`` for linux/amd64 (this machine), with ``layers``.

    ``extra_platforms`` (``"linux/arm64"``...) makes the top an index with one more manifest per
    platform, each with a small layer holding ``/platform`` (never run here).
    """
    os.makedirs(os.path.join(dest, "blobs", "sha256"), exist_ok=True)

    def put(data: bytes) -> str:
        digest = _sha(data)
        with open(os.path.join(dest, "blobs", "sha256", digest[7:]), "wb") as f:
            f.write(data)
        return digest

    def manifest_for(platform: str, layer_tars: Sequence[bytes]) -> tuple[dict[str, Any], list[str], list[str]]:
        os_, arch = platform.split("/")[:2]
        cfg = {"architecture": arch, "os": os_,
               "config": dict(config or {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}),
               "rootfs": {"type": "layers", "diff_ids": [_sha(t) for t in layer_tars]}, "history": []}
        cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
        blobs = [gz(t) if compress else t for t in layer_tars]
        digests = [put(b) for b in blobs]
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                    "config": {"mediaType": MEDIA_CONFIG, "digest": put(cfg_bytes), "size": len(cfg_bytes)},
                    "layers": [{"mediaType": MEDIA_LAYER_GZIP if compress else MEDIA_LAYER, "digest": d,
                                "size": len(b)} for d, b in zip(digests, blobs)]}
        data = json.dumps(manifest).encode()
        desc = {"mediaType": MEDIA_MANIFEST, "digest": put(data), "size": len(data),
                "platform": {"architecture": arch, "os": os_}}
        return desc, digests, [_sha(t) for t in layer_tars]

    main, digests, diff_ids = manifest_for("linux/amd64", layers)
    top = main
    if extra_platforms:
        entries = [main] + [manifest_for(p, [tar_of([(_info("platform", size=len(p)), p.encode())])])[0]
                            for p in extra_platforms]
        data = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}).encode()
        top = {"mediaType": MEDIA_INDEX, "digest": put(data), "size": len(data)}
    with open(os.path.join(dest, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    entry = {k: v for k, v in top.items() if k != "platform"}
    entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    with open(os.path.join(dest, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [entry]}, f)
    return TestImage(dest, top["digest"], main["digest"], tuple(digests), tuple(diff_ids))


def build_big_layout(dest: str, size: int, salt: str) -> TestImage:
    """An OCI layout of one uncompressed layer holding ``/salt`` and a ``size``-byte ``/big`` file of
    zeros, written to disk as it is made (never whole in memory)."""
    blobs = os.path.join(dest, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    tmp = os.path.join(dest, "layer.tmp")
    hasher = hashlib.sha256()
    with open(tmp, "wb") as raw:
        class Hashing(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, b: Any) -> int:
                hasher.update(b)
                return raw.write(b)

        with tarfile.open(fileobj=Hashing(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info("salt", size=len(salt)), io.BytesIO(salt.encode()))
            zeros = _Zeros(size)
            tar.addfile(_info("big", size=size), zeros)
    layer_digest = "sha256:" + hasher.hexdigest()
    layer_size = os.path.getsize(tmp)
    os.rename(tmp, os.path.join(blobs, layer_digest[7:]))

    def put(data: bytes) -> str:
        digest = _sha(data)
        with open(os.path.join(blobs, digest[7:]), "wb") as f:
            f.write(data)
        return digest

    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/big"]},
                      "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                           "config": {"mediaType": MEDIA_CONFIG, "digest": put(cfg), "size": len(cfg)},
                           "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest,
                                       "size": layer_size}]}).encode()
    manifest_digest = put(manifest)
    with open(os.path.join(dest, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(dest, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": manifest_digest,
                                                      "size": len(manifest),
                                                      "annotations": {"org.opencontainers.image.ref.name": "big"}}]},
                  f)
    return TestImage(dest, manifest_digest, manifest_digest, (layer_digest,), (layer_digest,))


class _Zeros:
    """A file-like source of ``size`` zero bytes."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def write_docker_save(path: str, layers: Sequence[bytes], repo_tags: Sequence[str], *,
                      config: Mapping[str, Any] | None = None, oci_layout: bool = False) -> str:
    """Write a ``docker save`` archive; return the config digest.

    As dockerd 20.10 writes it (``<id>/layer.tar``, ``<hex>.json``, ``manifest.json``), or with
    ``oci_layout`` as dockerd 25 and later do: an OCI layout (``oci-layout``, ``index.json`` whose
    entries carry ``io.containerd.image.name``, ``blobs/sha256/…`` with uncompressed layers) and a
    ``manifest.json`` beside it that points into ``blobs/``.
    """
    cfg = {"architecture": "amd64", "os": "linux",
           "config": dict(config or {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}),
           "rootfs": {"type": "layers", "diff_ids": [_sha(t) for t in layers]}, "history": []}
    cfg_bytes = json.dumps(cfg).encode()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    layer_names = []
    if oci_layout:
        def blob(data: bytes) -> str:
            name = "blobs/sha256/" + _sha(data)[7:]
            entries.append((_info(name, size=len(data)), data))
            return name

        entries += [(_info("blobs", kind=tarfile.DIRTYPE, mode=0o755), None),
                    (_info("blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755), None)]
        cfg_name = blob(cfg_bytes)
        layer_names = [blob(layer) for layer in layers]
        manifest_doc = json.dumps({
            "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": _sha(cfg_bytes), "size": len(cfg_bytes)},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": _sha(t), "size": len(t)} for t in layers]}).encode()
        blob(manifest_doc)
        index = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [
            {"mediaType": MEDIA_MANIFEST, "digest": _sha(manifest_doc), "size": len(manifest_doc),
             "annotations": {"io.containerd.image.name": _normalized(tag),
                             "org.opencontainers.image.ref.name": tag.rpartition(":")[2]}}
            for tag in repo_tags]}).encode()
        layout = b'{"imageLayoutVersion":"1.0.0"}'
        entries += [(_info("index.json", size=len(index)), index), (_info("oci-layout", size=len(layout)), layout)]
    else:
        cfg_name = _sha(cfg_bytes)[7:] + ".json"
        for layer in layers:
            layer_id = hashlib.sha256(b"id" + layer).hexdigest()
            layer_names.append(f"{layer_id}/layer.tar")
            entries += [(_info(layer_id, kind=tarfile.DIRTYPE, mode=0o755), None),
                        (_info(f"{layer_id}/VERSION", size=3), b"1.0"),
                        (_info(f"{layer_id}/json", size=2), b"{}"),
                        (_info(f"{layer_id}/layer.tar", size=len(layer)), layer)]
        entries.append((_info(cfg_name, size=len(cfg_bytes)), cfg_bytes))
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": list(repo_tags), "Layers": layer_names}]).encode()
    entries.append((_info("manifest.json", size=len(manifest)), manifest))
    with open(path, "wb") as f:
        f.write(tar_of(entries))
    return _sha(cfg_bytes)


def _normalized(tag: str) -> str:
    from libcontainerd._imagespec import Reference

    return Reference.parse(tag).name


def oci_archive(layout: str, path: str) -> None:
    """Tar an OCI layout directory into an archive (what ``skopeo copy ... oci-archive:`` writes)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(os.path.join(layout, name), arcname=name)


# -- the registry ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _bcrypt(password: str) -> str:
    """A bcrypt hash (what the registry's htpasswd auth needs), from libxcrypt through ctypes: Python's
    own ``crypt`` module is deprecated and gone in 3.13, and Debian's libcrypt knows bcrypt."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", 10, None, 0)
    hashed = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2"):
        raise RuntimeError("this libcrypt cannot make bcrypt hashes (the registry's htpasswd needs them)")
    return str(hashed.decode())


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    server: _TokenServer

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        auth = self.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.server.requests.append({"path": self.path, "authorized": auth == expected})
        if auth != expected:
            self.send_response(401)
            self.end_headers()
            return
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        body = json.dumps({"token": self.server.sign(access), "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TokenServer(http.server.ThreadingHTTPServer):
    def __init__(self, directory: str) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.directory = directory
        self.requests: list[dict[str, Any]] = []
        with open(os.path.join(directory, "token.pem"), "rb") as f:
            pem = f.read().decode()
        der = base64.b64decode("".join(line for line in pem.splitlines() if "-----" not in line))
        self._x5c = base64.b64encode(der).decode()

    def sign(self, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", os.path.join(self.directory, "token.key")],
                                   input=signing_input.encode(), capture_output=True, check=True).stdout
        return f"{signing_input}.{_b64url(signature)}"


@attrs.define
class RegistryProcess:
    """One ``docker-registry`` process: its address (``127.0.0.1:port``) and log file."""

    kind: str
    address: str
    log_path: str
    process: subprocess.Popen[bytes]

    def blob_gets(self) -> list[str]:
        """The blob GETs it has answered with a body so far (URIs), from its log."""
        out = []
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if (entry.get("msg") == "response completed" and entry.get("http.request.method") == "GET"
                            and "/blobs/" in entry.get("http.request.uri", "")
                            and int(entry.get("http.response.written", 0)) > 0):
                        out.append(entry["http.request.uri"])
        return out


class Registries:
    """Four registries over one storage dir: ``plain``, ``basic``, ``token``, ``tls`` (see the module doc).

    >>> with Registries(tmpdir) as regs:  # doctest: +SKIP
    ...     regs.push_layout(layout, "busybox:latest")
    ...     client.pull(f"{regs.plain.address}/busybox:latest", plain_http=True)
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.storage = os.path.join(directory, "storage")
        os.makedirs(self.storage, exist_ok=True)
        self._token_server: _TokenServer | None = None
        self._token_thread: threading.Thread | None = None
        self._procs: dict[str, RegistryProcess] = {}
        self.ca_file = os.path.join(directory, "ca.pem")

    def __enter__(self) -> Registries:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        d = self.directory
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                 "-subj", "/CN=libcontainerd test CA", cwd=d)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                 "-subj", "/CN=127.0.0.1", cwd=d)
        with open(os.path.join(d, "san.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "token.key", "-out", "token.pem",
                 "-days", "2", "-subj", "/CN=libcontainerd test token issuer", cwd=d)
        with open(os.path.join(d, "htpasswd"), "w") as f:
            f.write(f"{USER}:{_bcrypt(PASSWORD)}\n")
        self._token_server = _TokenServer(d)
        self._token_thread = threading.Thread(target=self._token_server.serve_forever, name="lcd-test-token-realm",
                                              daemon=True)
        self._token_thread.start()
        realm = f"http://127.0.0.1:{self._token_server.server_address[1]}/token"
        auths: dict[str, dict[str, Any]] = {
            "plain": {},
            "basic": {"auth": {"htpasswd": {"realm": "lcd-basic", "path": os.path.join(d, "htpasswd")}}},
            "token": {"auth": {"token": {"realm": realm, "service": SERVICE, "issuer": ISSUER,
                                         "rootcertbundle": os.path.join(d, "token.pem")}}},
            "tls": {"tls": True},
        }
        for kind, extra in auths.items():
            self._procs[kind] = self._start_one(kind, extra)

    def _start_one(self, kind: str, extra: Mapping[str, Any]) -> RegistryProcess:
        port = _free_port()
        http_cfg: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": "lcd-test-secret"}
        if extra.get("tls"):
            http_cfg["tls"] = {"certificate": os.path.join(self.directory, "server.pem"),
                               "key": os.path.join(self.directory, "server.key")}
        config = {"version": 0.1, "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
                  "storage": {"filesystem": {"rootdirectory": self.storage}, "delete": {"enabled": True}},
                  "http": http_cfg, **({"auth": extra["auth"]} if "auth" in extra else {})}
        config_path = os.path.join(self.directory, f"registry-{kind}.json")
        with open(config_path, "w") as f:
            json.dump(config, f)  # YAML is a superset of JSON
        log_path = os.path.join(self.directory, f"registry-{kind}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["docker-registry", "serve", config_path], stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL)
        registry = RegistryProcess(kind, f"127.0.0.1:{port}", log_path, proc)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                with open(log_path, errors="replace") as f:
                    raise RuntimeError(f"docker-registry ({kind}) exited: {f.read()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return registry
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry ({kind}) did not listen on port {port}")
            time.sleep(0.05)

    @property
    def plain(self) -> RegistryProcess:
        return self._procs["plain"]

    @property
    def basic(self) -> RegistryProcess:
        return self._procs["basic"]

    @property
    def token(self) -> RegistryProcess:
        return self._procs["token"]

    @property
    def tls(self) -> RegistryProcess:
        return self._procs["tls"]

    @property
    def token_requests(self) -> list[dict[str, Any]]:
        """What the token realm was asked (path, and whether the credentials were right)."""
        assert self._token_server is not None
        return list(self._token_server.requests)

    def push_layout(self, layout: str, name: str, *, docker_format: bool = False) -> None:
        """Push an OCI layout dir into the storage (through the plain registry) as ``name`` (``repo:tag``)."""
        cmd = ["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false", "--preserve-digests"]
        if docker_format:
            cmd = [c for c in cmd if c != "--preserve-digests"] + ["--format", "v2s2"]
        subprocess.run([*cmd, f"oci:{layout}", f"docker://{self.plain.address}/{name}"], check=True,
                       capture_output=True)

    def blob_path(self, digest: str) -> str:
        """Where the registry keeps a blob's bytes (to tamper with them)."""
        hexa = digest.split(":", 1)[1]
        return os.path.join(self.storage, "docker", "registry", "v2", "blobs", "sha256", hexa[:2], hexa, "data")

    def stop(self) -> None:
        for registry in self._procs.values():
            if registry.process.poll() is None:
                registry.process.terminate()
                try:
                    registry.process.wait(10)
                except subprocess.TimeoutExpired:
                    registry.process.kill()
                    registry.process.wait()
        self._procs.clear()
        if self._token_server is not None:
            self._token_server.shutdown()
            self._token_server.server_close()
            self._token_server = None
        if self._token_thread is not None:
            self._token_thread.join()
            self._token_thread = None


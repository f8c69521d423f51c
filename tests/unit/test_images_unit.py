"""Image formats, the registry client's secret handling, archive reading and image_spec's user lookup.

The integration tests run all of this against the real registry and containerd; here are the
cases those cannot produce: a registry that redirects blobs to another host (the token must not
follow), and malformed documents.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from libcontainerd import _archive, _registry, errdefs, oci
from libcontainerd import _testing_images as ti
from libcontainerd._imagespec import (
    Reference,
    chain_ids,
    ingest_ref,
    manifest_parts,
    parse_platform,
    select_manifest,
    sha256_digest,
)
from libcontainerd.types import Descriptor

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


@pytest.mark.parametrize("ref, name", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("team/app", "docker.io/team/app:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000/a/b:v1"),
    (f"reg.example.com/app@{A}", f"reg.example.com/app@{A}"),
    (f"reg.example.com/app:v1@{A}", f"reg.example.com/app:v1@{A}"),
])
def test_reference_names_as_containerd_stores_them(ref, name):
    assert Reference.parse(ref).name == name


@pytest.mark.parametrize("ref", ["", "Busybox", "a@sha256:12", "host:5000/", "a:b:c", "a b", 5])
def test_bad_references_are_invalid_parameters(ref):
    with pytest.raises(errdefs.InvalidParameter):
        Reference.parse(ref)


def test_chain_ids_per_the_oci_spec():
    assert chain_ids([A]) == [A]
    assert chain_ids([A, B])[1] == sha256_digest(f"{A} {B}".encode())
    assert chain_ids([]) == []


def test_ingest_refs_are_go_clients():
    assert ingest_ref("application/vnd.oci.image.manifest.v1+json", A) == f"manifest-{A}"
    assert ingest_ref("application/vnd.docker.distribution.manifest.list.v2+json", A) == f"index-{A}"
    assert ingest_ref("application/vnd.oci.image.config.v1+json", A) == f"config-{A}"
    assert ingest_ref("application/vnd.oci.image.layer.v1.tar+zstd", A) == f"layer-{A}"


def test_select_manifest_by_platform_and_variant():
    def entry(arch: str, variant: str = "") -> dict[str, Any]:
        plat = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": A, "size": 1, "platform": plat}

    index = {"manifests": [entry("arm", "v6"), entry("arm", "v7"), entry("arm64"), entry("amd64")]}
    assert select_manifest(index, "linux/arm/v7", "x")["platform"]["variant"] == "v7"
    assert select_manifest(index, "linux/arm64", "x")["platform"]["architecture"] == "arm64"
    with pytest.raises(errdefs.NotFound, match="linux/amd64, linux/arm/v6"):
        select_manifest(index, "linux/riscv64", "x")
    with pytest.raises(errdefs.InvalidParameter):
        parse_platform("amd64")


@pytest.mark.parametrize("doc", [{}, {"schemaVersion": 1}, {"schemaVersion": 2, "config": {"digest": "x"}},
                                 {"schemaVersion": 2, "config": {"mediaType": "m", "digest": A, "size": 1}}])
def test_malformed_manifests_are_data_loss(doc):
    with pytest.raises(errdefs.DataLoss):
        manifest_parts(doc, "image x")


def test_image_user_resolution():
    passwd = b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1001::/home/user:/bin/sh\n"
    group = b"root:x:0:\nstaff:x:50:\n"
    assert oci.resolve_user("", passwd, group) == (0, 0)
    assert oci.resolve_user("user", passwd, group) == (1000, 1001)
    assert oci.resolve_user("1000", passwd, group) == (1000, 1001)
    assert oci.resolve_user("4242", passwd, group) == (4242, 0)
    assert oci.resolve_user("user:staff", passwd, group) == (1000, 50)
    assert oci.resolve_user("user:7", passwd, group) == (1000, 7)
    with pytest.raises(errdefs.NotFound, match="ghost"):
        oci.resolve_user("ghost", passwd, group, "img")
    with pytest.raises(errdefs.NotFound, match="nogroup"):
        oci.resolve_user("user:nogroup", passwd, group)


# -- the registry client ----------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        status, headers, body = self.server.answer(self)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def __init__(self, host: str, answer: Any) -> None:
        super().__init__((host, 0), _Handler)
        self.answer = answer
        self.seen: list[tuple[str, str | None]] = []
        self.thread = threading.Thread(target=self.serve_forever, name="fake-registry")
        self.thread.start()

    @property
    def address(self) -> str:
        return f"{self.server_address[0]}:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    made: list[_Server] = []
    yield made
    for s in made:
        s.stop()


def test_a_token_is_not_sent_on_a_redirect_to_another_host(servers, caplog):
    blob = b"layer bytes"
    digest = sha256_digest(blob)
    storage = _Server("127.0.0.2", lambda h: (200, {}, blob))
    servers.append(storage)

    def registry_answer(h: http.server.BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if h.path.startswith("/token"):
            return 200, {}, json.dumps({"token": "sekrit-token"}).encode()
        if h.headers.get("Authorization") != "Bearer sekrit-token":
            realm = f"http://{registry.address}/token"
            return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="svc"'}, b""
        return 307, {"Location": f"http://{storage.address}/storage/blob"}, b""

    registry = _Server("127.0.0.1", registry_answer)
    servers.append(registry)
    caplog.set_level(logging.DEBUG)
    client = _registry.Registry(Reference.parse(f"{registry.address}/app:v1"), plain_http=True,
                                auth=("user", "pass-word-1"))
    start, chunks = client.blob(digest)
    assert (start, b"".join(chunks)) == (0, blob)
    assert storage.seen == [("/storage/blob", None)]
    token_asks = [auth for path, auth in registry.seen if path.startswith("/token")]
    assert token_asks == ["Basic " + base64.b64encode(b"user:pass-word-1").decode()]
    assert ("/v2/app/blobs/" + digest, "Bearer sekrit-token") in registry.seen
    for text in (repr(client), caplog.text):
        assert "pass-word-1" not in text and "sekrit-token" not in text


def test_registry_errors_keep_secrets_out_and_name_the_reference(servers):
    def answer(h: http.server.BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if h.headers.get("Authorization") is None:
            return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return 401, {"WWW-Authenticate": 'Basic realm="r"'}, json.dumps(body).encode()

    server = _Server("127.0.0.1", answer)
    servers.append(server)
    ref = Reference.parse(f"{server.address}/app:v1")
    with pytest.raises(errdefs.Unauthorized) as info:
        _registry.Registry(ref, plain_http=True, auth=("user", "hunter22")).manifest("v1")
    assert ref.name in str(info.value) and "hunter22" not in str(info.value) and "hunter22" not in repr(info.value)


def test_manifest_digest_mismatch_is_data_loss(servers):
    body = json.dumps({"schemaVersion": 2}).encode()
    server = _Server("127.0.0.1", lambda h: (200, {"Docker-Content-Digest": A,
                                                   "Content-Type": "application/vnd.oci.image.manifest.v1+json"}, body))
    servers.append(server)
    with pytest.raises(errdefs.DataLoss, match="expected"):
        _registry.Registry(Reference.parse(f"{server.address}/app:v1"), plain_http=True).manifest("v1")


def test_docker_config_credentials(tmp_path, monkeypatch):
    auth = base64.b64encode(b"alice:s3cret").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        "reg.example.com": {"auth": auth}, "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert _registry.config_credentials("reg.example.com") == ("alice", "s3cret")
    assert _registry.config_credentials("docker.io") == ("bob", "pw")
    assert _registry.config_credentials("other.example.com") is None


# -- archives ---------------------------------------------------------------------------------


class _MemoryStore:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def ingest(self, ref: str, size: int, chunks: Iterator[bytes], digest: str | None) -> str:
        data = b"".join(chunks)
        actual = sha256_digest(data)
        if digest is not None and digest != actual:
            raise errdefs.DataLoss(f"{ref} does not match {digest}")
        self.blobs[actual] = data
        return actual

    def put(self, media_type: str, data: bytes) -> Descriptor:
        self.blobs[sha256_digest(data)] = data
        return Descriptor(media_type, sha256_digest(data), len(data))


def test_docker_save_archive_makes_go_importers_manifest(tmp_path):
    layers = [ti.tar_of([(ti._info("a", size=1), b"a")]), ti.gz(ti.tar_of([(ti._info("b", size=1), b"b")]))]
    ti.write_docker_save(str(tmp_path / "s.tar"), layers, ["app:1", "reg.example.com/x/app:2"])
    store = _MemoryStore()
    images = _archive.import_stream(str(tmp_path / "s.tar"), store)
    assert [name for name, _ in images] == ["docker.io/library/app:1", "reg.example.com/x/app:2"]
    manifest = json.loads(store.blobs[images[0][1].digest])
    assert list(manifest) == ["schemaVersion", "mediaType", "config", "layers"]
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.docker.image.rootfs.diff.tar", "application/vnd.docker.image.rootfs.diff.tar.gzip"]
    assert b" " not in store.blobs[images[0][1].digest]  # Go's compact JSON


def test_oci_layout_names_as_ctr_import(tmp_path):
    img = ti.build_layout(str(tmp_path / "l"), [ti.tar_of([(ti._info("a", size=1), b"a")])], tag="v3")
    ti.oci_archive(img.layout, str(tmp_path / "o.tar"))
    with open(tmp_path / "o.tar", "rb") as f:
        images = _archive.import_stream(io.BufferedReader(f), _MemoryStore())  # type: ignore[arg-type]
    assert len(images) == 1
    name, target = images[0]
    assert name.startswith("import-") and name.endswith(":v3") and target.digest == img.target_digest


def test_a_corrupt_layout_blob_is_data_loss(tmp_path):
    img = ti.build_layout(str(tmp_path / "l"), [ti.tar_of([(ti._info("a", size=1), b"a")])])
    with open(f"{img.layout}/blobs/sha256/{img.layer_digests[0][7:]}", "r+b") as f:
        f.write(b"\x00")
    ti.oci_archive(img.layout, str(tmp_path / "o.tar"))
    with pytest.raises(errdefs.DataLoss):
        _archive.import_stream(str(tmp_path / "o.tar"), _MemoryStore())


def test_progress_display_draws_one_line_per_blob_on_a_terminal():
    from libcontainerd import PullProgress
    from libcontainerd._cli._images import ProgressDisplay

    out = io.StringIO()
    display = ProgressDisplay(out, tty=True)
    layer = "application/vnd.oci.image.layer.v1.tar+gzip"
    display(PullProgress("r", A, layer, 0, 100, "waiting"))
    display(PullProgress("r", B, "application/vnd.oci.image.config.v1+json", 0, 10, "exists"))
    display(PullProgress("r", A, layer, 100, 100, "done"))
    display.done("r", 1.5)
    frames = out.getvalue()
    assert "\x1b[2F" in frames  # redrawn in place: back over the two blob lines
    last = frames.rsplit("\x1b[2F", 1)[1]
    assert "layer    aaaaaaaaaaaa  done" in last and "config   bbbbbbbbbbbb  exists" in last
    assert last.rstrip().endswith("r: 1 blobs fetched (100 B), 1 already present, 1.5s")
    quiet = io.StringIO()
    plain = ProgressDisplay(quiet, tty=False)
    plain(PullProgress("r", A, layer, 50, 100, "downloading"))
    plain.done("r", 0.5)
    assert quiet.getvalue() == "r: 0 blobs fetched (0 B), 0 already present, 0.5s\n"

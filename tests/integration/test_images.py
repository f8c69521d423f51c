"""Images against the real thing: Debian's docker-registry on 127.0.0.1 (plain, basic, bearer, TLS),
the private containerd, runc, and `ctr` as the outside witness of what the SDK stores.

The test images are built from the busybox rootfs (two layers, the upper one deleting a file of
the lower one with a whiteout) and pushed with skopeo. Content is shared between namespaces in
containerd, so a test that needs bytes containerd has never seen builds its own salted image.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import libcontainerd
from libcontainerd import _testing_images as ti
from libcontainerd import errdefs, oci, stdio, testing
from libcontainerd._api.containerd.api.services.content.v1 import content_pb2
from libcontainerd._api.containerd.api.services.images.v1 import images_pb2
from libcontainerd._api.containerd.api.services.leases.v1 import leases_pb2
from libcontainerd._api.containerd.api.services.snapshots.v1 import snapshots_pb2

CONFIG = {"Cmd": ["sh", "-c", "echo from-cmd; pwd; id -u"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                                                                     "IMAGE_VAR=image"],
          "WorkingDir": "/data"}


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ti.Registries]:
    testing.require_tools("docker-registry", "skopeo", "openssl", "ctr")
    with ti.Registries(str(tmp_path_factory.mktemp("registry"))) as regs:
        yield regs


@pytest.fixture(scope="module")
def pushed(registries: ti.Registries, rootfs: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The standard image as busybox:latest (OCI), busybox:docker (Docker v2) and multi:latest (an index)."""
    base = tmp_path_factory.mktemp("images")
    layers = ti.image_layers(rootfs, salt="standard")
    single = ti.build_layout(str(base / "single"), layers, config=CONFIG)
    registries.push_layout(single.layout, "busybox:latest")
    registries.push_layout(single.layout, "busybox:docker", docker_format=True)
    multi = ti.build_layout(str(base / "multi"), layers, config=CONFIG, extra_platforms=["linux/arm64"])
    registries.push_layout(multi.layout, "multi:latest")
    return {"single": single, "multi": multi, "layers": layers}


def salted(registries: ti.Registries, rootfs: str, tmp_path: Any, repo: str, **kw: Any) -> ti.TestImage:
    """An image with digests no containerd has seen, pushed as <repo>:latest."""
    img = ti.build_layout(str(tmp_path / f"layout-{repo}"), ti.image_layers(rootfs, salt=uuid.uuid4().hex),
                          config=CONFIG, **kw)
    registries.push_layout(img.layout, f"{repo}:latest")
    return img


def ctr(containerd: Any, namespace: str, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["ctr", "-a", containerd.address, "-n", namespace, *args], capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout


def blobs(client: libcontainerd.Client) -> dict[str, dict[str, str]]:
    conn = client._session.conn
    out = {}
    for resp in conn.stream(conn.content.List, content_pb2.ListContentRequest(), "content"):
        for info in resp.info:
            out[info.digest] = dict(info.labels)
    return out


def ingests(client: libcontainerd.Client) -> list[str]:
    conn = client._session.conn
    resp = conn.call(conn.content.ListStatuses, content_pb2.ListStatusesRequest(), "ingests")
    return [s.ref for s in resp.statuses]


def leases(client: libcontainerd.Client) -> list[str]:
    conn = client._session.conn
    return [lease.id for lease in conn.call(conn.leases.List, leases_pb2.ListRequest(), "leases").leases]


def snapshots(client: libcontainerd.Client, snapshotter: str = "overlayfs") -> dict[str, str]:
    conn = client._session.conn
    out = {}
    request = snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter)
    for resp in conn.stream(conn.snapshots.List, request, "snapshots"):
        for info in resp.info:
            out[info.name] = info.parent
    return out


def image_names(client: libcontainerd.Client) -> list[str]:
    conn = client._session.conn
    return [i.name for i in conn.call(conn.images.List, images_pb2.ListImagesRequest(), "images").images]


def run(client: libcontainerd.Client, cid: str, image: Any, args: list[str] | None = None,
        **kw: Any) -> tuple[int, bytes]:
    img = image if isinstance(image, libcontainerd.Image) else client.get_image(image)
    spec = oci.image_spec(img, args, **{k: v for k, v in kw.items() if k != "snapshotter"})
    container = client.new_container(cid, spec, image=img, snapshotter=kw.get("snapshotter"))
    out = stdio.capture()
    task = container.start(attach_stdio=out)
    code = task.wait(timeout=60).code
    out.wait(timeout=60)
    task.delete()
    container.delete()
    return code, out.stdout + out.stderr


# -- pull -------------------------------------------------------------------------------------


def test_pull_over_http_stores_the_image_as_containerds_go_client_does(client, registries, pushed, containerd,
                                                                       namespace):
    ref = f"{registries.plain.address}/busybox:latest"
    seen: list[libcontainerd.PullProgress] = []
    image = client.pull(ref, plain_http=True, progress=seen.append)
    single = pushed["single"]
    assert image.name == ref
    assert image.target == libcontainerd.Descriptor("application/vnd.oci.image.manifest.v1+json",
                                                    single.target_digest, image.target.size)
    assert image.config()["config"]["WorkingDir"] == "/data"
    assert image.is_unpacked()
    # The labels containerd's garbage collector follows, as Go's pull sets them.
    content = blobs(client)
    manifest = content[single.manifest_digest]
    assert manifest["containerd.io/gc.ref.content.l.0"] == single.layer_digests[0]
    assert manifest["containerd.io/gc.ref.content.l.1"] == single.layer_digests[1]
    config_digest = manifest["containerd.io/gc.ref.content.config"]
    top = top_chain_id(single.diff_ids)
    assert content[config_digest]["containerd.io/gc.ref.snapshot.overlayfs"] == top
    assert content[single.layer_digests[0]]["containerd.io/uncompressed"] == single.diff_ids[0]
    source = f"containerd.io/distribution.source.{registries.plain.address}"
    assert content[single.layer_digests[1]][source] == "busybox"
    assert set(snapshots(client)) == {single.diff_ids[0], top}
    assert leases(client) == [] and ingests(client) == []
    # ctr sees the same image and agrees on its size.
    listing = ctr(containerd, namespace, "images", "ls")
    assert ref in listing and single.target_digest in listing
    assert image.size() == sum(int(b["size"]) for b in content_sizes(client, content))
    # progress: each blob waits, then is done; the manifest last.
    statuses = {(p.digest, p.status) for p in seen}
    for digest in single.layer_digests:
        assert (digest, "waiting") in statuses and (digest, "done") in statuses
    assert seen[-1].digest == single.manifest_digest and seen[-1].status in ("done", "exists")
    assert all(p.ref == ref and 0 <= p.offset <= p.total for p in seen)
    assert [i.name for i in client.list_images()] == [ref]
    assert client.get_image(ref) == image


def content_sizes(client: libcontainerd.Client, content: dict[str, dict[str, str]]) -> list[dict[str, int]]:
    conn = client._session.conn
    out = []
    for resp in conn.stream(conn.content.List, content_pb2.ListContentRequest(), "content"):
        out += [{"size": info.size} for info in resp.info]
    return out


def top_chain_id(diff_ids: tuple[str, ...]) -> str:
    from libcontainerd._imagespec import chain_ids

    return chain_ids(list(diff_ids))[-1]


def test_docker_v2_manifest_pulls_and_runs(client, registries, pushed):
    image = client.pull(f"{registries.plain.address}/busybox:docker", plain_http=True)
    assert image.target.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    code, out = run(client, "docker-v2", image)
    assert code == 0
    assert out == b"from-cmd\n/data\n0\n"


def test_second_pull_transfers_no_layer_bytes_also_from_another_namespace(client, registries, pushed, containerd,
                                                                          state_dir):
    ref = f"{registries.plain.address}/busybox:latest"
    client.pull(ref, plain_http=True)
    before = len(registries.plain.blob_gets())
    seen: list[libcontainerd.PullProgress] = []
    client.pull(ref, plain_http=True, progress=seen.append)
    ns2 = "t-" + uuid.uuid4().hex[:10]
    with libcontainerd.new_client(containerd.address, state_dir, ns2, None, timeout=60) as other:
        other.pull(ref, plain_http=True)
        assert other.get_image(ref).is_unpacked()
    assert len(registries.plain.blob_gets()) == before
    assert {p.status for p in seen if p.digest in pushed["single"].layer_digests} <= {"waiting", "exists"}


def test_multi_platform_index_picks_this_machine_or_the_given_platform(client, registries, pushed, containerd,
                                                                        namespace, state_dir):
    ref = f"{registries.plain.address}/multi:latest"
    image = client.pull(ref, plain_http=True)
    assert image.target.media_type == "application/vnd.oci.image.index.v1+json"
    assert image.config()["architecture"] == "amd64"
    index_labels = blobs(client)[pushed["multi"].target_digest]
    assert index_labels["containerd.io/gc.ref.content.m.0"] == pushed["multi"].manifest_digest
    code, out = run(client, "multi", image, ["cat", "/hello.txt"])
    assert (code, out) == (0, b"hello from the upper layer\n")
    arm = client.pull(ref, plain_http=True, platform="linux/arm64", unpack=False)
    assert arm.name == image.name
    ns2 = "t-" + uuid.uuid4().hex[:10]
    with libcontainerd.new_client(containerd.address, state_dir, ns2, None, timeout=60) as other:
        only_arm = other.pull(ref, plain_http=True, platform="linux/arm64")
        assert only_arm.config()["architecture"] == "arm64"  # the platform that is there
        assert only_arm.read_file("/platform") == b"linux/arm64"
    with pytest.raises(errdefs.NotFound, match="linux/s390x"):
        client.pull(ref, plain_http=True, platform="linux/s390x")
    assert "linux/amd64" in ctr(containerd, namespace, "images", "ls")


def test_basic_auth(client, registries, pushed):
    ref = f"{registries.basic.address}/busybox:latest"
    image = client.pull(ref, plain_http=True, auth=(ti.USER, ti.PASSWORD))
    assert image.is_unpacked()
    with pytest.raises(errdefs.Unauthorized) as info:
        client.pull(ref, plain_http=True, auth=(ti.USER, "wrong-password"))
    assert ref in str(info.value) and "wrong-password" not in str(info.value)
    with pytest.raises(errdefs.Unauthorized, match="requires credentials"):
        client.pull(ref, plain_http=True, auth=None)


def test_credentials_from_docker_config(client, registries, pushed, tmp_path, monkeypatch):
    import base64

    config = {"auths": {registries.basic.address: {
        "auth": base64.b64encode(f"{ti.USER}:{ti.PASSWORD}".encode()).decode()}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert client.pull(f"{registries.basic.address}/busybox:latest", plain_http=True).is_unpacked()


def test_bearer_token_auth(client, registries, pushed):
    ref = f"{registries.token.address}/busybox:latest"
    before = len(registries.token_requests)
    image = client.pull(ref, plain_http=True, auth=(ti.USER, ti.PASSWORD))
    assert image.is_unpacked()
    asked = registries.token_requests[before:]
    assert asked and all(r["authorized"] for r in asked)
    assert all("scope=repository%3Abusybox%3Apull" in r["path"] for r in asked)
    with pytest.raises(errdefs.Unauthorized) as info:
        client.pull(ref, plain_http=True, auth=(ti.USER, "wrong-password"))
    assert "wrong-password" not in str(info.value) and ref in str(info.value)


def test_tls_with_a_private_ca(client, registries, pushed):
    ref = f"{registries.tls.address}/busybox:latest"
    with pytest.raises(errdefs.Unavailable, match="not trusted"):
        client.pull(ref)
    assert client.pull(ref, ca_file=registries.ca_file).is_unpacked()


def test_errors_name_the_reference(client, registries, pushed):
    addr = registries.plain.address
    with pytest.raises(errdefs.NotFound, match=f"{addr}/busybox:nosuchtag"):
        client.pull(f"{addr}/busybox:nosuchtag", plain_http=True)
    with pytest.raises(errdefs.NotFound, match=f"{addr}/nosuchrepo:latest"):
        client.pull(f"{addr}/nosuchrepo:latest", plain_http=True)
    port = ti._free_port()
    with pytest.raises(errdefs.Unavailable, match=f"127.0.0.1:{port}"):
        client.pull(f"127.0.0.1:{port}/busybox:latest", plain_http=True)
    with pytest.raises(errdefs.InvalidParameter):
        client.pull("UPPER/Case:tag")
    with pytest.raises(errdefs.InvalidParameter, match="platform"):
        client.pull(f"{addr}/busybox:latest", plain_http=True, platform="amd64")
    assert image_names(client) == [] and leases(client) == [] and ingests(client) == []


def test_tampered_blob_is_data_loss_and_leaves_nothing(client, registries, rootfs, tmp_path):
    img = salted(registries, rootfs, tmp_path, "tampered")
    path = registries.blob_path(img.layer_digests[0])
    with open(path, "r+b") as f:  # same size, different bytes
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(errdefs.DataLoss, match=img.layer_digests[0]):
        client.pull(f"{registries.plain.address}/tampered:latest", plain_http=True)
    assert image_names(client) == []
    assert ingests(client) == []
    assert leases(client) == []
    assert img.layer_digests[0] not in blobs(client)
    assert blobs(client) == {}  # the other blobs of the failed pull were collected with its lease
    assert snapshots(client) == {}


def test_concurrent_pulls_of_the_same_image_both_succeed(client, registries, rootfs, tmp_path, containerd,
                                                         state_dir):
    import threading

    salted(registries, rootfs, tmp_path, "together")
    ref = f"{registries.plain.address}/together:latest"
    results: list[Any] = []
    with libcontainerd.new_client(containerd.address, state_dir, client.namespace, None, timeout=60) as other:
        threads = [threading.Thread(target=lambda c=c: results.append(_pull_or_error(c, ref)))
                   for c in (client, other, client)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert [r for r in results if not isinstance(r, libcontainerd.Image)] == []
    assert len(results) == 3 and ingests(client) == [] and leases(client) == []
    assert run(client, "together", client.get_image(ref), ["cat", "/hello.txt"])[0] == 0


def _pull_or_error(client: libcontainerd.Client, ref: str) -> Any:
    try:
        return client.pull(ref, plain_http=True)
    except Exception as exc:
        return exc


def test_interrupted_pull_resumes_from_the_ingest(client, registries, rootfs, tmp_path):
    img = salted(registries, rootfs, tmp_path, "resume")
    layer = img.layer_digests[0]
    with open(registries.blob_path(layer), "rb") as f:
        data = f.read()
    conn = client._session.conn
    half = len(data) // 2
    # What an interrupted pull (ours or ctr's: same ingest ref) leaves: half the bytes under layer-<digest>.
    requests = [content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=f"layer-{layer}", total=len(data),
                                                expected=layer),
                content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=f"layer-{layer}", offset=0,
                                                data=data[:half])]
    for _ in conn.stream(conn.content.Write, iter(requests), "ingest"):
        pass
    assert ingests(client) == [f"layer-{layer}"]
    log_before = os.path.getsize(registries.plain.log_path)
    client.pull(f"{registries.plain.address}/resume:latest", plain_http=True)
    with open(registries.plain.log_path, "rb") as f:
        f.seek(log_before)
        written = [json.loads(line) for line in f.read().decode().splitlines()
                   if layer in line and '"response completed"' in line]
    assert written and int(written[-1]["http.response.written"]) == len(data) - half
    assert ingests(client) == []
    assert run(client, "resumed", client.get_image(f"{registries.plain.address}/resume:latest"),
               ["cat", "/hello.txt"])[0] == 0


# -- containers of images ---------------------------------------------------------------------


def test_image_spec_takes_the_image_config(client, registries, pushed):
    image = client.pull(f"{registries.plain.address}/busybox:latest", plain_http=True)
    spec = oci.image_spec(image, env={"EXTRA": "1"}, hostname="imgbox")
    assert spec["process"]["args"] == CONFIG["Cmd"]
    assert spec["process"]["cwd"] == "/data"
    assert "IMAGE_VAR=image" in spec["process"]["env"] and "EXTRA=1" in spec["process"]["env"]
    assert spec["root"]["path"] == "rootfs"
    assert oci.image_spec(image, user="user")["process"]["user"]["uid"] == 1000  # from the image's /etc/passwd
    assert oci.image_spec(image, user="nobody:user")["process"]["user"]["gid"] == 1000
    with pytest.raises(errdefs.NotFound, match="nosuchuser"):
        oci.image_spec(image, user="nosuchuser")
    code, out = run(client, "as-user", image, ["sh", "-c", "id -u; echo $IMAGE_VAR $EXTRA"], user="user",
                    env={"EXTRA": "x"})
    assert (code, out) == (0, b"1000\nimage x\n")


def test_container_writes_do_not_reach_the_image_or_another_container(client, registries, pushed, containerd,
                                                                       namespace):
    image = client.pull(f"{registries.plain.address}/busybox:latest", plain_http=True)
    spec = oci.image_spec(image, ["sh", "-c", "echo scribble > /hello.txt; rm /data/keep; cat /hello.txt"])
    first = client.new_container("writer", spec, image=image)
    info = json.loads(ctr(containerd, namespace, "containers", "info", "writer"))
    assert info["Image"] == image.name and info["Snapshotter"] == "overlayfs" and info["SnapshotKey"] == "writer"
    assert first.snapshot is not None and first.snapshot.key == "writer"
    assert "writer" in snapshots(client)
    out = stdio.capture()
    task = first.start(attach_stdio=out)
    assert task.wait(timeout=60).code == 0 and out.wait().stdout == b"scribble\n"
    code, seen = run(client, "reader", image, ["sh", "-c", "cat /hello.txt; ls /data; ls /etc"])
    assert code == 0
    assert seen.startswith(b"hello from the upper layer\nkeep\n")
    assert b"doomed" not in seen  # the whiteout of the upper layer deletes the lower layer's file
    task.delete()
    first.delete()
    assert "writer" not in snapshots(client) and "reader" not in snapshots(client)


def test_an_image_container_does_what_a_bundle_container_does(client, registries, pushed, recorder):
    from libcontainerd.types import EventType, Status

    image = client.pull(f"{registries.plain.address}/busybox:latest", plain_http=True)
    container = client.new_container("svc", oci.image_spec(image, ["sleep", "600"]), image=image)
    task = container.start()
    recorder.wait_for("svc", EventType.START)
    out = stdio.capture(stdin=b"through stdin\n")
    proc = task.exec("cat", oci.process_spec(["sh", "-c", "cat; cat /hello.txt; pwd"], cwd="/data"),
                     with_stdin=True, attach_stdio=out)
    assert proc.wait(timeout=60).code == 0
    assert out.wait(timeout=30).stdout == b"through stdin\nhello from the upper layer\n/data\n"
    proc.delete()
    task.pause()
    assert task.status() is Status.PAUSED
    task.resume()
    task.update_resources({"memory": {"limit": 64 << 20}})
    assert task.stats().metrics is not None and {p.pid for p in task.summary()} >= {task.pid}
    replaced = client.replace_container("svc", oci.image_spec(image, ["true"]), image=image)
    assert replaced.snapshot is not None
    task = replaced.start()
    assert task.wait(timeout=60).code == 0
    task.delete()
    replaced.delete()
    assert "svc" not in snapshots(client)


def test_load_container_keeps_the_snapshot(client, registries, pushed):
    image = client.pull(f"{registries.plain.address}/busybox:latest", plain_http=True)
    client.new_container("loaded", oci.image_spec(image, ["true"]), image=image.name)
    loaded = client.load_container("loaded")
    assert loaded.snapshot is not None and loaded.snapshot.image == image.name
    task = loaded.start()
    assert task.wait(timeout=60).code == 0
    task.delete()
    loaded.delete()
    assert "loaded" not in snapshots(client)


def test_unknown_image_creates_nothing(client, state_dir):
    with pytest.raises(errdefs.NotFound, match="nosuch"):
        client.new_container("noimg", oci.default_spec("rootfs", ["true"]), image="127.0.0.1:1/nosuch:latest")
    assert not os.path.exists(os.path.join(state_dir, "noimg"))
    assert client.list_containers() == [] and snapshots(client) == {} and leases(client) == []


def test_native_snapshotter(client, registries, pushed):
    image = client.pull(f"{registries.plain.address}/busybox:latest", plain_http=True, snapshotter="native")
    assert image.is_unpacked("native")
    code, out = run(client, "native", image, ["sh", "-c", "cat /hello.txt; ls /etc"], snapshotter="native")
    assert code == 0 and out.startswith(b"hello from the upper layer\n") and b"doomed" not in out


def test_image_pulled_by_the_sdk_runs_under_ctr(client, registries, pushed, containerd, namespace):
    ref = f"{registries.plain.address}/busybox:latest"
    client.pull(ref, plain_http=True)
    out = ctr(containerd, namespace, "run", "--rm", ref, "ctr-run-" + namespace, "cat", "/hello.txt")
    assert out == "hello from the upper layer\n"


def test_image_pulled_by_ctr_runs_under_the_sdk(client, registries, rootfs, tmp_path, containerd, namespace):
    img = salted(registries, rootfs, tmp_path, "byctr")
    ref = f"{registries.plain.address}/byctr:latest"
    ctr(containerd, namespace, "images", "pull", "--plain-http", ref)
    image = client.get_image(ref)
    assert image.target.digest == img.target_digest and image.is_unpacked()
    code, out = run(client, "from-ctr", image, ["cat", "/etc/salt", "/hello.txt"])
    assert code == 0 and out.endswith(b"hello from the upper layer\n")


def test_remove_image_and_gc_leave_nothing(client, registries, rootfs, tmp_path, containerd, namespace):
    salted(registries, rootfs, tmp_path, "gc")
    ref = f"{registries.plain.address}/gc:latest"
    image = client.pull(ref, plain_http=True)
    code, _ = run(client, "gc-user", image, ["true"])
    assert code == 0
    assert blobs(client) and snapshots(client)
    client.remove_image(ref, sync=True)
    with pytest.raises(errdefs.NotFound):
        client.get_image(ref)
    with pytest.raises(errdefs.NotFound):
        client.remove_image(ref)
    assert ctr(containerd, namespace, "content", "ls", "-q") == ""
    assert ctr(containerd, namespace, "snapshots", "ls").strip().splitlines()[1:] == []


# -- import -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerd", ["20.10", "28"])
def test_import_docker_save_archive(client, rootfs, tmp_path, containerd, namespace, dockerd):
    layers = ti.image_layers(rootfs, salt=uuid.uuid4().hex)
    archive = tmp_path / "save.tar"
    ti.write_docker_save(str(archive), layers, ["imported:v1", "example.com/team/imported:v2"], config=CONFIG,
                         oci_layout=dockerd == "28")
    seen: list[libcontainerd.PullProgress] = []
    images = client.import_images(str(archive), progress=seen.append)
    assert sorted(i.name for i in images) == ["docker.io/library/imported:v1", "example.com/team/imported:v2"]
    last = {p.digest: p for p in seen}  # each blob's last word
    assert {p.status for p in last.values()} == {"done"} and sum(p.total for p in last.values()) > sum(map(len, layers))
    assert images[0].target.media_type == ("application/vnd.docker.distribution.manifest.v2+json"
                                           if dockerd == "20.10" else "application/vnd.oci.image.manifest.v1+json")
    code, out = run(client, "from-save", images[0])
    assert (code, out) == (0, b"from-cmd\n/data\n0\n")
    # ctr imports the same archive to the same manifest (byte for byte as its importer writes it).
    ns2 = "t-" + uuid.uuid4().hex[:10]
    ctr(containerd, ns2, "images", "import", str(archive))
    assert images[0].target.digest in ctr(containerd, ns2, "images", "ls")


def test_import_oci_archive_from_a_file_object(client, rootfs, tmp_path, containerd, namespace):
    img = ti.build_layout(str(tmp_path / "layout"), ti.image_layers(rootfs, salt=uuid.uuid4().hex), config=CONFIG,
                          tag="example.com/oci/image:1", extra_platforms=["linux/arm64"])
    archive = tmp_path / "oci.tar"
    ti.oci_archive(img.layout, str(archive))
    with open(archive, "rb") as f:
        images = client.import_images(f)
    assert [i.name for i in images] == ["example.com/oci/image:1"]
    assert images[0].target.digest == img.target_digest
    code, out = run(client, "from-oci", images[0], ["cat", "/hello.txt"])
    assert (code, out) == (0, b"hello from the upper layer\n")
    assert leases(client) == [] and ingests(client) == []


def test_import_rejects_what_is_not_an_image_archive(client, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(ti.tar_of([(ti._info("hello", size=2), b"hi")]))
    with pytest.raises(errdefs.InvalidParameter, match="neither"):
        client.import_images(str(junk))
    with pytest.raises(errdefs.NotFound):
        client.import_images(str(tmp_path / "missing.tar"))
    assert image_names(client) == [] and leases(client) == []


def test_a_1gib_layer_streams_with_flat_memory(client, registries, tmp_path):
    import tracemalloc

    img = ti.build_big_layout(str(tmp_path / "big"), 1 << 30, salt=uuid.uuid4().hex)
    registries.push_layout(img.layout, "big:latest")
    os.remove(os.path.join(img.layout, "blobs", "sha256", img.layer_digests[0][7:]))  # disk: keep one copy less
    tracemalloc.start()
    try:
        image = client.pull(f"{registries.plain.address}/big:latest", plain_http=True, unpack=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"pull of a 1 GiB layer peaked at {peak >> 20} MiB of Python memory"
    assert blobs(client)[img.layer_digests[0]] is not None
    assert image.size() > 1 << 30
    client.remove_image(image.name, sync=True)
    assert img.layer_digests[0] not in blobs(client)


# -- the command line -------------------------------------------------------------------------


def test_cli_pull_images_run_rmi_import(registries, pushed, containerd, namespace, state_dir, rootfs, tmp_path):
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIBCONTAINERD_")}
        return subprocess.run([sys.executable, "-m", "libcontainerd", "--address", containerd.address, "--namespace",
                               namespace, "--state-dir", state_dir, *args], capture_output=True, text=True,
                              timeout=120, env=env)

    ref = f"{registries.plain.address}/busybox:latest"
    pulled = cli("pull", "--plain-http", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == f"{ref} {pushed['single'].target_digest}"
    assert "already present" in pulled.stderr  # the quiet summary when stderr is not a terminal
    listed = cli("images")
    assert listed.returncode == 0 and ref in listed.stdout and "yes" in listed.stdout
    ran = cli("run", "--rm", ref, "cli-img", "cat", "/hello.txt")
    assert (ran.returncode, ran.stdout) == (0, "hello from the upper layer\n"), ran.stderr
    default_cmd = cli("run", "--rm", "-e", "X=1", ref, "cli-img2")
    assert (default_cmd.returncode, default_cmd.stdout) == (0, "from-cmd\n/data\n0\n"), default_cmd.stderr
    assert cli("run", "--rm", "--busybox", "bb", "true").returncode == 0  # the rootfs forms still work
    missing = cli("run", "--rm", f"{registries.plain.address}/nosuch:1", "x")
    assert missing.returncode == 1 and "nosuch" in missing.stderr
    wrong = cli("pull", "--plain-http", "--user", f"{ti.USER}:bad-pass", f"{registries.basic.address}/busybox:latest")
    assert wrong.returncode == 1 and "refused" in wrong.stderr and "bad-pass" not in wrong.stderr
    assert cli("rmi", "--sync", ref).returncode == 0
    assert cli("images", "-q").stdout.strip() == ""
    archive = tmp_path / "save.tar"
    ti.write_docker_save(str(archive), ti.image_layers(rootfs, salt=uuid.uuid4().hex), ["cli/imported:1"],
                         config=CONFIG)
    imported = cli("import", str(archive))
    assert imported.returncode == 0 and imported.stdout.startswith("docker.io/cli/imported:1 sha256:"), imported.stderr
    ran = cli("run", "--rm", "docker.io/cli/imported:1", "cli-imp")
    assert (ran.returncode, ran.stdout) == (0, "from-cmd\n/data\n0\n"), ran.stderr


def test_cli_pull_draws_progress_lines_on_a_terminal(registries, rootfs, tmp_path, containerd, namespace, state_dir):
    import pty
    import sys

    img = salted(registries, rootfs, tmp_path, "tty")
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBCONTAINERD_")}
    proc = subprocess.Popen([sys.executable, "-m", "libcontainerd", "--address", containerd.address, "--namespace",
                             namespace, "--state-dir", state_dir, "pull", "--plain-http",
                             f"{registries.plain.address}/tty:latest"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, screen
    assert proc.stdout is not None and img.target_digest in proc.stdout.read().decode()
    text = screen.decode(errors="replace")
    assert "\x1b[2K" in text and "\x1b[" in text  # lines redrawn in place
    for digest in img.layer_digests:
        assert f"layer    {digest[7:19]}  done" in text
    assert "blobs fetched" in text.splitlines()[-1]


def test_import_streams_the_archive(client, tmp_path):
    import tracemalloc

    img = ti.build_big_layout(str(tmp_path / "big"), 256 << 20, salt=uuid.uuid4().hex)
    ti.oci_archive(img.layout, str(tmp_path / "big.tar"))
    tracemalloc.start()
    try:
        images = client.import_images(str(tmp_path / "big.tar"), unpack=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [i.target.digest for i in images] == [img.target_digest]
    assert peak < 64 << 20, f"import of a 256 MiB archive peaked at {peak >> 20} MiB of Python memory"
    client.remove_image(images[0].name, sync=True)
    assert blobs(client) == {}

"""Checkpoints through the real content and image stores; CRIU's own dump only where `criu check` passes."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import tracemalloc

import pytest

from libcontainerd import errdefs, oci, stdio
from libcontainerd._api.containerd.api.services.content.v1 import content_pb2
from libcontainerd._api.containerd.api.services.images.v1 import images_pb2
from libcontainerd._api.containerd.api.services.leases.v1 import leases_pb2
from libcontainerd.remote import _checkpoint as cp

from ..helpers import tar_bytes, tar_member


def blobs(client) -> dict[str, dict[str, str]]:
    conn = client._session.conn
    out = {}
    for resp in conn.stream(conn.content.List, content_pb2.ListContentRequest()):
        for info in resp.info:
            out[info.digest] = dict(info.labels)
    return out


def ingests(client) -> list[str]:
    conn = client._session.conn
    resp = conn.call(conn.content.ListStatuses, content_pb2.ListStatusesRequest())
    return [s.ref for s in resp.statuses]


def images(client) -> list[str]:
    conn = client._session.conn
    return [i.name for i in conn.call(conn.images.List, images_pb2.ListImagesRequest()).images]


def leases(client) -> list[str]:
    conn = client._session.conn
    return [lease.id for lease in conn.call(conn.leases.List, leases_pb2.ListRequest()).leases]


def nothing_left(client) -> None:
    assert blobs(client) == {}
    assert ingests(client) == []
    assert images(client) == []
    assert leases(client) == []


def criu_works() -> bool:
    if shutil.which("criu") is None:
        return False
    proc = subprocess.run(["criu", "check"], capture_output=True, text=True)
    return proc.returncode == 0 and "Error" not in proc.stdout + proc.stderr


class Chunks(io.RawIOBase):
    """A reader of `total` pseudo-random bytes that never holds more than one chunk."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left, 1 << 16)
        if n <= 0:
            return 0
        chunk = (self.left.to_bytes(8, "big") * (n // 8 + 1))[:n]
        b[:n] = chunk
        self.sha.update(chunk)
        self.left -= n
        return n


def test_write_content_commits_with_digest_size_and_gc_root(client):
    data = os.urandom(3 << 20)
    desc = cp.write_content(client._session, io.BytesIO(data), "application/octet-stream")
    assert desc.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert desc.size == len(data)
    labels = blobs(client)[desc.digest]
    when = datetime.datetime.strptime(labels[cp.GC_ROOT_LABEL], "%Y-%m-%dT%H:%M:%SZ")
    assert abs((datetime.datetime.utcnow() - when).total_seconds()) < 120
    assert b"".join(cp.read_content(client._session, desc.digest)) == data
    cp.delete_content(client._session, desc.digest)
    nothing_left(client)


def test_large_content_streams_in_chunks(client):
    reader = Chunks(256 << 20)
    tracemalloc.start()
    try:
        desc = cp.write_content(client._session, io.BufferedReader(reader, 1 << 20), "application/octet-stream")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert desc.size == 256 << 20
    assert desc.digest == "sha256:" + reader.sha.hexdigest()
    assert peak < 32 << 20, f"peak Python allocations {peak >> 20} MiB for a 256 MiB upload"
    cp.delete_content(client._session, desc.digest)
    nothing_left(client)


def test_digest_mismatch_is_a_clear_error_and_leaves_no_ingest(client):
    wrong = "sha256:" + "0" * 64
    with pytest.raises(errdefs.DataLoss) as err:
        cp.write_content(client._session, io.BytesIO(b"hello"), "application/octet-stream", expected_digest=wrong)
    assert wrong in str(err.value)
    nothing_left(client)


def test_restore_needs_a_real_checkpoint_dir(client, rootfs, tmp_path):
    ctr = client.new_container("nodir", oci.default_spec(rootfs, ["true"]))
    try:
        with pytest.raises(errdefs.InvalidParameter, match="does not exist"):
            ctr.start(checkpoint_dir=str(tmp_path / "missing"))
        afile = tmp_path / "file"
        afile.write_text("x")
        with pytest.raises(errdefs.InvalidParameter, match="not a directory"):
            ctr.start(checkpoint_dir=str(afile))
        nothing_left(client)
        with pytest.raises(errdefs.NotFound):
            ctr.task()
    finally:
        ctr.delete()


def test_restore_from_a_bogus_checkpoint_fails_typed_and_deletes_the_blob(client, rootfs, tmp_path, state_dir):
    bogus = tmp_path / "cp"
    bogus.mkdir()
    (bogus / "inventory.img").write_bytes(b"not a criu image")
    ctr = client.new_container("bogus", oci.default_spec(rootfs, ["sleep", "300"]))
    with pytest.raises(errdefs.LibcontainerdError) as err:
        ctr.start(checkpoint_dir=str(bogus), attach_stdio=stdio.capture())
    assert "bogus" in str(err.value)
    with pytest.raises(errdefs.NotFound):
        ctr.task()
    nothing_left(client)
    ctr.delete()
    assert os.listdir(state_dir) == []


def test_checkpoint_failure_maps_to_system_and_leaves_nothing(client, rootfs, tmp_path):
    if criu_works():
        pytest.skip("CRIU works here: the failure path is not reachable this way")
    ctr = client.new_container("ckpt", oci.default_spec(rootfs, ["sleep", "300"]))
    task = ctr.start()
    try:
        with pytest.raises(errdefs.System) as err:
            task.create_checkpoint(str(tmp_path / "out"))
        assert "criu" in str(err.value).lower()
        assert str(err.value).startswith("checkpoint of task ckpt")
        assert "\n" not in str(err.value).strip() or "StatusCode" not in str(err.value)
        nothing_left(client)
        assert task.status().value in ("running", "paused")
    finally:
        task.force_delete()
        ctr.delete()


def _publish_checkpoint(client, tar_bytes: bytes, media_type: str = cp.CHECKPOINT_MEDIA_TYPE) -> tuple[str, list[str]]:
    tar_desc = cp.write_content(client._session, io.BytesIO(tar_bytes), media_type)
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": media_type, "digest": tar_desc.digest, "size": tar_desc.size}]}
    index_desc = cp.write_content(client._session, io.BytesIO(json.dumps(index).encode()), cp.INDEX_MEDIA_TYPE,
                                  labels={cp.GC_REF_CONTENT.format(0): tar_desc.digest})
    return index_desc.digest, [tar_desc.digest, index_desc.digest]


def test_checkpoint_index_is_read_back_and_extracted(client, tmp_path):
    tar = tar_bytes(tar_member("inventory.img", data=b"criu inventory"), tar_member("sub", tarfile.DIRTYPE),
                    tar_member("sub/pages-1.img", data=b"pages"),
                    tar_member("sub/link", tarfile.SYMTYPE, linkname="../inventory.img"))
    index_digest, made = _publish_checkpoint(client, tar)
    try:
        names = cp.extract_checkpoint(client._session, index_digest, str(tmp_path / "out"))
        assert sorted(names) == ["inventory.img", "sub", "sub/link", "sub/pages-1.img"]
        assert (tmp_path / "out" / "sub" / "link").read_bytes() == b"criu inventory"
    finally:
        for digest in made:
            cp.delete_content(client._session, digest)
    nothing_left(client)


def test_an_index_without_a_checkpoint_is_invalid(client, tmp_path):
    archive = tar_bytes(tar_member("a", data=b"x"))
    index_digest, made = _publish_checkpoint(client, archive, media_type="application/x-other")
    try:
        with pytest.raises(errdefs.System, match="invalid checkpoint"):
            cp.extract_checkpoint(client._session, index_digest, str(tmp_path / "out"))
    finally:
        for digest in made:
            cp.delete_content(client._session, digest)


@pytest.mark.parametrize("hostile", ["absolute", "dotdot", "symlink-out", "hardlink-out", "device", "fifo",
                                     "through-link"])
def test_hostile_archives_write_nothing_outside(client, tmp_path, hostile):
    members = [tar_member("fine.img", data=b"ok")]
    if hostile == "absolute":
        members.append(tar_member(str(tmp_path / "escaped"), data=b"x"))
    elif hostile == "dotdot":
        members.append(tar_member("../escaped", data=b"x"))
    elif hostile == "symlink-out":
        members.append(tar_member("evil", tarfile.SYMTYPE, linkname="../../"))
    elif hostile == "hardlink-out":
        members.append(tar_member("evil", tarfile.LNKTYPE, linkname="../escaped"))
    elif hostile in ("device", "fifo"):
        members.append(tar_member("evil", tarfile.CHRTYPE if hostile == "device" else tarfile.FIFOTYPE))
    else:
        members += [tar_member("up", tarfile.SYMTYPE, linkname=".."), tar_member("up/escaped", data=b"x")]
    outside_before = sorted(os.listdir(tmp_path))
    index_digest, made = _publish_checkpoint(client, tar_bytes(*members))
    try:
        with pytest.raises(errdefs.InvalidParameter):
            cp.extract_checkpoint(client._session, index_digest, str(tmp_path / "out"))
    finally:
        for digest in made:
            cp.delete_content(client._session, digest)
    assert sorted(os.listdir(tmp_path)) == sorted({*outside_before, "out"})
    assert not (tmp_path / "escaped").exists()


def _read_count(task, name: str):
    out = stdio.capture()
    p = task.exec(name, oci.process_spec(["cat", "/tmp/count"]), attach_stdio=out)
    try:
        p.wait(timeout=30)
        text = out.wait(timeout=30).stdout.strip()
    finally:
        p.delete()
    return int(text) if text else None  # None: the loop has not written yet


def _wait_for_count(task, name: str, ok, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    for attempt in range(10_000):
        n = _read_count(task, f"{name}-{attempt}")
        if n is not None and ok(n):
            return n
        assert time.monotonic() < deadline, f"count still {n} after {timeout} s"
        time.sleep(0.2)
    raise AssertionError("unreachable")


@pytest.mark.criu
@pytest.mark.skipif(not criu_works(), reason="`criu check` fails on this kernel (CRIU cannot dump here)")
def test_checkpoint_and_restore_round_trip(client, rootfs, tmp_path):
    # The count lives in the shell's memory; the file is written whole (mv), never read half-written.
    loop = "i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; sleep 0.1; done"
    ctr = client.new_container("counter", oci.default_spec(rootfs, ["sh", "-c", loop]))
    task = ctr.start()
    before = _wait_for_count(task, "before", lambda n: n >= 30)  # 3 s or more of counting
    task.create_checkpoint(str(tmp_path / "cp"), exit=True)
    assert task.wait(timeout=30).code == 137  # runc has CRIU kill the dumped tree with SIGKILL
    task.delete()
    restored = ctr.start(checkpoint_dir=str(tmp_path / "cp"))
    # Restored, the count goes on from where it was; started afresh, it would be back at 1 and need
    # 3 s to get there again.
    first = _read_count(restored, "after-0")
    assert first is not None and first >= before, (first, before)
    _wait_for_count(restored, "after", lambda n: n > first)  # and it keeps counting
    restored.force_delete()
    ctr.delete()
    nothing_left(client)

"""Checkpoints through the real content and image stores, and CRIU round trips (a `criu check`-clean CRIU)."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile
import time
import tracemalloc

import pytest

import libcontainerd
from libcontainerd import errdefs, oci, stdio
from libcontainerd._api.containerd.api.services.content.v1 import content_pb2
from libcontainerd._api.containerd.api.services.images.v1 import images_pb2
from libcontainerd._api.containerd.api.services.leases.v1 import leases_pb2
from libcontainerd.remote import _checkpoint as cp
from libcontainerd.types import EventType, Status

from ..helpers import tar_bytes, tar_member, wait_until


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


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _publish_checkpoint(client, tar_bytes: bytes, media_type: str = cp.CHECKPOINT_MEDIA_TYPE) -> tuple[str, list[str]]:
    tar_desc = cp.write_content(client._session, io.BytesIO(tar_bytes), media_type)
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": media_type, "digest": tar_desc.digest, "size": tar_desc.size}]}
    index_desc = cp.write_content(client._session, io.BytesIO(json.dumps(index).encode()), cp.INDEX_MEDIA_TYPE,
                                  labels={cp.GC_REF_CONTENT.format(0): tar_desc.digest})
    return index_desc.digest, [tar_desc.digest, index_desc.digest]


@pytest.fixture
def dir_that_reads_short(tmp_path):
    """A checkpoint dir whose last file looks like 4 kB but reads short (a sysfs attribute bind-mounted).

    Its first file, 3 MiB, is streamed into containerd before the tar breaks.
    """
    cp_dir = tmp_path / "cp"
    cp_dir.mkdir()
    (cp_dir / "a-pages.img").write_bytes(os.urandom(3 << 20))
    bad = cp_dir / "z.img"
    bad.write_bytes(b"")
    subprocess.run(["mount", "--bind", "/sys/kernel/uevent_seqnum", str(bad)], check=True)
    try:
        yield cp_dir
    finally:
        subprocess.run(["umount", str(bad)], check=True)


def test_a_restore_upload_that_fails_part_way_commits_nothing(client, rootfs, dir_that_reads_short):
    ctr = client.new_container("upload", oci.default_spec(rootfs, ["true"]))
    try:
        with pytest.raises(errdefs.InvalidParameter, match="cannot read checkpoint dir"):
            ctr.start(checkpoint_dir=str(dir_that_reads_short))
        nothing_left(client)
        with pytest.raises(errdefs.NotFound):
            ctr.task()
    finally:
        ctr.delete()


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


@pytest.mark.parametrize("corruption", ["noise", "truncated", "bad-gzip", "bad-bzip2", "bad-xz"])
def test_a_corrupt_checkpoint_archive_is_a_typed_error(client, tmp_path, corruption):
    whole = _tar([_file("inventory.img", b"criu inventory"), _file("pages-1.img", os.urandom(64 << 10))])
    data = {
        "noise": os.urandom(10 << 10),
        "truncated": whole[: 512 + 512 + 4096],  # the second member's data is cut short
        "bad-gzip": b"\x1f\x8b\x08\x00" + os.urandom(4 << 10),
        "bad-bzip2": b"BZh91AY&SY" + os.urandom(4 << 10),
        "bad-xz": b"\xfd7zXZ\x00" + os.urandom(4 << 10),
    }[corruption]
    index_digest, made = _publish_checkpoint(client, data)
    try:
        with pytest.raises(errdefs.DataLoss, match="checkpoint archive is corrupt"):
            cp.extract_checkpoint(client._session, index_digest, str(tmp_path / "out"))
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


# -- CRIU for real (the `criu` fixture: skipped without a working CRIU, failed under CI) ------------


def counter(cid: str) -> list[str]:
    """A shell that counts in its own memory, ten a second, to stdout and (whole, by mv) to a file."""
    f = f"/tmp/{cid}.count"
    return ["sh", "-c", f"i=0; while :; do i=$((i+1)); echo $i; echo $i > {f}.new; mv {f}.new {f}; sleep 0.1; done"]


def _read_count(task, name: str):
    out = stdio.capture()
    p = task.exec(name, oci.process_spec(["cat", f"/tmp/{task.id}.count"]), attach_stdio=out)
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


def _counted(out: stdio.Capture) -> list[int]:
    return [int(x) for x in out.stdout.split()]


def _checkpoint_counter(client, rootfs, cid: str, cp_dir, *, exit: bool = True, terminal: bool = False):
    """Start a counter with captured stdio, let it count 3 s or more, checkpoint it; return (task, count, out)."""
    out = stdio.capture()
    ctr = client.new_container(cid, oci.default_spec(rootfs, counter(cid), terminal=terminal))
    task = ctr.start(attach_stdio=out)
    before = _wait_for_count(task, "before", lambda n: n >= 30)
    task.create_checkpoint(str(cp_dir), exit=exit)
    assert (cp_dir / "inventory.img").is_file(), sorted(os.listdir(cp_dir))
    return task, before, out


def _assert_counts_on(restored, before: int, out: stdio.Capture) -> None:
    # Restored, the count goes on from where it was; started afresh it would be back at 1 and
    # need 3 s to get there again.
    first = _read_count(restored, "after-0")
    assert first is not None and first >= before, (first, before)
    _wait_for_count(restored, "after", lambda n: n > first)  # and it keeps counting
    # stdio works after the restore: the new FIFOs get what the restored shell writes
    assert wait_until(lambda: any(n > first for n in _counted(out)), timeout=30), out.stdout[-200:]
    assert min(_counted(out)) >= before - 1  # nothing from a fresh start


def test_checkpoint_with_exit_stops_the_task_and_restore_counts_on(client, rootfs, tmp_path, criu):
    task, before, out = _checkpoint_counter(client, rootfs, "counter", tmp_path / "cp", exit=True)
    assert task.wait(timeout=30)
    task.delete()
    assert max(_counted(out)) >= before
    out2 = stdio.capture()
    restored = task.container.start(checkpoint_dir=str(tmp_path / "cp"), attach_stdio=out2)
    assert restored.status().value == "running"
    # Create of a restore answers pid 0 (runc restores in Start): the pid is Start's
    assert restored.pid == task.container.task().pid > 0
    _assert_counts_on(restored, before, out2)
    restored.force_delete()
    task.container.delete()
    nothing_left(client)


def test_checkpoint_without_exit_leaves_the_task_running(client, rootfs, tmp_path, criu, recorder):
    task, before, _ = _checkpoint_counter(client, rootfs, "keepgoing", tmp_path / "cp", exit=False)
    assert task.status().value == "running"
    _wait_for_count(task, "still", lambda n: n > before + 5)
    task.force_delete()
    task.container.delete()
    nothing_left(client)


def test_restore_into_a_new_container_after_the_original_was_deleted(client, rootfs, tmp_path, criu):
    task, before, _ = _checkpoint_counter(client, rootfs, "original", tmp_path / "cp")
    task.wait(timeout=30)
    task.delete()
    task.container.delete()
    # The counter's file lives in the shared rootfs under the original's name; the copy keeps using it.
    spec = oci.default_spec(rootfs, counter("original"))
    copy = client.new_container("copy", spec)
    out = stdio.capture()
    restored = copy.start(checkpoint_dir=str(tmp_path / "cp"), attach_stdio=out)
    first = _read_count_of(restored, "original")
    assert first >= before, (first, before)
    assert wait_until(lambda: any(n > first for n in _counted(out)), timeout=30), out.stdout[-200:]
    restored.force_delete()
    copy.delete()
    nothing_left(client)


def _read_count_of(task, name: str) -> int:
    out = stdio.capture()
    p = task.exec("read", oci.process_spec(["cat", f"/tmp/{name}.count"]), attach_stdio=out)
    p.wait(timeout=30)
    p.delete()
    return int(out.wait(timeout=30).stdout)


def test_checkpoint_from_one_client_restore_from_another(client, containerd, state_dir, namespace, rootfs,
                                                         tmp_path, criu, recorder):
    task, before, _ = _checkpoint_counter(client, rootfs, "shared", tmp_path / "cp")
    task.wait(timeout=30)
    task.delete()
    with libcontainerd.new_client(containerd.address, state_dir, namespace, recorder, timeout=60) as other:
        out = stdio.capture()
        restored = other.load_container("shared").start(checkpoint_dir=str(tmp_path / "cp"), attach_stdio=out)
        _assert_counts_on(restored, before, out)
        restored.force_delete()
        nothing_left(other)
    task.container.delete()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().rstrip("\x00")
    except OSError:  # a short-lived `sleep 0.1` of the counter
        return ""


def test_checkpoint_of_a_task_with_an_exec_running(client, rootfs, tmp_path, criu):
    ctr = client.new_container("withexec", oci.default_spec(rootfs, counter("withexec")))
    task = ctr.start()
    sleeper = task.exec("sleeper", oci.process_spec(["sleep", "1000"]))
    before = _wait_for_count(task, "before", lambda n: n >= 10)
    task.create_checkpoint(str(tmp_path / "cp"), exit=True)
    task.wait(timeout=30)
    sleeper.wait(timeout=30)  # the exec stops with the task
    sleeper.delete()
    task.delete()
    restored = ctr.start(checkpoint_dir=str(tmp_path / "cp"))
    assert _wait_for_count(restored, "after", lambda n: n >= before) >= before
    # runc dumps the task's own process tree; an exec'd process is the shim's child, not in it
    assert "sleep\x001000" not in [_cmdline(p.pid) for p in restored.summary()]
    restored.force_delete()
    ctr.delete()
    nothing_left(client)


def test_checkpoint_and_restore_of_a_terminal_task(client, rootfs, tmp_path, criu):
    task, before, out = _checkpoint_counter(client, rootfs, "tty", tmp_path / "cp", terminal=True)
    assert max(_counted(out)) >= before  # through the terminal
    task.wait(timeout=30)
    task.delete()
    out2 = stdio.capture()
    restored = task.container.start(checkpoint_dir=str(tmp_path / "cp"), attach_stdio=out2)
    _assert_counts_on(restored, before, out2)
    restored.force_delete()
    task.container.delete()
    nothing_left(client)


def _pause_events(recorder, cid: str) -> list[EventType]:
    return [t for t, _ in recorder.of(cid) if t in (EventType.PAUSED, EventType.RESUMED)]


def test_checkpoint_pauses_a_running_task_and_resumes_it(client, rootfs, tmp_path, criu, recorder):
    # As containerd's Go client: the image is taken of a frozen task, and the backend sees it.
    ctr = client.new_container("pausing", oci.default_spec(rootfs, ["sleep", "300"]))
    task = ctr.start()
    task.create_checkpoint(str(tmp_path / "cp"))
    recorder.wait_for("pausing", EventType.RESUMED)
    assert _pause_events(recorder, "pausing") == [EventType.PAUSED, EventType.RESUMED]
    assert task.status() is Status.RUNNING
    task.force_delete()
    ctr.delete()


def test_checkpoint_of_a_paused_task_leaves_it_paused(client, rootfs, tmp_path, criu, recorder):
    ctr = client.new_container("paused", oci.default_spec(rootfs, ["sleep", "300"]))
    task = ctr.start()
    task.pause()
    recorder.wait_for("paused", EventType.PAUSED)
    task.create_checkpoint(str(tmp_path / "cp"))
    assert (tmp_path / "cp" / "inventory.img").is_file()
    assert task.status() is Status.PAUSED
    task.resume()  # the one RESUMED: the checkpoint neither paused nor resumed it
    recorder.wait_for("paused", EventType.RESUMED)
    assert _pause_events(recorder, "paused") == [EventType.PAUSED, EventType.RESUMED]
    task.force_delete()
    ctr.delete()


def test_criu_failure_is_typed_mentions_criu_and_leaves_nothing(client, rootfs, tmp_path, criu, recorder):
    # CRIU refuses to dump an established TCP connection of a task in the host's network namespace.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        spec = oci.default_spec(rootfs, ["sh", "-c", f"sleep 1000 | nc 127.0.0.1 {port}"])
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
        ctr = client.new_container("tcp", spec)
        task = ctr.start()
        listener.settimeout(30)
        conn, _ = listener.accept()
        try:
            with pytest.raises(errdefs.System) as err:
                task.create_checkpoint(str(tmp_path / "out"))
            assert "criu" in str(err.value).lower()
            assert str(err.value).startswith("checkpoint of task tcp")
            # CRIU's own words from its log, which goes with the task: what a user can act on
            assert "CRIU says: inet: Connected TCP socket" in str(err.value), str(err.value)
            assert not (tmp_path / "out").exists()
            nothing_left(client)
            assert task.status() is Status.RUNNING  # resumed after the failed dump
            recorder.wait_for("tcp", EventType.RESUMED)
            assert _pause_events(recorder, "tcp") == [EventType.PAUSED, EventType.RESUMED]
        finally:
            conn.close()
            task.force_delete()
            ctr.delete()

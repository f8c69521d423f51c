"""Isolation and permissions: namespaces do not see each other, bundles and FIFOs are private, ids stay inside.

Against the session's containerd: two clients in two namespaces use the same container id without
seeing or touching each other's containers or events; bundle dirs are not writable by others and
FIFOs are 0600 or stricter even under a umask of 0; and no id -- traversal, symlink planted in the
state dir, exec id -- can make the client write outside its state dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import libcontainerd
from libcontainerd import _procfs, errdefs, oci, stdio, supervisor, testing
from libcontainerd.types import EventType as E
from libcontainerd.types import Status

from ..helpers import listing, spec, wait_until


@pytest.fixture
def two(containerd, namespace) -> Iterator[tuple[libcontainerd.Client, testing.RecordingBackend,
                                                  libcontainerd.Client, testing.RecordingBackend]]:
    parent = tempfile.mkdtemp(prefix="lcd-iso-")
    ra, rb = testing.RecordingBackend(), testing.RecordingBackend()
    a = libcontainerd.new_client(containerd.address, os.path.join(parent, "a"), namespace + "-a", ra, timeout=30)
    b = libcontainerd.new_client(containerd.address, os.path.join(parent, "b"), namespace + "-b", rb, timeout=30)
    try:
        yield a, ra, b, rb
    finally:
        for c in (a, b):
            testing.remove_containers(c)
            c.close()
        shutil.rmtree(parent)


def test_namespaces_do_not_see_or_touch_each_other(two, rootfs):
    a, ra, b, rb = two
    ctr_a = a.new_container("same", spec(rootfs, "sleep", "300"))
    task_a = ctr_a.start()
    ra.wait_for("same", E.START)

    assert b.list_containers() == []
    with pytest.raises(errdefs.NotFound):
        b.load_container("same")
    ctr_b = b.new_container("same", spec(rootfs, "sh", "-c", "echo b"))  # the same id is free in b
    out = stdio.capture()
    task_b = ctr_b.start(attach_stdio=out)
    assert task_b.wait(timeout=30).code == 0
    assert out.wait(timeout=30).stdout == b"b\n"
    rb.wait_for("same", E.EXIT)
    task_b.delete()
    ctr_b.delete()
    with pytest.raises(errdefs.NotFound):  # b's handle cannot reach a's task
        ctr_b.task()
    with pytest.raises(errdefs.NotFound):
        task_b.kill(signal.SIGKILL)

    assert task_a.status() is Status.RUNNING
    assert [c.id for c in a.list_containers()] == ["same"]
    assert [t for t, _ in ra.of("same")] == [E.CREATE, E.START], "a saw b's events"
    assert [t for t, _ in rb.of("same")] == [E.CREATE, E.START, E.EXIT], "b saw a's events"
    task_a.kill(signal.SIGKILL)
    assert task_a.wait(timeout=30).code == 137
    ra.wait_for("same", E.EXIT)
    assert [t for t, _ in rb.of("same")] == [E.CREATE, E.START, E.EXIT]
    task_a.delete()
    ctr_a.delete()


def test_the_same_id_in_two_namespaces_gets_two_cgroups(two, rootfs):
    """Without a cgroupsPath runc names the cgroup after the bare id: pausing a's "twin" froze b's."""
    a, _, b, _ = two
    ca = a.new_container("twin", spec(rootfs, "sleep", "300"))
    cb = b.new_container("twin", spec(rootfs, "sleep", "300"))
    assert a.load_container("twin").spec["linux"]["cgroupsPath"] == f"/{a.namespace}/twin"  # as stored
    ta, tb = ca.start(), cb.start()
    assert _procfs.cgroups(ta.pid).isdisjoint(_procfs.cgroups(tb.pid))
    ta.pause()
    try:
        def state() -> str:
            return _procfs.status(tb.pid)["State"]

        # A frozen task stays in D; a process just started may pass through it (loading its binary).
        assert wait_until(lambda: "D (" not in state(), timeout=10), f"b's twin is frozen: {state()}"
        out = stdio.capture()
        p = tb.exec("alive", oci.process_spec(["echo", "alive"]), attach_stdio=out)
        assert p.wait(timeout=30).code == 0 and out.wait(timeout=30).stdout == b"alive\n"
        p.delete()
    finally:
        ta.resume()
    for task in (ta, tb):
        task.force_delete()
    # A path of the caller's own, and runc's systemd driver (paths "slice:prefix:name"), are left alone.
    own = spec(rootfs, "true")
    own["linux"]["cgroupsPath"] = f"/mine/{a.namespace}"
    a.new_container("own", own)
    assert a.load_container("own").spec["linux"]["cgroupsPath"] == f"/mine/{a.namespace}"
    plain = spec(rootfs, "true")
    a.new_container("sd", plain, runtime_options={"systemd_cgroup": True})
    assert "cgroupsPath" not in a.load_container("sd").spec["linux"]
    assert "cgroupsPath" not in plain["linux"]  # the caller's dict is not changed


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_bundles_and_fifos_are_private_even_with_umask_0(client, rootfs):
    old = os.umask(0)
    try:
        ctr = client.new_container("private", spec(rootfs, "sleep", "300"))
        task = ctr.start(with_stdin=True, attach_stdio=stdio.capture())
        proc = task.exec("ex", oci.process_spec(["sleep", "300"]), with_stdin=True, attach_stdio=stdio.capture())
    finally:
        os.umask(old)
    try:
        assert _mode(client.state_dir) & 0o022 == 0, oct(_mode(client.state_dir))
        bundle = ctr.bundle_dir
        assert os.path.dirname(bundle) == client.state_dir
        assert _mode(bundle) & 0o022 == 0, f"bundle dir is writable by others: {oct(_mode(bundle))}"
        fifos = sorted(os.listdir(bundle))
        assert fifos == ["ex-stderr", "ex-stdin", "ex-stdout", "private-stderr", "private-stdin", "private-stdout"]
        for name in fifos:
            path = os.path.join(bundle, name)
            assert stat.S_ISFIFO(os.lstat(path).st_mode)
            assert _mode(path) & 0o077 == 0, f"{name} is open to other users: {oct(_mode(path))}"
            assert os.lstat(path).st_uid == os.geteuid()
    finally:
        proc.kill(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.delete()
        task.force_delete()
        ctr.delete()


def test_a_symlink_planted_in_the_state_dir_is_not_followed(client, rootfs):
    outside = tempfile.mkdtemp(prefix="lcd-outside-")
    try:
        os.symlink(outside, os.path.join(client.state_dir, "planted"))
        with pytest.raises(errdefs.LibcontainerdError):
            ctr = client.new_container("planted", spec(rootfs, "sh", "-c", "echo hi"))
            try:
                task = ctr.start(attach_stdio=stdio.capture())
                task.wait(timeout=30)
                task.delete()
            finally:
                ctr.delete()
        assert os.listdir(outside) == [], "files were written outside the state dir"
        assert os.path.islink(os.path.join(client.state_dir, "planted"))
        assert client.list_containers() == []
    finally:
        os.unlink(os.path.join(client.state_dir, "planted"))
        shutil.rmtree(outside)


@pytest.fixture
def nested_client(containerd, namespace, tmp_path_factory) -> Iterator[libcontainerd.Client]:
    """A client whose state dir sits two private levels deep, so that nothing else writes beside it
    (the shared /tmp, where other test runs come and go, cannot tell an escaping id's writes apart)."""
    top = tmp_path_factory.mktemp("escape")
    state = top / "parent" / "state"
    state.mkdir(parents=True)
    c = libcontainerd.new_client(containerd.address, str(state), namespace, None, timeout=60)
    try:
        yield c
    finally:
        testing.remove_containers(c)
        c.close()


def _around(state_dir: str) -> tuple[list[str], list[str]]:
    """What is beside the state dir and beside its parent (the places an id like '../x' would write to)."""
    parent = os.path.dirname(state_dir)
    return sorted(os.listdir(parent)), sorted(os.listdir(os.path.dirname(parent)))


@given(st.one_of(
    st.sampled_from(["..", "../x", "../../tmp/x", "x/../..", "/tmp/x", "./x", "x/y", "~", "x\x00", "..\\x"]),
    st.text(alphabet=st.sampled_from("./\\x\x00~"), min_size=1, max_size=12),
))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_id_writes_outside_the_state_dir(nested_client, rootfs, evil):
    client = nested_client
    before = _around(client.state_dir)
    try:
        client.new_container(evil, spec(rootfs, "true"))
    except errdefs.InvalidParameter:
        pass
    else:  # a harmless id such as 'x': it must live inside the state dir
        ctr = client.load_container(evil)
        assert os.path.dirname(ctr.bundle_dir) == client.state_dir
        ctr.delete()
    assert _around(client.state_dir) == before
    assert listing(client.state_dir) == []


def test_no_exec_id_writes_outside_the_bundle(nested_client, rootfs):
    client = nested_client
    ctr = client.new_container("exec-host", spec(rootfs, "sleep", "300"))
    task = ctr.start()
    before = _around(client.state_dir)
    try:
        for evil in ["../x", "../../x", "/tmp/x", "..", ".", "x/y", "x\x00y", "a" * 200]:
            with pytest.raises(errdefs.InvalidParameter):
                task.exec(evil, oci.process_spec(["true"]), attach_stdio=stdio.capture())
        assert os.listdir(ctr.bundle_dir) == []
        assert _around(client.state_dir) == before
        assert sorted(os.listdir(client.state_dir)) == ["exec-host"]
    finally:
        task.force_delete()
        ctr.delete()


@pytest.fixture
def second_daemon() -> Iterator[supervisor.Daemon]:
    """A private containerd beside the session's, with a root of its own."""
    owner = testing.PrivateContainerd("lcd-2nd-", health_failures=0)
    with owner as daemon:
        yield daemon
    assert not owner.leftovers and not owner.remaining


def test_two_private_daemons_keep_apart_the_same_namespace_and_id(containerd, second_daemon, namespace, rootfs):
    """runc's default root is machine-wide: without a runc root per daemon, the second create fails
    ("container with given ID already exists") and its clean-up deletes the first daemon's container."""
    assert containerd.runc_root != second_daemon.runc_root
    parent = tempfile.mkdtemp(prefix="lcd-iso2-")
    a = libcontainerd.new_client(containerd.address, os.path.join(parent, "a"), namespace, None, timeout=30)
    b = libcontainerd.new_client(second_daemon.address, os.path.join(parent, "b"), namespace, None, timeout=30)
    try:
        assert (a.runc_root, b.runc_root) == (containerd.runc_root, second_daemon.runc_root)
        task_a = a.new_container("twin", spec(rootfs, "sleep", "1001")).start()
        task_b = b.new_container("twin", spec(rootfs, "sleep", "1002")).start()
        assert task_a.pid != task_b.pid
        assert _procfs.cmdline(task_a.pid) == ["sleep", "1001"]
        assert _procfs.cmdline(task_b.pid) == ["sleep", "1002"]
        for daemon in (containerd, second_daemon):
            assert os.path.isfile(os.path.join(daemon.runc_root, namespace, "twin", "state.json"))
        assert not os.path.exists(os.path.join("/run/containerd/runc", namespace, "twin"))

        # Killing and removing b's twin leaves a's running, and the other way round.
        task_b.kill(signal.SIGKILL)
        assert task_b.wait(timeout=30).code == 137
        task_b.delete()
        b.load_container("twin").delete()
        assert task_a.status() is Status.RUNNING
        assert _procfs.cmdline(task_a.pid) == ["sleep", "1001"]
        task_a.kill(signal.SIGKILL)
        assert task_a.wait(timeout=30).code == 137
        task_a.delete()
        a.load_container("twin").delete()
        assert not os.path.exists(os.path.join(containerd.runc_root, namespace, "twin"))
    finally:
        for c in (a, b):
            testing.remove_containers(c)
            c.close()
        shutil.rmtree(parent)


def test_a_client_of_a_socket_without_a_runc_root_file_keeps_containerds_default(containerd, state_dir):
    """A system containerd (no file beside its socket) keeps runc's default root: nothing is set."""
    with libcontainerd.new_client("/nonexistent/containerd.sock", state_dir, "t-x", None) as client:
        assert client.runc_root is None
    with libcontainerd.new_client(containerd.address, state_dir, "t-x", None, runc_root="/run/x") as client:
        assert client.runc_root == "/run/x"
    with pytest.raises(errdefs.InvalidParameter, match="runc_root"):
        libcontainerd.new_client(containerd.address, state_dir, "t-x", None, runc_root="rel")

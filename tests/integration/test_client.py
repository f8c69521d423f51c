"""The client core against the real daemon: version, serving, errors mapped from real failures."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

import libcontainerd
from libcontainerd import errdefs, oci, testing


def test_version_is_the_daemons(client):
    v = client.version()
    binary = testing.containerd_tool("containerd")
    assert binary is not None
    # "containerd <package> <version> [<revision>]": containerd 2.x builds of Debian print no revision.
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.split()
    assert (v.version, v.revision) == (out[2], out[3] if len(out) > 3 else "")
    assert client.is_serving(timeout=5)


def test_repr_names_address_and_namespace(client, namespace):
    assert namespace in repr(client) and client.address in repr(client) and "open" in repr(client)


def test_unix_url_forms(containerd, state_dir, namespace):
    for address in (containerd.address, "unix://" + containerd.address):
        with libcontainerd.new_client(address, state_dir, namespace, None) as c:
            assert c.version().version


def test_nothing_serving_is_unavailable_or_deadline(state_dir, namespace):
    with tempfile.TemporaryDirectory() as tmp:
        dead = os.path.join(tmp, "nobody.sock")
        with libcontainerd.new_client(dead, state_dir, namespace, None) as c:
            assert c.is_serving(timeout=1) is False
            with pytest.raises(errdefs.Unavailable) as err:
                c.version()
            assert "\n" not in str(err.value)
            with pytest.raises(errdefs.Unavailable):
                c.load_container("x")
        with libcontainerd.new_client(dead, state_dir, namespace, None, timeout=0.5) as c, \
                pytest.raises((errdefs.Deadline, errdefs.Unavailable)):
            c.version()


def test_real_errors_map_to_their_classes(client, rootfs):
    with pytest.raises(errdefs.NotFound):
        client.load_container("missing")
    ctr = client.new_container("errs", oci.default_spec(rootfs, ["sleep", "300"]))
    try:
        with pytest.raises(errdefs.Conflict):
            client.new_container("errs", oci.default_spec(rootfs, ["true"]))
        task = ctr.start()
        with pytest.raises(errdefs.Conflict):
            ctr.start()  # the task exists already
        with pytest.raises(errdefs.Conflict):
            ctr.delete()  # a container with a running task
        with pytest.raises(errdefs.Conflict):
            task.delete()  # a running task
        task.force_delete()
    finally:
        ctr.delete()


def test_a_runtime_failure_carries_runcs_words(client, rootfs, state_dir):
    ctr = client.new_container("nobinary", oci.default_spec(rootfs, ["/no/such/binary"]))
    with pytest.raises(errdefs.LibcontainerdError) as err:
        ctr.start()
    assert "no such file" in str(err.value).lower() or "not found" in str(err.value).lower()
    assert str(err.value).startswith("task nobinary")
    with pytest.raises(errdefs.NotFound):
        ctr.task()  # the failed start left no task behind
    ctr.delete()
    assert os.listdir(state_dir) == []


def test_bad_client_arguments(containerd, state_dir):
    with pytest.raises(errdefs.InvalidParameter):
        libcontainerd.new_client(containerd.address, state_dir, "bad/namespace", None)
    with pytest.raises(errdefs.InvalidParameter):
        libcontainerd.new_client(containerd.address, state_dir, "ns", object())
    with pytest.raises(errdefs.InvalidParameter):
        libcontainerd.new_client(containerd.address, state_dir, "ns", None, timeout=-1)
    with pytest.raises(errdefs.InvalidParameter):
        libcontainerd.new_client("no-port", state_dir, "ns", None)


def test_default_timeout_can_be_changed(containerd, state_dir):
    with libcontainerd.new_client(containerd.address, state_dir, "ns-timeout", None, timeout=30) as c:
        assert c.timeout == 30
        for bad in (0, -1, True, "5"):
            with pytest.raises(errdefs.InvalidParameter, match="timeout"):
                c.timeout = bad
        assert c.timeout == 30
        c.timeout = 2.5
        assert c.timeout == 2.5
        c.timeout = None
        assert c.timeout is None
        assert c.version().version
        # That a new deadline applies to the next call is tested on a frozen containerd (test_hardening_faults).

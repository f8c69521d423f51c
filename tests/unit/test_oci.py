"""Unit tests of libcontainerd.oci: spec shape (as containerd 1.6 builds it), JSON, validation."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import pytest

from libcontainerd import _validation as valid
from libcontainerd import errdefs, oci

ARGS = ["sh", "-c", "echo hi"]


def test_default_spec_matches_containerd_defaults() -> None:
    spec = oci.default_spec("/tmp/rootfs", ARGS)
    assert spec["ociVersion"] == "1.0.2-dev"
    assert spec["root"] == {"path": "/tmp/rootfs", "readonly": False}
    assert "hostname" not in spec
    process = spec["process"]
    assert process["args"] == ARGS
    assert process["env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert process["cwd"] == "/"
    assert process["terminal"] is False
    assert process["user"] == {"uid": 0, "gid": 0, "additionalGids": []}
    assert process["noNewPrivileges"] is True
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    caps = process["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}
    for kind in ("bounding", "effective", "permitted"):
        assert caps[kind] == list(oci.DEFAULT_CAPABILITIES)
    assert len(oci.DEFAULT_CAPABILITIES) == 14
    assert {"CAP_CHOWN", "CAP_KILL", "CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"} <= set(caps["bounding"])
    assert "CAP_SYS_ADMIN" not in caps["bounding"]

    linux = spec["linux"]
    assert [ns["type"] for ns in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert all(set(ns) == {"type"} for ns in linux["namespaces"])
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert "cgroupsPath" not in linux
    assert "/proc/kcore" in linux["maskedPaths"]
    assert "/sys/firmware" in linux["maskedPaths"]
    assert linux["readonlyPaths"] == ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def test_default_mounts() -> None:
    mounts = {m["destination"]: m for m in oci.default_spec("/r", ARGS)["mounts"]}
    assert list(mounts) == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/run"]
    assert (mounts["/proc"]["type"], mounts["/proc"]["source"]) == ("proc", "proc")
    assert mounts["/dev"]["type"] == "tmpfs"
    assert mounts["/dev/pts"]["type"] == "devpts"
    assert {"newinstance", "ptmxmode=0666", "mode=0620", "gid=5"} <= set(mounts["/dev/pts"]["options"])
    assert mounts["/dev/shm"]["type"] == "tmpfs"
    assert mounts["/dev/mqueue"]["type"] == "mqueue"
    assert mounts["/sys"]["type"] == "sysfs"
    assert "ro" in mounts["/sys"]["options"]
    assert mounts["/run"]["type"] == "tmpfs"
    assert all(isinstance(m["options"], list) for m in mounts.values())


def test_options_are_applied() -> None:
    spec = oci.default_spec(
        pathlib.Path("/srv/root"),
        ["top"],
        env={"LANG": "C", "PATH": "/bin"},
        cwd="/work",
        terminal=True,
        user=(0, 0),
        hostname="box",
        readonly_rootfs=True,
        additional_gids=[10, 11],
        cgroups_path="/ns/ctr",
    )
    assert spec["root"] == {"path": "/srv/root", "readonly": True}
    assert spec["hostname"] == "box"
    assert spec["linux"]["cgroupsPath"] == "/ns/ctr"
    process = spec["process"]
    assert process["terminal"] is True
    assert process["cwd"] == "/work"
    # A caller's PATH replaces the default in place; TERM comes with a terminal.
    assert process["env"] == ["PATH=/bin", "LANG=C", "TERM=xterm"]
    assert process["user"]["additionalGids"] == [10, 11]


def test_env_as_list_and_caller_term_wins() -> None:
    process = oci.process_spec(["sh"], env=["A=1", "B=x=y", "TERM=vt100", "EMPTY="], terminal=True)
    assert process["env"] == [oci.DEFAULT_PATH_ENV, "A=1", "B=x=y", "TERM=vt100", "EMPTY="]


def test_non_root_user_has_no_effective_capabilities() -> None:
    process = oci.default_spec("/r", ARGS, user=(1000, 1000))["process"]
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": []}
    assert process["capabilities"]["bounding"] == list(oci.DEFAULT_CAPABILITIES)
    assert process["capabilities"]["effective"] == []
    assert process["capabilities"]["permitted"] == []


def test_process_spec_is_the_default_specs_process_block() -> None:
    kwargs: dict[str, Any] = {"env": {"X": "1"}, "cwd": "/tmp", "terminal": True, "user": (5, 6)}
    assert oci.process_spec(["ls"], **kwargs) == oci.default_spec("/r", ["ls"], **kwargs)["process"]


def test_specs_are_json_serialisable_and_fresh() -> None:
    spec = oci.with_mounts(
        oci.with_user_namespace(oci.with_memory_limit(oci.default_spec("/r", ARGS), 1 << 20), [(0, 1000, 10)]),
        [oci.bind_mount("/data", "/data")],
    )
    assert json.loads(json.dumps(spec)) == spec
    first = oci.default_spec("/r", ARGS)
    first["process"]["capabilities"]["bounding"].clear()
    first["mounts"].clear()
    second = oci.default_spec("/r", ARGS)
    assert second["process"]["capabilities"]["bounding"] == list(oci.DEFAULT_CAPABILITIES)
    assert len(second["mounts"]) == 7


def test_with_memory_limit_copies() -> None:
    spec = oci.default_spec("/r", ARGS)
    before = copy.deepcopy(spec)
    limited = oci.with_memory_limit(spec, 64 << 20)
    assert spec == before
    assert limited["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    assert limited["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert oci.with_memory_limit({}, 4096)["linux"]["resources"]["memory"]["limit"] == 4096


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "1g", 2**63])
def test_with_memory_limit_rejects(limit: Any) -> None:
    with pytest.raises(errdefs.InvalidParameter, match="memory limit"):
        oci.with_memory_limit(oci.default_spec("/r", ARGS), limit)


def test_with_user_namespace() -> None:
    spec = oci.default_spec("/r", ARGS)
    once = oci.with_user_namespace(spec, [(0, 100000, 65536)])
    assert "uidMappings" not in spec["linux"]
    assert [ns["type"] for ns in once["linux"]["namespaces"]].count("user") == 1
    assert once["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert once["linux"]["gidMappings"] == once["linux"]["uidMappings"]
    twice = oci.with_user_namespace(once, [(65536, 300000, 1)], gid_map=[(65536, 400000, 1)])
    assert [ns["type"] for ns in twice["linux"]["namespaces"]].count("user") == 1
    assert [m["hostID"] for m in twice["linux"]["uidMappings"]] == [100000, 300000]
    assert [m["hostID"] for m in twice["linux"]["gidMappings"]] == [100000, 400000]


@pytest.mark.parametrize(
    "uid_map",
    [[], [(0, 1)], [(0, -1, 10)], [(0, 1, 0)], "0 1000 1", [("0", 1000, 1)], 5],
)
def test_with_user_namespace_rejects(uid_map: Any) -> None:
    with pytest.raises(errdefs.InvalidParameter, match="uid_map"):
        oci.with_user_namespace(oci.default_spec("/r", ARGS), uid_map)


def test_with_mounts_appends_and_replaces_in_place() -> None:
    spec = oci.default_spec("/r", ARGS)
    shm = {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["size=1g"]}
    out = oci.with_mounts(spec, [oci.bind_mount("/host/data", "/data", readonly=True), shm])
    destinations = [m["destination"] for m in out["mounts"]]
    assert destinations == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/run", "/data"]
    assert out["mounts"][3]["options"] == ["size=1g"]
    assert out["mounts"][-1] == {
        "destination": "/data",
        "type": "bind",
        "source": "/host/data",
        "options": ["rbind", "ro"],
    }
    assert len(spec["mounts"]) == 7
    assert oci.bind_mount("/a", "/b")["options"] == ["rbind", "rw"]


@pytest.mark.parametrize(
    "mounts",
    [
        [{"destination": "relative"}],
        [{"type": "bind"}],
        ["/data"],
        {"destination": "/x"},
        [{"destination": "/x", "options": "ro"}],
    ],
)
def test_with_mounts_rejects(mounts: Any) -> None:
    with pytest.raises(errdefs.InvalidParameter, match="mount"):
        oci.with_mounts(oci.default_spec("/r", ARGS), mounts)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"args": []}, "non-empty"),
        ({"args": "echo hi"}, "list of strings"),
        ({"args": ["echo", 1]}, r"args\[1\] must be a string"),
        ({"args": ["echo", "a\x00b"]}, "NUL"),
        ({"args": None}, "list of strings"),
        ({"user": (0,)}, "pair"),
        ({"user": "root"}, "pair"),
        ({"user": (-1, 0)}, "uid"),
        ({"user": (0, 2**32)}, "gid"),
        ({"user": (True, 0)}, "uid"),
        ({"env": "A=1"}, "mapping or a list"),
        ({"env": ["A"]}, "KEY=value"),
        ({"env": ["=1"]}, "non-empty"),
        ({"env": {"A": 1}}, "env 'A' must be a string"),
        ({"env": {"A=B": "1"}}, "must not contain"),
        ({"env": [1]}, r"env\[0\]"),
        ({"cwd": "relative"}, "absolute"),
        ({"terminal": "yes"}, "terminal"),
        ({"additional_gids": [-5]}, "additional gid"),
    ],
)
def test_process_validation(kwargs: dict[str, Any], match: str) -> None:
    call: dict[str, Any] = {"args": ARGS, **kwargs}
    args = call.pop("args")
    with pytest.raises(errdefs.InvalidParameter, match=match) as info:
        oci.process_spec(args, **call)
    assert isinstance(info.value, ValueError)
    with pytest.raises(errdefs.InvalidParameter, match=match):
        oci.default_spec("/r", args, **call)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rootfs": ""}, "rootfs"),
        ({"rootfs": 42}, "rootfs"),
        ({"hostname": 3}, "hostname"),
        ({"readonly_rootfs": "no"}, "readonly_rootfs"),
        ({"cgroups_path": 1}, "cgroups_path"),
    ],
)
def test_spec_validation(kwargs: dict[str, Any], match: str) -> None:
    call: dict[str, Any] = {"rootfs": "/r", **kwargs}
    rootfs = call.pop("rootfs")
    with pytest.raises(errdefs.InvalidParameter, match=match):
        oci.default_spec(rootfs, ARGS, **call)


def test_a_hostname_longer_than_the_kernels_64_bytes_is_refused_up_front() -> None:
    """runc's sethostname fails with "invalid argument" beyond HOST_NAME_MAX: say so before any RPC."""
    assert oci.default_spec("/r", ["sh"], hostname="h" * 64)["hostname"] == "h" * 64
    with pytest.raises(errdefs.InvalidParameter, match="longer than the kernel's 64 bytes"):
        oci.default_spec("/r", ["sh"], hostname="h" * 65)
    with pytest.raises(errdefs.InvalidParameter, match="spec 'hostname'"):
        valid.runtime_spec({**oci.default_spec("/r", ["sh"]), "hostname": "h" * 65})

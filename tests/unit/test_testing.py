"""libcontainerd.testing without a daemon: the busybox rootfs, leak checks, the recording backend and sink."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from libcontainerd import errdefs, supervisor, testing
from libcontainerd.types import EventInfo, EventType


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> str:
    testing.require_tools("busybox")
    return testing.busybox_rootfs(tmp_path_factory.mktemp("bb") / "rootfs")


def test_rootfs_has_busybox_and_every_applet(built: str) -> None:
    applets = subprocess.run(
        [testing.find_busybox(), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(applets) > 100
    for applet in applets:
        assert os.path.islink(os.path.join(built, applet)) or applet == "bin/busybox"
    assert os.readlink(os.path.join(built, "bin/sh")) == "busybox"
    assert os.readlink(os.path.join(built, "usr/bin/env")) == "../../bin/busybox"
    assert os.path.samefile(os.path.join(built, "usr/bin/env"), os.path.join(built, "bin/busybox"))
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "home"):
        assert os.path.isdir(os.path.join(built, d)), d


def test_rootfs_busybox_runs(built: str) -> None:
    out = subprocess.run(
        [os.path.join(built, "bin/sh"), "-c", "echo hello from busybox"], capture_output=True, text=True, check=True
    )
    assert out.stdout == "hello from busybox\n"


def test_rootfs_users_and_modes(built: str) -> None:
    passwd = [line.split(":") for line in Path(built, "etc/passwd").read_text().splitlines()]
    assert passwd[0][:4] == ["root", "x", "0", "0"]
    assert any(entry[0] == "user" and entry[2] == "1000" and entry[3] == "1000" for entry in passwd)
    assert "user:x:1000:" in Path(built, "etc/group").read_text()
    assert Path(built, "etc/hostname").read_text().strip()
    assert stat.S_IMODE(os.stat(os.path.join(built, "tmp")).st_mode) == 0o1777
    if os.geteuid() == 0:
        assert os.stat(os.path.join(built, "home/user")).st_uid == 1000


def test_rootfs_is_reused(built: str) -> None:
    before = os.stat(os.path.join(built, "bin/busybox"))
    assert testing.busybox_rootfs(built) == built
    assert os.stat(os.path.join(built, "bin/busybox")).st_ino == before.st_ino
    assert [p for p in os.listdir(os.path.dirname(built)) if p != "rootfs"] == []


def test_rootfs_into_an_existing_empty_dir(tmp_path: Path) -> None:
    testing.require_tools("busybox")
    dest = tmp_path / "empty"
    dest.mkdir()
    assert testing.busybox_rootfs(dest) == str(dest)
    assert os.path.islink(dest / "bin/sh")


def test_rootfs_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "precious").write_text("keep me")
    with pytest.raises(errdefs.InvalidParameter, match="not a rootfs built by busybox_rootfs"):
        testing.busybox_rootfs(tmp_path / "dest")
    assert os.listdir(tmp_path / "dest") == ["precious"]


def test_dynamic_busybox_is_refused(tmp_path: Path) -> None:
    dynamic = os.path.realpath(sys.executable)  # a dynamically linked ELF
    with pytest.raises(errdefs.InvalidParameter, match="not a statically linked busybox"):
        testing.busybox_rootfs(tmp_path / "rootfs", busybox=dynamic)
    assert os.listdir(tmp_path) == []


def test_missing_busybox_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(errdefs.NotFound, match="busybox-static"):
        testing.busybox_rootfs(tmp_path / "rootfs", busybox=str(tmp_path / "no-busybox"))
    assert os.listdir(tmp_path) == []


def test_open_fds_counts_descriptors() -> None:
    before = testing.open_fds()
    r, w = os.pipe()
    try:
        assert testing.open_fds() == before + 2
    finally:
        os.close(r)
        os.close(w)
    assert testing.open_fds() == before


def test_leftover_threads_names_new_ones_only() -> None:
    baseline = threading.enumerate()
    release = threading.Event()
    threads = [
        threading.Thread(target=release.wait, name="libcontainerd-test-helper", daemon=True),
        threading.Thread(target=release.wait, name="someone-else", daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        assert testing.leftover_threads(baseline) == ["libcontainerd-test-helper"]
        assert testing.leftover_threads(baseline, prefix="") == ["libcontainerd-test-helper", "someone-else"]
    finally:
        release.set()
        for t in threads:
            t.join()
    assert testing.leftover_threads(baseline, prefix="") == []


def test_require_tools_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"must not skip in CI.*no-such-tool-xyz"):
        testing.require_tools("no-such-tool-xyz")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-xyz"):
        testing.require_tools("no-such-tool-xyz")
    if shutil.which("sh"):
        testing.require_tools("sh")  # present: returns


def test_supervisor_config_is_valid_toml() -> None:
    tomllib = pytest.importorskip("tomllib")
    lines = supervisor._render_toml(
        {
            "version": 2,
            "root": 'C:\\odd "quoted"\tpath\x7f',
            "disabled_plugins": ["io.containerd.grpc.v1.cri"],
            "oom_score": -999,
            "grpc": {"address": "/tmp/é/containerd.sock", "uid": 0},
            "plugins": {"io.containerd.internal.v1.opt": {"path": "/x", "flag": True, "ratio": 0.5}},
        }
    )
    parsed = tomllib.loads("\n".join(lines))
    assert parsed["root"] == 'C:\\odd "quoted"\tpath\x7f'
    assert parsed["oom_score"] == -999
    assert parsed["grpc"] == {"address": "/tmp/é/containerd.sock", "uid": 0}
    assert parsed["plugins"]["io.containerd.internal.v1.opt"] == {"path": "/x", "flag": True, "ratio": 0.5}
    with pytest.raises(errdefs.InvalidParameter, match="oops"):
        supervisor._render_toml({"oops": object()})


def test_supervisor_rejects_bad_options(tmp_path: Path) -> None:
    root = tmp_path / "r"
    with pytest.raises(errdefs.InvalidParameter, match="log_level"):
        supervisor.start(str(root), log_level="loud")
    with pytest.raises(errdefs.InvalidParameter, match="set by the supervisor"):
        supervisor.start(str(root), root="/elsewhere")
    with pytest.raises(errdefs.InvalidParameter, match=r"grpc\.address"):
        supervisor.start(str(root), grpc={"address": "/elsewhere.sock"})
    assert not root.exists()


def test_recording_backend_waits_for_an_event_from_another_thread():
    rec = testing.RecordingBackend()
    info = EventInfo("web", "e1", pid=42, exit_code=3)
    t = threading.Timer(0.05, rec.process_event, ("web", EventType.EXIT, info))
    t.name = "libcontainerd-test-deliverer"
    t.start()
    try:
        assert rec.wait_for("web", EventType.EXIT, "e1", timeout=30) is info
    finally:
        t.join()
    rec.process_event("web", EventType.START, EventInfo("web", "web"))
    assert rec.of("web") == [(EventType.EXIT, "e1"), (EventType.START, "web")]
    assert rec.of("other") == []
    assert rec.threads == {"libcontainerd-test-deliverer", threading.current_thread().name}
    with pytest.raises(TimeoutError, match=r"no EventType.EXIT for web/web within 0 s; got \[\(<EventType.EXIT"):
        rec.wait_for("web", EventType.EXIT, "web", timeout=0)  # an exit of another process does not count


def test_recording_backend_hook_runs_before_the_event_is_recorded():
    rec = testing.RecordingBackend()
    seen_then: list[int] = []
    rec.hook = lambda cid, event_type, info: seen_then.append(len(rec.events))
    rec.process_event("web", EventType.CREATE, EventInfo("web", "web"))
    assert seen_then == [0] and len(rec.events) == 1
    rec.hook = lambda *event: (_ for _ in ()).throw(RuntimeError("backend failed"))
    with pytest.raises(RuntimeError):
        rec.process_event("web", EventType.START, EventInfo("web", "web"))
    assert rec.of("web") == [(EventType.CREATE, "web")]  # a failing hook records nothing


def test_counting_sink_counts_writes_from_many_threads():
    sink = testing.CountingSink()
    chunk = memoryview(bytearray(1000))

    def writes() -> None:
        for _ in range(1000):
            sink.write(chunk)

    threads = [threading.Thread(target=writes, name=f"libcontainerd-test-writer-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sink.count == 4 * 1000 * 1000
    sink.flush()
    assert sink.flushes == 1
    sink.close()
    with pytest.raises(ValueError):
        sink.flush()  # a closed stream says so, as every io object does


def _fake_criu(path: Path, says: str) -> str:
    path.write_text(f"#!/bin/sh\necho '{says}'\n")
    path.chmod(0o755)
    return str(path)


def test_find_criu_takes_the_first_that_passes_its_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIBCONTAINERD_CRIU", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    broken = _fake_criu(tmp_path / "broken", "Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable")
    good = _fake_criu(tmp_path / "good", "Looks good.")
    assert testing.find_criu([broken, tmp_path / "missing", good]) == good
    assert testing.find_criu([broken]) is None
    monkeypatch.setenv("LIBCONTAINERD_CRIU", good)
    assert testing.find_criu([]) == good


def test_daemon_env_puts_the_criu_dir_first_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = testing.daemon_env("/opt/criu/bin/criu")
    assert env is not None and env["PATH"] == "/opt/criu/bin:/usr/bin:/bin"
    assert testing.daemon_env(None) is None
    env = testing.daemon_env(None, "/run/lcd-xdg")
    assert env is not None and (env["PATH"], env["XDG_RUNTIME_DIR"]) == ("/usr/bin:/bin", "/run/lcd-xdg")

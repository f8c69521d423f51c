"""The managed containerd (libcontainerd.supervisor) against the real daemon binary."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest
from google.protobuf import empty_pb2

from libcontainerd import _procfs, errdefs, supervisor, testing
from libcontainerd._api.containerd.api.services.version.v1.version_pb2_grpc import VersionStub

from ..helpers import wait_until

StartFn = Callable[..., supervisor.Daemon]


@pytest.fixture
def tmp_root() -> Iterator[str]:
    """A short temp dir for a daemon of the test's own; whatever it started is cleaned up after."""
    testing.require_containerd()
    tmp = tempfile.mkdtemp(prefix="lcd-sv-")
    try:
        yield tmp
    finally:
        testing.cleanup_root(os.path.join(tmp, "containerd"))
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def start_own(tmp_root: str) -> Iterator[StartFn]:
    """Start a private daemon under ``tmp_root``; every daemon started is stopped and cleaned after the test."""
    started: list[supervisor.Daemon] = []

    def start(**opts: Any) -> supervisor.Daemon:
        daemon = testing.start_daemon(tmp_root, **opts)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        testing.cleanup_root(daemon)


def _version(address: str) -> str:
    with grpc.insecure_channel("unix://" + address) as channel:
        response = VersionStub(channel).Version(empty_pb2.Empty(), timeout=10)
    return str(response.version)


def _binary_version() -> str:
    # "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"; 2.x may print no revision
    binary = testing.containerd_tool("containerd")
    assert binary is not None
    return subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.split()[2]


def test_version_through_generated_stub(containerd: supervisor.Daemon) -> None:
    assert _version(containerd.address) == _binary_version()
    assert repr(containerd) == f"<Daemon pid={containerd.pid} address={containerd.address} restarts=0>"


def test_config_is_private(start_own: StartFn) -> None:
    daemon = start_own(health_failures=0)
    config = Path(daemon.config_path).read_text()
    assert f'root = "{daemon.root_dir}/root"' in config
    if daemon.release.major >= 2:  # 2.x reads version 3 configs, and split CRI into several plugins
        assert config.startswith("# Written by libcontainerd.supervisor; rewritten at each start.\nversion = 3\n")
        assert '"io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.grpc.v1.cri"' in config
    else:
        assert "\nversion = 2\n" in config
        assert 'disabled_plugins = ["io.containerd.grpc.v1.cri"]' in config
    log = Path(daemon.log_path).read_text()
    assert "Configuration migrated" not in log and "starting cri plugin" not in log  # read as written, no CRI
    assert "/opt/containerd" not in config
    assert os.path.isdir(os.path.join(daemon.root_dir, "root", "opt"))
    assert int(Path(daemon.pid_path).read_text()) == daemon.pid
    assert list(testing.daemon_processes(daemon)) == [daemon.pid]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def test_env_is_the_daemons_environment_and_survives_a_restart(start_own: StartFn) -> None:
    # The runc shim finds CRIU on containerd's PATH: the harness passes it this way.
    env = {**os.environ, "PATH": "/opt/lcd-test-bin:" + os.environ["PATH"], "LCD_TEST_MARK": "1"}
    daemon = start_own(health_failures=0, env=env)
    # ... with the binary's own directory first, where containerd finds its own shim
    assert _environ(daemon.pid)["PATH"] == os.path.dirname(daemon.binary) + ":" + env["PATH"]
    daemon.kill(signal.SIGKILL)
    assert daemon.wait_serving(60)
    assert daemon.restarts == 1
    assert _environ(daemon.pid)["LCD_TEST_MARK"] == "1"


def test_adopts_daemon_left_running_by_another_process(start_own: StartFn, tmp_root: str) -> None:
    script = textwrap.dedent(
        f"""
        from libcontainerd import testing
        daemon = testing.start_daemon({tmp_root!r}, kill_with_parent=False, health_failures=0)
        print(daemon.pid, flush=True)
        daemon.detach()
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    pid = int(child.stdout)
    assert pid in testing.daemon_processes(os.path.join(tmp_root, "containerd"))

    daemon = start_own()
    assert daemon.adopted
    assert daemon.pid == pid
    assert daemon.wait_serving(10)
    daemon.stop()
    assert testing.daemon_processes(daemon) == {}
    assert not os.path.exists(daemon.pid_path)


def test_second_supervisor_on_one_root_is_a_conflict(start_own: StartFn) -> None:
    daemon = start_own(health_failures=0)
    with pytest.raises(errdefs.Conflict, match="already managed"):
        supervisor.start(daemon.root_dir, daemon.state_dir)
    assert list(testing.daemon_processes(daemon)) == [daemon.pid]
    assert daemon.wait_serving(10)


def test_killed_daemon_is_restarted(start_own: StartFn) -> None:
    daemon = start_own(health_failures=0)
    old = daemon.pid
    daemon.kill(signal.SIGKILL)
    assert daemon.wait_for_restarts(1, timeout=30)
    assert daemon.pid != old
    assert daemon.restarts == 1
    assert daemon.wait_serving(10)
    assert _version(daemon.address) == _binary_version()
    assert list(testing.daemon_processes(daemon)) == [daemon.pid]
    assert int(Path(daemon.pid_path).read_text()) == daemon.pid


def test_frozen_daemon_is_killed_after_failed_health_checks(start_own: StartFn) -> None:
    daemon = start_own(health_interval=0.2, health_failures=2)
    # Slow probes on a loaded machine may have restarted it already: count from now.
    restarts, frozen = daemon.restarts, daemon.pid
    os.kill(frozen, signal.SIGSTOP)
    try:
        assert daemon.wait_for_restarts(restarts + 1, timeout=30)
    finally:
        if daemon.pid == frozen:
            os.kill(frozen, signal.SIGCONT)
    assert daemon.pid != frozen
    assert frozen not in testing.daemon_processes(daemon)
    assert _version(daemon.address) == _binary_version()


def test_frozen_daemon_is_left_alone_without_health_checks(start_own: StartFn) -> None:
    daemon = start_own(health_interval=0.1, health_failures=0)
    frozen = daemon.pid
    os.kill(frozen, signal.SIGSTOP)
    try:
        assert not daemon.wait_for_restarts(1, timeout=1.0)
        assert daemon.pid == frozen
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert daemon.wait_serving(10)
    assert daemon.restarts == 0


def test_stop_leaves_no_process_thread_or_fd(start_own: StartFn) -> None:
    start_own(health_failures=0).stop()  # warm-up: gRPC keeps a few process-wide descriptors
    threads, fds = threading.enumerate(), testing.open_fds()
    with start_own(health_interval=0.2) as daemon:
        assert daemon.wait_serving(10)
        assert testing.leftover_threads(threads) == ["libcontainerd-supervisor"]
        os.kill(daemon.pid, signal.SIGSTOP)  # a frozen daemon still gets its SIGTERM (with a SIGCONT)
    assert daemon.stopped
    assert testing.daemon_processes(daemon) == {}
    assert testing.leftover_threads(threads) == []
    # gRPC's own threads close a channel's socket a moment after the stop (the warm-up's too, so
    # the baseline may still hold one): no more than before, once they had their moment.
    wait_until(lambda: testing.open_fds() <= fds, timeout=10)
    assert testing.open_fds() <= fds
    assert not os.path.exists(daemon.pid_path)
    assert repr(daemon) == f"<Daemon stopped address={daemon.address}>"
    daemon.stop()  # idempotent
    assert not daemon.wait_serving(1)
    with pytest.raises(errdefs.Conflict):
        daemon.kill()


def test_restart_after_stop_gets_a_new_daemon(start_own: StartFn) -> None:
    first = start_own(health_failures=0)
    first.stop()
    second = start_own(health_failures=0)
    assert not second.adopted
    assert second.pid != first.pid
    assert _version(second.address) == _binary_version()


def _gone(pid: int) -> bool:
    """The process ended (this machine's init may leave orphans as zombies)."""
    return not _procfs.running(pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _nothing_left(root: str, threads: list[threading.Thread]) -> None:
    assert testing.leftover_threads(threads) == []
    assert testing.daemon_processes(root) == {}


def test_missing_binary_is_not_found(tmp_root: str) -> None:
    root, threads = os.path.join(tmp_root, "r"), threading.enumerate()
    with pytest.raises(errdefs.NotFound, match="containerd binary 'no-such-containerd' not found on PATH"):
        supervisor.start(root, binary="no-such-containerd")
    assert not os.path.exists(root)
    _nothing_left(root, threads)


def test_socket_path_too_long_is_invalid(tmp_root: str) -> None:
    root, threads = os.path.join(tmp_root, "r"), threading.enumerate()
    state = os.path.join(tmp_root, "s" * 100)
    with pytest.raises(errdefs.InvalidParameter, match="104 bytes"):
        supervisor.start(root, state)
    assert os.listdir(tmp_root) == []
    _nothing_left(root, threads)


def test_root_under_a_regular_file_is_invalid(tmp_root: str) -> None:
    blocker = os.path.join(tmp_root, "file")
    open(blocker, "w").close()
    root, threads = os.path.join(blocker, "root"), threading.enumerate()
    with pytest.raises(errdefs.InvalidParameter, match="is not a directory"):
        supervisor.start(root, os.path.join(tmp_root, "state"))
    assert os.listdir(tmp_root) == ["file"]
    _nothing_left(root, threads)


def _fake_containerd(tmp_root: str, body: str) -> str:
    path = os.path.join(tmp_root, "fake-containerd")
    with open(path, "w", encoding="ascii") as f:
        # The supervisor asks every binary for its release first, to write the config it reads.
        f.write('#!/bin/sh\n[ "$1" = --version ] && echo "containerd fake 1.6.99 none" && exit 0\n' + body + "\n")
    os.chmod(path, 0o755)
    return path


def test_daemon_exiting_at_start_is_a_system_error_with_its_log(tmp_root: str) -> None:
    binary = _fake_containerd(tmp_root, "echo 'failed to load config: boom' >&2; exit 3")
    root, threads = os.path.join(tmp_root, "r"), threading.enumerate()
    with pytest.raises(errdefs.System, match=r"(?s)exited with code 3.*failed to load config: boom"):
        supervisor.start(root, binary=binary)
    assert not os.path.exists(os.path.join(root, supervisor.PID_NAME))
    _nothing_left(root, threads)


def test_daemon_not_serving_in_time_is_a_deadline(tmp_root: str) -> None:
    pid_file = os.path.join(tmp_root, "fake.pid")
    binary = _fake_containerd(tmp_root, f"echo $$ > {pid_file}; exec sleep 600")
    root, threads = os.path.join(tmp_root, "r"), threading.enumerate()
    with pytest.raises(errdefs.Deadline, match="did not serve"):
        supervisor.start(root, binary=binary, start_timeout=3.0)  # time for the fake to write its pid
    assert not os.path.exists(os.path.join(root, supervisor.PID_NAME))
    assert _procfs.state(int(Path(pid_file).read_text())) is None  # killed and reaped
    _nothing_left(root, threads)


def test_stop_leaves_containers_running_and_cleanup_root_removes_them(start_own: StartFn, rootfs: str) -> None:
    testing.require_tools("ctr")
    daemon = start_own(health_failures=0)
    ctr = [str(testing.containerd_tool("ctr")), "--address", daemon.address, "--namespace", "t-cleanup"]
    subprocess.run([*ctr, "run", "-d", "--rootfs", rootfs, "c1", "/bin/sleep", "600"], check=True, timeout=60)
    shims = [pid for pid, argv in testing.daemon_processes(daemon).items() if pid != daemon.pid]
    assert len(shims) == 1
    bundle = os.path.join(daemon.state_dir, "io.containerd.runtime.v2.task", "t-cleanup", "c1")
    shim_socket = testing.shim_socket(bundle)
    assert shim_socket is not None and os.path.exists(shim_socket)
    container_pid = int(Path(bundle, "init.pid").read_text())

    daemon.stop()  # shims and containers outlive containerd by design
    assert list(testing.daemon_processes(daemon)) == shims
    assert _procfs.state(container_pid) is not None

    leftovers = testing.cleanup_root(daemon)
    assert leftovers.processes and set(shims) <= set(leftovers.processes)
    assert testing.daemon_processes(daemon) == {}
    assert _gone(container_pid)
    assert not os.path.exists(shim_socket)
    assert not os.path.exists("/run/containerd/runc/t-cleanup")
    assert not os.path.exists(daemon.root_dir)
    assert not os.path.exists(daemon.state_dir)


def test_cleanup_root_removes_containers_in_the_daemons_own_runc_root(start_own: StartFn, rootfs: str) -> None:
    """A container made through a client of a private daemon keeps its runc state in the daemon's runc root:
    cleanup_root must runc-delete it from there (else its cgroups and runc state outlive the daemon)."""
    import libcontainerd  # here: the supervisor's own tests need no client
    from libcontainerd import oci

    daemon = start_own(health_failures=0)
    assert daemon.runc_root == os.path.join(daemon.state_dir, "runc")
    with libcontainerd.new_client(daemon.address, os.path.join(daemon.root_dir, "b"), "t-own-root", None) as c:
        assert c.runc_root == daemon.runc_root
        task = c.new_container("c1", oci.default_spec(rootfs, ["sleep", "600"])).start()
    assert os.path.isfile(os.path.join(daemon.runc_root, "t-own-root", "c1", "state.json"))
    daemon.stop()
    leftovers = testing.cleanup_root(daemon)
    assert task.pid in leftovers.processes or _gone(task.pid)
    assert _gone(task.pid)
    assert glob.glob("/sys/fs/cgroup/*/t-own-root/c1") + glob.glob("/sys/fs/cgroup/t-own-root/c1") == []
    assert not os.path.exists(daemon.state_dir)


def test_daemon_started_from_a_short_lived_thread_survives_it(start_own: StartFn) -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: the supervisor forks from its monitor thread.
    started: list[supervisor.Daemon] = []
    worker = threading.Thread(target=lambda: started.append(start_own(health_failures=0)), name="short-lived")
    worker.start()
    worker.join()
    daemon = started[0]
    assert daemon.wait_serving(10)
    assert _version(daemon.address) == _binary_version()
    assert daemon.restarts == 0


def test_launching_the_daemon_never_forks_the_interpreter(start_own: StartFn) -> None:
    """fork() runs gRPC's at-fork handlers, which can block for good while calls are in flight (seen
    with grpcio 1.49: the monitor hung in fork() during a restart). The daemon is launched and
    relaunched without one (vfork and exec: Python's at-fork hooks never run)."""
    forks: list[str] = []
    os.register_at_fork(before=lambda: forks.append(threading.current_thread().name))
    daemon = start_own(health_failures=0)
    daemon.kill(signal.SIGKILL)
    assert daemon.wait_for_restarts(1, timeout=30)
    assert daemon.wait_serving(10)
    # (The hook stays registered for the session: it only records thread names.)
    assert [name for name in forks if name.startswith("libcontainerd")] == []


def test_daemon_dies_with_its_process(tmp_root: str) -> None:
    script = textwrap.dedent(
        f"""
        import os
        from libcontainerd import testing
        daemon = testing.start_daemon({tmp_root!r}, health_failures=0)
        print(daemon.pid, flush=True)
        {{}}
        """
    )
    root = os.path.join(tmp_root, "containerd")
    # A normal exit stops it through the atexit safety net (gracefully: the pid file goes too) ...
    child = subprocess.run([sys.executable, "-c", script.format("")], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert _gone(int(child.stdout))
    assert not os.path.exists(os.path.join(root, supervisor.PID_NAME))
    # ... and a hard death kills it through PR_SET_PDEATHSIG.
    child = subprocess.run(
        [sys.executable, "-c", script.format("os._exit(0)")], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert _wait_gone(int(child.stdout), timeout=10)  # the kernel delivers the SIGKILL as the parent dies
    assert testing.daemon_processes(root) == {}

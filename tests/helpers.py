"""The tests' shared helpers: specs, waits, leak probes, shims, and a private daemon tests may break.

What users of the SDK would want as well lives in :mod:`libcontainerd.testing` (the recording
backend, the counting sink, fd and thread leak checks, daemon clean-up); this module holds what
only this suite needs. The hardening modules inject faults (SIGKILL, SIGSTOP, removed sockets, dead
shims) into a :class:`PrivateDaemon`, never into the session's ``containerd`` fixture; apart from
that daemon and :func:`reap_orphan_shim`, everything here only observes.
"""

from __future__ import annotations

import glob
import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Collection
from typing import Any, Callable

import libcontainerd
from libcontainerd import _procfs, oci, stdio, supervisor, testing
from libcontainerd.types import EventType


class PrivateDaemon:
    """One containerd for one test module, which tests may kill, freeze, stop and start again."""

    def __init__(self) -> None:
        testing.require_containerd()
        self.tmp = tempfile.mkdtemp(prefix="lcd-h-")  # short: the socket path must fit
        try:
            self.daemon: supervisor.Daemon = testing.start_daemon(self.tmp, health_failures=0)
        except BaseException:
            testing.cleanup_root(os.path.join(self.tmp, "containerd"))
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    @property
    def pid(self) -> int:
        return self.daemon.pid

    @property
    def address(self) -> str:
        return self.daemon.address

    def kill(self) -> None:
        """SIGKILL containerd and wait until the supervisor has restarted it."""
        restarts = self.daemon.restarts
        os.kill(self.daemon.pid, signal.SIGKILL)
        assert self.daemon.wait_for_restarts(restarts + 1, timeout=60), "containerd was not restarted"

    def freeze(self) -> None:
        """SIGSTOP containerd and return once every one of its threads has stopped.

        kill() only queues the signal: a thread running at that moment goes on until the kernel
        next looks at its signals, which on a loaded machine is long enough to answer one more call.
        """
        pid = self.daemon.pid
        os.kill(pid, signal.SIGSTOP)
        assert wait_until(lambda: _all_threads_stopped(pid), timeout=10, interval=0.005), \
            f"containerd (pid {pid}) did not stop on SIGSTOP"

    def thaw(self) -> None:
        try:
            os.kill(self.daemon.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def restart(self) -> None:
        """Start containerd again on the same root after :meth:`stop_daemon` (same socket path)."""
        self.daemon = testing.start_daemon(self.tmp, health_failures=0)

    def shim_pid(self, namespace: str, container_id: str) -> int:
        """The pid of the runc shim serving ``container_id`` (its bundle's ``shim.pid``, or /proc cmdlines)."""
        path = os.path.join(self.daemon.state_dir, "io.containerd.runtime.v2.task", namespace, container_id,
                            "shim.pid")
        try:
            with open(path, encoding="ascii") as f:
                return int(f.read().strip())
        except FileNotFoundError:  # containerd 1.6's runc v2 shim writes no shim.pid
            pids = list(shims(self.daemon, container_id=container_id))
        assert len(pids) == 1, f"shims of {container_id}: {pids}"
        return pids[0]

    def close(self) -> None:
        self.thaw()
        procs = testing.daemon_processes(self.daemon.root_dir)
        try:
            leftovers = testing.cleanup_root(self.daemon)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        assert not testing.daemon_processes(self.daemon.root_dir)
        assert not leftovers, f"the hardening tests left processes or mounts behind: {leftovers} of {procs}"


def spec(rootfs: str, *args: str, **kw: Any) -> dict[str, Any]:
    """``oci.default_spec`` with the command as arguments: ``spec(rootfs, "echo", "hi")``."""
    return oci.default_spec(rootfs, list(args), **kw)


def listing(path: str) -> list[str]:
    """Every path under ``path`` (relative), sorted; ``[]`` for a missing dir."""
    out = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            out.append(os.path.relpath(os.path.join(root, name), path))
    return sorted(out)


def assert_state_dir_matches(client: libcontainerd.Client) -> None:
    """The state dir holds a bundle for live containers only, and FIFOs only of known processes."""
    live = {c.id for c in client.list_containers()}
    for name in os.listdir(client.state_dir):
        assert name in live, f"state dir holds {name!r}, which is no container of namespace {client.namespace}"


def echo_lifecycle(client: libcontainerd.Client, rootfs: str, cid: str, text: str, timeout: float = 30.0,
                   before_delete: Callable[[], object] = lambda: None) -> None:
    """A whole container lifecycle with stdio: ``echo text`` is created, started, exits 0, is deleted.

    ``before_delete`` runs once the output is read, e.g. to wait for the EXIT event while the
    client still tracks the task (after a resubscription it reports a missed exit only then).
    """
    ctr = client.new_container(cid, spec(rootfs, "sh", "-c", f"echo {text}"))
    out = stdio.capture()
    task = ctr.start(attach_stdio=out)
    assert task.wait(timeout=timeout).code == 0
    assert out.wait(timeout=timeout).stdout == f"{text}\n".encode()
    before_delete()
    assert task.delete().code == 0
    ctr.delete()


def lifecycle_works(client: libcontainerd.Client, recorder: testing.RecordingBackend, rootfs: str, cid: str) -> None:
    """A whole container lifecycle with stdio and events, on the client under test."""
    echo_lifecycle(client, rootfs, cid, f"alive-{cid}",
                   before_delete=lambda: recorder.wait_for(cid, EventType.EXIT, timeout=30))
    assert not os.path.exists(os.path.join(client.state_dir, cid))


def run_once(client: libcontainerd.Client, recorder: testing.RecordingBackend, rootfs: str, cid: str,
             *command: str) -> int:
    """``command`` (default ``true``) in a new container, to its exit and its EXIT event; then its task
    and the container are deleted. Returns the exit code."""
    ctr = client.new_container(cid, spec(rootfs, *(command or ("true",))))
    task = ctr.start()
    code = task.wait(timeout=30).code
    recorder.wait_for(cid, EventType.EXIT)
    task.delete()
    ctr.delete()
    return code


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
               mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    """One member for :func:`tar_bytes`: a file with ``data``, or a dir, link, device or FIFO."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info, data


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """An uncompressed tar archive of ``members``, in that order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def lcd_threads() -> list[str]:
    """Names of libcontainerd's threads, without the event pool's idle-expiring workers."""
    return [name for name in testing.leftover_threads((), prefix="libcontainerd")
            if not re.fullmatch(r"libcontainerd-events-\d+", name)]


def wait_for_threads(baseline: Collection[threading.Thread], timeout: float = 15.0) -> list[str]:
    """libcontainerd threads not in ``baseline``, after giving ending ones up to ``timeout`` s to end."""

    def left() -> list[str]:
        # The supervisor's monitor belongs to the daemon (a test may restart it), not to the client.
        return [n for n in testing.leftover_threads(baseline) if n != "libcontainerd-supervisor"]

    wait_until(lambda: not left(), timeout=timeout, interval=0.05)
    return left()


def _all_threads_stopped(pid: int) -> bool:
    return all(state in ("T", "t") for state in _procfs.thread_states(pid))  # gone: nothing of it can answer


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def rss_kb() -> int:
    """This process's resident memory in kB."""
    return int(_procfs.status()["VmRSS"].split()[0])


def run_in_thread(fn: Any, *args: Any, **kw: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` on a named thread; the dict gets ``result`` or ``error``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kw)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name="hardening-call", daemon=True)
    t.start()
    return t, box


def shims(daemon: supervisor.Daemon, namespace: str = "", container_id: str = "") -> dict[int, list[str]]:
    """The shims of ``daemon`` (optionally of one namespace / container): ``{pid: argv}``."""
    found = {}
    for pid, argv in testing.daemon_processes(daemon).items():
        flags = dict(zip(argv[1:], argv[2:]))
        if os.path.basename(argv[0]) == "containerd":
            continue
        if namespace and flags.get("-namespace") != namespace:
            continue
        if container_id and flags.get("-id") != container_id:
            continue
        found[pid] = argv
    return found


def reap_orphan_shim(pid: int, namespace: str, container_id: str, runc_root: str = "/run/containerd/runc") -> None:
    """SIGKILL a shim containerd forgot, and what runs under it; remove the runc state it made under ``runc_root``."""
    for victim in [*_procfs.descendants([pid]), pid]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    runc_root = os.path.join(runc_root, namespace)
    if shutil.which("runc") and os.path.isdir(os.path.join(runc_root, container_id)):
        subprocess.run(["runc", "--root", runc_root, "delete", "--force", container_id], capture_output=True,
                       check=False, timeout=30)
    for cgroup in glob.glob(f"/sys/fs/cgroup/*/{namespace}/{container_id}"):
        try:
            os.rmdir(cgroup)
        except OSError:
            pass

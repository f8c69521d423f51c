"""moby as a live peer: dockerd 28 (Debian sid's ``docker.io``) on a private containerd, beside the SDK.

These tests are not part of the default run (``norecursedirs`` in pyproject.toml); ``tox -e moby``
runs them on containerd 2.x, and ``pytest tests/moby`` on the containerd under test
(``$LIBCONTAINERD_CONTAINERD``). dockerd and its CLI are the ones ``scripts/bootstrap`` unpacks into
``.cache/moby`` (``$LIBCONTAINERD_DOCKERD`` and ``$LIBCONTAINERD_DOCKER`` name others).

Fixtures (module scope unless said otherwise):
- ``dockerd``: a :class:`Dockerd` on a private containerd of its own (so that containerd's clean-up
  shows that dockerd left no task, shim or mount behind). Every path it writes is private (data
  root, exec root, pid file, socket, config file, cgroup parent) but ``/run/docker/plugins``, and
  everything that would touch the host is off: no bridge, no iptables/ip6tables rules, no IP
  forwarding, no userland proxy, the cgroupfs driver (the systemd one would ask systemd for
  units). Its teardown checks that the host is as before.
- ``image``: the busybox rootfs imported with ``docker import``.
- ``recorder`` (function): the recording backend of the integration tests.
- ``moby_client`` (function): an SDK client in dockerd's namespace; it only looks, and closing it
  leaves dockerd's containers alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import libcontainerd
from libcontainerd import testing
from libcontainerd.types import EventType

REPO = Path(__file__).resolve().parents[2]
DOCKERD = os.environ.get("LIBCONTAINERD_DOCKERD") or str(REPO / ".cache/moby/docker.io/usr/sbin/dockerd")
DOCKER = os.environ.get("LIBCONTAINERD_DOCKER") or str(REPO / ".cache/moby/docker-cli/usr/bin/docker")
NAMESPACE = "moby"  # dockerd's default, passed explicitly all the same

# containerd's task topics that moby's libcontainerd hands to its backend, as the SDK's EventType;
# the others (/tasks/delete, /tasks/io, ...) neither hands on.
TOPICS = {
    "/tasks/create": EventType.CREATE,
    "/tasks/start": EventType.START,
    "/tasks/exit": EventType.EXIT,
    "/tasks/oom": EventType.OOM,
    "/tasks/exec-added": EventType.EXEC_ADDED,
    "/tasks/exec-started": EventType.EXEC_STARTED,
    "/tasks/paused": EventType.PAUSED,
    "/tasks/resumed": EventType.RESUMED,
}
_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')

# dockerd creates this whatever its --exec-root (moby's getPluginExecRoot is hard-coded); the teardown
# removes it (and /run/docker) when they are new and empty. Another dockerd of these tests may be
# running meanwhile on this shared machine, so only what is *in* them must be as before.
_PLUGIN_EXEC_ROOT = "/run/docker/plugins"
# Paths outside its own dirs that dockerd could create or change. runc's state of dockerd's containers
# is in dockerd's exec root (not in /run/containerd/runc/<namespace>, the runc shim's default).
_HOST_PATHS = ("/var/lib/docker", "/var/run/docker.sock", "/run/docker.sock", "/etc/docker",
               "/run/containerd/runc/" + NAMESPACE, "/run/containerd/runc/plugins." + NAMESPACE)


def pytest_report_header(config: pytest.Config) -> str:
    try:
        version = subprocess.run([DOCKERD, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        return f"dockerd under test: none ({err}); run scripts/bootstrap"
    return f"dockerd under test: {version} ({DOCKERD}; CLI {DOCKER})"


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def host_state() -> dict[str, Any]:
    """What dockerd could leave on the host outside its own dirs: paths, links, sysctls, iptables rules."""
    state: dict[str, Any] = {}
    for path in _HOST_PATHS:
        state[path] = sorted(os.listdir(path)) if os.path.isdir(path) else os.path.lexists(path)
    for path in (_PLUGIN_EXEC_ROOT, os.path.dirname(_PLUGIN_EXEC_ROOT)):
        entries = set(os.listdir(path)) if os.path.isdir(path) else set()
        state[path + "/*"] = sorted(entries - {os.path.basename(_PLUGIN_EXEC_ROOT)})
    state["links"] = sorted(os.listdir("/sys/class/net"))
    for name in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        with contextlib.suppress(OSError):
            state[name] = Path("/proc/sys", name).read_text().strip()
    state["br_netfilter loaded"] = os.path.exists("/proc/sys/net/bridge")
    for tool in ("iptables-save", "ip6tables-save"):
        exe = shutil.which(tool)
        if exe is not None:
            out = subprocess.run([exe], capture_output=True, text=True, check=False).stdout
            # Comments carry a date and chain headers packet counters: neither is a rule.
            state[tool] = [re.sub(r"\[\d+:\d+\]", "", line) for line in out.splitlines() if not line.startswith("#")]
    return state


def _mounts_under(path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in f]
    return sorted({p for p in points if p == path or p.startswith(prefix)}, key=len, reverse=True)


class DockerError(AssertionError):
    """A docker CLI command failed; the message has its output and the end of dockerd's log."""


class Dockerd:
    """dockerd on a private containerd, everything it writes under one temp dir, and its CLI.

    >>> d = Dockerd(tmp, containerd.address); d.start()  # doctest: +SKIP
    >>> d.docker("version", "--format", "{{.Server.Version}}")  # doctest: +SKIP
    '28.5.2+dfsg4'
    """

    def __init__(self, root: str, containerd_address: str) -> None:
        self.root = root
        self.containerd_address = containerd_address
        self.data_root = os.path.join(root, "data")
        self.exec_root = os.path.join(root, "exec")
        self.socket = os.path.join(root, "docker.sock")
        self.log_path = os.path.join(root, "dockerd.log")
        self.cgroup_parent = "lcd-moby-" + uuid.uuid4().hex[:8]
        self.proc: subprocess.Popen[bytes] | None = None
        # The CLI must reach this dockerd only: no DOCKER_HOST, DOCKER_CONTEXT, ... of the caller.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER")}

    def start(self, timeout: float = 60.0) -> None:
        os.makedirs(self.root, exist_ok=True)
        config = os.path.join(self.root, "daemon.json")
        with open(config, "w", encoding="utf-8") as f:
            f.write("{}\n")  # never the host's /etc/docker/daemon.json
        argv = [
            DOCKERD,
            "--config-file", config,
            "--containerd", self.containerd_address,
            "--containerd-namespace", NAMESPACE,
            "--containerd-plugins-namespace", "plugins." + NAMESPACE,
            "--data-root", self.data_root,
            "--exec-root", self.exec_root,
            "--pidfile", os.path.join(self.root, "dockerd.pid"),
            "--host", "unix://" + self.socket,
            "--group", "root",
            "--storage-driver", "vfs",
            "--feature", "containerd-snapshotter=false",
            "--bridge", "none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--exec-opt", "native.cgroupdriver=cgroupfs",
            "--cgroup-parent", "/" + self.cgroup_parent,
            "--shutdown-timeout", "2",
            "--log-level", "debug",  # the libcontainerd event lines the tests compare with
        ]
        with open(self.log_path, "ab") as log:
            # setpriv: dockerd gets SIGTERM (and shuts down, unmounting) if pytest dies without a teardown.
            self.proc = subprocess.Popen(["setpriv", "--pdeathsig", "TERM", "--", *argv], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, env=self._env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.run("version", check=False).returncode != 0:
            if self.proc.poll() is not None:
                raise DockerError(f"dockerd exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DockerError(f"dockerd does not answer after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def run(self, *args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run the docker CLI against this dockerd (only); with ``check``, a failure raises :class:`DockerError`."""
        env = dict(self._env, DOCKER_CONFIG=os.path.join(self.root, "cli"))
        result = subprocess.run([DOCKER, "--host", "unix://" + self.socket, *args], input=stdin,
                                capture_output=True, env=env, timeout=120, check=False)
        if check and result.returncode != 0:
            raise DockerError(f"docker {' '.join(args)}: exit {result.returncode}: "
                              f"{result.stderr.decode(errors='replace').strip()}\n{self.log_tail()}")
        return result

    def docker(self, *args: str, stdin: bytes | None = None) -> str:
        """Run the docker CLI against this dockerd; its stdout, stripped."""
        return self.run(*args, stdin=stdin).stdout.decode().strip()

    def log_offset(self) -> int:
        return os.path.getsize(self.log_path)

    def log_tail(self, lines: int = 40) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def task_events_since(self, offset: int) -> list[EventType]:
        """The task events dockerd's libcontainerd received in namespace ``moby`` since a log offset.

        moby logs every event of its stream (``msg=event module=libcontainerd topic=...``) before it
        hands it to its backend; the ones its backend gets are given as the SDK's EventType.
        """
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        seen = []
        for line in text.splitlines():
            fields = {k: v.strip('"') for k, v in _LOGFMT.findall(line)}
            if fields.get("msg") == "event" and fields.get("module") == "libcontainerd" \
                    and fields.get("namespace") == NAMESPACE and fields.get("topic") in TOPICS:
                seen.append(TOPICS[fields["topic"]])
        return seen

    def stop(self, timeout: float = 60.0) -> list[str]:
        """Remove the containers left, stop dockerd, unmount what a crashed one left mounted; what was left."""
        left: list[str] = []
        if self.proc is None:
            return left
        if self.proc.poll() is None:
            left = self.docker("ps", "-aq", "--no-trunc").split()
            if left:
                self.docker("rm", "-f", *left)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                left.append(f"dockerd (did not stop in {timeout} s; killed)")
        # A dockerd that shut down unmounted its data root and network namespaces; one that crashed did not.
        for point in _mounts_under(self.root):
            subprocess.run(["umount", "--lazy", point], check=False)
            left.append(f"mount {point}")
        return left

    def remove_cgroups(self) -> list[str]:
        """rmdir the cgroup parent of dockerd's containers, deepest first; the ones still in use.

        runc removes each container's own cgroup when dockerd deletes the task, never the parent; a
        container that outlived a crashed dockerd leaves its own (containerd's clean-up kills its
        processes, but it cannot ``runc delete`` it: dockerd keeps runc's state in its exec root).
        There is a parent in each hierarchy (cgroup v1) or one in the unified hierarchy (v2).
        """
        base = "/sys/fs/cgroup"
        busy = []
        for hierarchy in [base, *(os.path.join(base, c) for c in os.listdir(base))]:
            top = os.path.join(hierarchy, self.cgroup_parent)
            if not os.path.isdir(top):
                continue
            for path in [*(os.path.join(top, d) for d in os.listdir(top) if os.path.isdir(os.path.join(top, d))), top]:
                try:
                    os.rmdir(path)
                except OSError:
                    busy.append(path)
        return busy


def _require_moby() -> None:
    for path in (DOCKERD, DOCKER):
        if not os.access(path, os.X_OK):
            reason = f"needs {path} (scripts/bootstrap unpacks sid's docker.io and docker-cli into .cache/moby)"
            if os.environ.get("CI"):
                pytest.fail(f"must not skip in CI: {reason}", pytrace=False)
            pytest.skip(reason)


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    """dockerd on a private containerd of its own, whose clean-up then shows what dockerd left in it.

    Teardown, in this order because each step needs the previous one done: stop dockerd (removing
    the containers the tests left), clean up containerd (shims, tasks, mounts), remove dockerd's
    cgroup parent (empty only once containerd's clean-up killed what a crashed dockerd left running),
    remove the directories; then check that nothing had to be cleaned and the host is as before.
    """
    testing.require_containerd()
    _require_moby()
    before = host_state()
    made = [p for p in (os.path.dirname(_PLUGIN_EXEC_ROOT), _PLUGIN_EXEC_ROOT) if not os.path.exists(p)]
    tmp = tempfile.mkdtemp(prefix="lcd-moby-")  # short: containerd's socket path must fit in 104 bytes
    left: list[str] = []
    busy: list[str] = []
    containerd_left: Any = None
    try:
        containerd = testing.start_daemon(os.path.join(tmp, "c"), health_failures=0, log_level="debug")
        daemon = Dockerd(os.path.join(tmp, "d"), containerd.address)
        try:
            daemon.start()
            yield daemon
        finally:
            try:
                left = daemon.stop()
            finally:
                containerd_left = testing.cleanup_root(containerd)
                survivors = testing.daemon_processes(containerd.root_dir).values()
                left += [f"containerd process {argv}" for argv in survivors]
                busy = daemon.remove_cgroups()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in reversed(made):
            with contextlib.suppress(OSError):  # gone, or in use by another dockerd by now
                os.rmdir(path)
    assert not left, f"dockerd's teardown had to clean up: {left}"
    assert not busy, f"dockerd's cgroups are still in use: {busy}"
    assert not containerd_left, f"dockerd left tasks, shims or mounts in containerd: {containerd_left}"
    assert host_state() == before, "dockerd changed the host outside its own dirs"


@pytest.fixture(scope="module")
def image(dockerd: Dockerd, rootfs: str) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    name = "lcd-busybox:" + uuid.uuid4().hex[:8]
    dockerd.docker("import", "-", name, stdin=buf.getvalue())
    return name


@pytest.fixture
def recorder() -> testing.RecordingBackend:
    return testing.RecordingBackend()


@pytest.fixture
def moby_client(
    dockerd: Dockerd, state_dir: str, recorder: testing.RecordingBackend
) -> Iterator[libcontainerd.Client]:
    with libcontainerd.new_client(dockerd.containerd_address, state_dir, NAMESPACE, recorder, timeout=60) as client:
        yield client
    assert not os.listdir(state_dir), "the SDK wrote into its state dir while it only looked"


def docker_events(dockerd: Dockerd, container_id: str, since: float, last: str) -> list[dict[str, Any]]:
    """dockerd's own container events for one container since ``since``, once one with action ``last`` is in.

    dockerd logs "die" after it marks the container stopped, so `docker wait` may return before it.
    """
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        out = dockerd.docker("events", "--since", f"{since:.9f}", "--until", f"{time.time():.9f}",
                             "--filter", "type=container", "--filter", f"container={container_id}",
                             "--format", "{{json .}}")
        found[:] = [json.loads(line) for line in out.splitlines()]
        return any(e["Action"] == last for e in found)

    wait_until(arrived, f"dockerd's {last!r} event of {container_id}")
    return found

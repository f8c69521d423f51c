"""A private, managed containerd daemon (moby's ``libcontainerd/supervisor`` in Python).

This module owns one thing: the life of a containerd process that runs under a
root directory of its own. :func:`start` writes the daemon's TOML config, adopts a
daemon that is still alive from its pid file or launches a new one, and waits until
it answers gRPC. A monitor thread (``libcontainerd-supervisor``) then restarts the
daemon when it exits and, if asked, when it stops answering health checks. The
monitor thread is also the one that forks the daemon, so that the daemon's
``PR_SET_PDEATHSIG`` (which fires when the *forking thread* ends) is tied to the
supervisor's life and not to whichever short-lived thread called :func:`start`.

It must not touch anything outside its root and state directories (never a
system-wide containerd), and it must not kill shims or containers: those outlive
containerd by design, so that a service's containers survive a daemon restart
(tests clean them up with :func:`libcontainerd.testing.cleanup_root`). It does not
talk to containerd beyond the Version call used as a health check.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any, Union

import attrs
import tenacity
from google.protobuf import empty_pb2

from libcontainerd import _procfs, _runc_root, errdefs
from libcontainerd.remote._rpc import Connection

__all__ = [
    "CONFIG_NAME", "ENV_BINARY", "LOG_NAME", "MAX_SOCKET_PATH", "PID_NAME", "ContainerdRelease", "Daemon", "start",
]

log = logging.getLogger(__name__)

#: Longest socket path containerd listens on: it refuses more than 104 bytes ("BSDs have a 104 limit",
#: containerd's pkg/sys CreateUnixSocket), below the kernel's 107 (``sun_path`` is 108 bytes with the NUL).
MAX_SOCKET_PATH = 104
#: File names inside the root directory.
CONFIG_NAME = "containerd.toml"
PID_NAME = "containerd.pid"
LOG_NAME = "containerd.log"
_LOCK_NAME = "supervisor.lock"
_SOCKET_NAME = "containerd.sock"

#: The environment variable naming the containerd that :func:`start` runs by default (the test harness,
#: the demo, the benchmarks and ``libcontainerd daemon`` all start theirs through it).
ENV_BINARY = "LIBCONTAINERD_CONTAINERD"
_LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")
# Signals after which the daemon is certainly on its way out: kill() marks it not serving at once,
# so that a following wait_serving() waits for the restart instead of racing the monitor.
_LETHAL = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT})
_POLL = 0.1  # how often the monitor looks at the process (cheap: a waitpid or a /proc read)
_STABLE_AFTER = 10.0  # a daemon that lived this long before dying is restarted without delay
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 10.0
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

TomlValue = Union[str, int, float, bool, list[Any], tuple[Any, ...], Mapping[str, Any]]


class _NotServing(Exception):
    """One start probe failed; tenacity tries again."""


class _Stopping(Exception):
    """stop() was called while the monitor was (re)starting the daemon."""


# Sets PR_SET_PDEATHSIG, which only the child can do, then becomes containerd (same pid). A
# preexec_fn could do it between fork and exec, but it makes CPython fork() where it would otherwise
# vfork(), and fork() runs gRPC's pthread_atfork handlers, which wait for this process's gRPC threads
# and can block for good while a client has calls in flight: seen with grpcio 1.49, the monitor stuck
# in fork() during a restart (grpc/grpc#17986, #31885).
_LAUNCHER = """\
import ctypes, os, sys
ul = ctypes.c_ulong
if ctypes.CDLL(None, use_errno=True).prctl(1, ul(9), ul(0), ul(0), ul(0)) != 0:  # PR_SET_PDEATHSIG, SIGKILL
    sys.exit("prctl(PR_SET_PDEATHSIG): " + os.strerror(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):  # the parent died before prctl: nobody would ever send the signal
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _launch_argv(argv: list[str], kill_with_parent: bool) -> list[str]:
    """The command that runs ``argv`` (containerd), through the PDEATHSIG launcher when asked to."""
    if not kill_with_parent:
        return argv
    if not sys.executable:  # an embedding application without an interpreter binary
        log.warning("no Python executable to launch %s with PR_SET_PDEATHSIG; it will outlive this process", argv[0])
        return argv
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]


_VERSION_RE = re.compile(r"^containerd \S+ v?(\d+)\.(\d+)\.(\d+)(\S*)", re.M)
# CRI is not part of the API this SDK uses, and it would try to manage networks and images of its own.
# 1.6 ignores `disable = true` inside the CRI plugin's own table; only `disabled_plugins` works.
# 2.x split it into plugins of their own, one of which CRI's gRPC service needs (so all three go).
_CRI_PLUGINS = {
    1: ["io.containerd.grpc.v1.cri"],
    2: ["io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.grpc.v1.cri",
        # The sandbox controllers need CRI's image service and fail to load (a warning) without it.
        "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.grpc.v1.sandbox-controllers"],
}
# containerd 2.x reads only `version = 3` configs as they are (it migrates 2 with a warning per start).
_CONFIG_VERSION = {1: 2, 2: 3}


@attrs.frozen
class ContainerdRelease:
    """What ``containerd --version`` says of a binary: its release, as numbers and as printed.

    >>> ContainerdRelease.parse("containerd github.com/containerd/containerd/v2 2.1.9+unknown ")
    ContainerdRelease(major=2, minor=1, patch=9, text='2.1.9+unknown')
    """

    major: int
    minor: int
    patch: int
    text: str

    @classmethod
    def parse(cls, output: str) -> ContainerdRelease:
        match = _VERSION_RE.search(output)
        if match is None:
            raise errdefs.InvalidParameter(f"cannot tell the containerd release from {output.strip()[:200]!r}")
        major, minor, patch = (int(g) for g in match.group(1, 2, 3))
        return cls(major, minor, patch, f"{major}.{minor}.{patch}{match.group(4)}")

    @classmethod
    def of(cls, binary: str) -> ContainerdRelease:
        """Run ``binary --version`` (once per binary and modification time)."""
        stat = os.stat(binary)
        key = (binary, stat.st_mtime_ns, stat.st_size)
        found = _releases.get(key)
        if found is None:
            try:
                out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                                     check=True).stdout
            except (OSError, subprocess.SubprocessError) as err:
                raise errdefs.InvalidParameter(f"{binary} --version failed: {err}") from err
            found = _releases[key] = cls.parse(out)
        return found

    def at_least(self, major: int, minor: int = 0) -> bool:
        """Whether this release is ``major.minor`` or newer.

        >>> ContainerdRelease(1, 7, 24, "1.7.24").at_least(1, 7)
        True
        """
        return (self.major, self.minor) >= (major, minor)

    @property
    def reaps_tasks_that_died_while_down(self) -> bool:
        """containerd >= 1.7, when it starts, kills the shim of a task that exited while it was down and
        removes the task, so that exit code is lost for every client; 1.6 keeps it."""
        return self.at_least(1, 7)

    def __str__(self) -> str:
        return self.text


_releases: dict[tuple[str, int, int], ContainerdRelease] = {}


def _base_config(release: ContainerdRelease) -> dict[str, Any]:
    major = 2 if release.major >= 2 else 1
    return {"version": _CONFIG_VERSION[major], "disabled_plugins": list(_CRI_PLUGINS[major])}


def _daemon_env(binary: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """containerd's environment (``env``, else ours), with the binary's own directory first on PATH.

    containerd finds its shim (``containerd-shim-runc-v2``) on PATH, and the shim finds runc and CRIU
    there: a containerd that is not the system's must start its own shim, not the system's.
    """
    env = dict(os.environ if env is None else env)
    path = env.get("PATH", os.defpath)
    here = os.path.dirname(binary)
    env["PATH"] = here + os.pathsep + path if path else here
    return env


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    raise errdefs.InvalidParameter(f"containerd config option {where} has a value of type {type(value).__name__}")


def _render_toml(table: Mapping[str, Any], prefix: str = "") -> list[str]:
    lines: list[str] = []
    for key, value in table.items():
        if not isinstance(value, Mapping):
            lines.append(f"{_toml_key(key)} = {_toml_value(value, prefix + key)}")
    for key, value in table.items():
        if isinstance(value, Mapping):
            name = prefix + _toml_key(key)
            lines.extend(["", f"[{name}]"])
            lines.extend(_render_toml(value, name + "."))
    return lines


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _check_socket_path(path: str, what: str) -> None:
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise errdefs.InvalidParameter(
            f"the {what} socket path {path} is {size} bytes long, more than the {MAX_SOCKET_PATH} bytes containerd "
            "accepts for a unix socket path; pass a shorter state_dir"
        )


def _check_creatable(path: str, what: str) -> None:
    """Fail before anything is created when ``path`` cannot be made a writable directory."""
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        blocker = "it" if existing == path else existing
        raise errdefs.InvalidParameter(f"cannot use {path} as the {what}: {blocker} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise errdefs.Forbidden(f"cannot use {path} as the {what}: {existing} is not writable")


def _makedirs(path: str, what: str) -> None:
    try:
        os.makedirs(path, mode=0o711, exist_ok=True)
    except OSError as err:
        cls = errdefs.Forbidden if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else errdefs.InvalidParameter
        raise cls(f"cannot create the {what} {path}: {err.strerror}") from err


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _is_our_daemon(pid: int, binary: str, config_path: str) -> bool:
    argv = _procfs.cmdline(pid)
    if not argv or os.path.basename(argv[0]) != os.path.basename(binary):
        return False
    return any(a == "--config" and b == config_path for a, b in zip(argv, argv[1:]))


def _log_tail(path: str, offset: int, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(offset, os.path.getsize(path) - 16384))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


@attrs.define(eq=False, repr=False)
class Daemon:
    """A running, supervised containerd. Made by :func:`start`; thread-safe.

    Attributes:
        address: the gRPC unix socket path (a plain path, no ``unix://``).
        ttrpc_address: the ttrpc socket path.
        root_dir: containerd's root is ``<root_dir>/root``; the config, pid file and log live here.
        state_dir: containerd's state directory (holds the sockets).
        runc_root: runc's ``--root`` for this daemon's containers (``<state_dir>/runc``): containers
            created through a client of this daemon use it, so that no other containerd on the machine
            shares their runc state. Its path is in a file beside the socket, where clients read it.
        config_path, log_path, pid_path: the files of this daemon.
        binary: the resolved containerd executable.
        release: what ``binary --version`` says (the config was written for it).
        kill_with_parent: whether the daemon gets SIGKILL when this process ends.

    >>> d = start("/tmp/lcd-doc")  # doctest: +SKIP
    >>> d.wait_serving(10), d.restarts  # doctest: +SKIP
    (True, 0)
    >>> d.stop()  # doctest: +SKIP
    """

    address: str
    ttrpc_address: str
    root_dir: str
    state_dir: str
    runc_root: str
    config_path: str
    log_path: str
    pid_path: str
    binary: str
    release: ContainerdRelease
    kill_with_parent: bool
    _health_interval: float
    _health_failures: int
    _start_timeout: float
    _lock_file: IO[bytes]
    _env: Mapping[str, str] | None = None
    _cond: threading.Condition = attrs.field(init=False, factory=threading.Condition)
    _stop_requested: threading.Event = attrs.field(init=False, factory=threading.Event)
    _started: threading.Event = attrs.field(init=False, factory=threading.Event)
    _start_error: BaseException | None = attrs.field(init=False, default=None)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _probe_rpc: Connection | None = attrs.field(init=False, default=None)
    _proc: subprocess.Popen[bytes] | None = attrs.field(init=False, default=None)
    _pid: int = attrs.field(init=False, default=0)
    _spawned_at: float = attrs.field(init=False, default=0.0)
    _adopted: bool = attrs.field(init=False, default=False)
    _restarts: int = attrs.field(init=False, default=0)
    _serving: bool = attrs.field(init=False, default=False)
    _closed: bool = attrs.field(init=False, default=False)
    _detach: bool = attrs.field(init=False, default=False)
    _stop_timeout: float = attrs.field(init=False, default=15.0)
    _backoff: float = attrs.field(init=False, default=0.0)
    _killed: int = attrs.field(init=False, default=0)  # the pid that kill() sent a lethal signal to

    # -- public surface -------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The daemon's current pid (it changes after a restart; the last one after stop())."""
        with self._cond:
            return self._pid

    @property
    def restarts(self) -> int:
        """How many times the monitor has restarted the daemon."""
        with self._cond:
            return self._restarts

    @property
    def adopted(self) -> bool:
        """True when the daemon now running was found alive from its pid file, not launched by us."""
        with self._cond:
            return self._adopted

    @property
    def stopped(self) -> bool:
        """True once stop() or detach() has run."""
        with self._cond:
            return self._closed

    def wait_serving(self, timeout: float | None = None) -> bool:
        """Block until the daemon answers a Version call.

        Args:
            timeout: seconds to wait at most; None waits as long as it takes.

        Returns:
            True once it serves; False on timeout or when the daemon was stopped.

        >>> daemon.wait_serving(timeout=30)  # doctest: +SKIP
        True
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            with self._cond:
                ready = self._cond.wait_for(lambda: self._serving or self._closed, remaining)
                if not ready or self._closed:
                    return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if self._probe(1.0 if remaining is None else min(1.0, remaining)):
                return True

    def wait_for_restarts(self, count: int, timeout: float | None = None) -> bool:
        """Block until the daemon has been restarted at least ``count`` times in all and serves again.

        Args:
            count: the total number of restarts to wait for.
            timeout: seconds to wait at most; None waits as long as it takes.

        Returns:
            True when that many restarts happened and the daemon serves; False on timeout or stop.

        >>> daemon.kill(); daemon.wait_for_restarts(1, timeout=30)  # doctest: +SKIP
        True
        """
        with self._cond:
            done = self._cond.wait_for(lambda: (self._restarts >= count and self._serving) or self._closed, timeout)
            return done and not self._closed

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the current daemon process (for tests: the monitor then restarts it).

        A daemon that a lethal signal from here ends is restarted at once: the backoff that keeps a
        crashing daemon from restarting in a tight loop is for crashes, not for this.

        Raises:
            errdefs.Conflict: the daemon was stopped.
            errdefs.NotFound: the process is already gone.

        >>> daemon.kill()  # doctest: +SKIP
        """
        with self._cond:
            if self._closed:
                raise errdefs.Conflict(f"containerd under {self.root_dir} was stopped; there is nothing to kill")
            pid = self._pid
            if sig in _LETHAL:
                self._serving = False
                self._killed = pid
        try:
            os.kill(pid, sig)
        except ProcessLookupError as err:
            raise errdefs.NotFound(f"containerd process {pid} under {self.root_dir} is gone") from err

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the daemon: SIGTERM, then SIGKILL after ``timeout``; join the monitor; remove the pid file.

        Shims and containers are left running (they outlive containerd by design). Idempotent.

        Args:
            timeout: seconds to wait for a graceful exit before SIGKILL.

        >>> daemon.stop()  # doctest: +SKIP
        """
        self._finish(detach=False, timeout=timeout)

    def detach(self) -> None:
        """Stop supervising but leave the daemon running, its pid file in place, for a later :func:`start`.

        Only possible when the daemon does not die with this process (``kill_with_parent=False``, or a
        daemon that was adopted).

        Raises:
            errdefs.Conflict: the daemon was launched with ``kill_with_parent=True``.

        >>> d = start("/tmp/lcd-doc", kill_with_parent=False); d.detach()  # doctest: +SKIP
        """
        with self._cond:
            if not self._closed and self._proc is not None and self.kill_with_parent:
                raise errdefs.Conflict(
                    f"containerd under {self.root_dir} was started with kill_with_parent=True and cannot be detached"
                )
        self._finish(detach=True, timeout=0.0)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        with self._cond:
            if self._closed:
                return f"<Daemon stopped address={self.address}>"
            return f"<Daemon pid={self._pid} address={self.address} restarts={self._restarts}>"

    # -- lifecycle --------------------------------------------------------------------------------

    def _launch(self) -> None:
        """Start the monitor thread and wait for its first launch (or adoption) to succeed or fail."""
        # private: the probe's connection to the socket must not serve the clients of this process
        self._probe_rpc = Connection.open(self.address, "", private=True)
        self._thread = threading.Thread(target=self._run, name="libcontainerd-supervisor", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            self._release()
            raise self._start_error
        atexit.register(self._atexit)

    def _atexit(self) -> None:
        if self.kill_with_parent:
            self.stop()
        else:
            self._finish(detach=True, timeout=0.0)

    def _finish(self, *, detach: bool, timeout: float) -> None:
        with self._cond:
            if not self._closed:
                self._detach = detach
                self._stop_timeout = timeout
                self._stop_requested.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._serving = False
            self._cond.notify_all()
        atexit.unregister(self._atexit)
        self._release()

    def _release(self) -> None:
        if self._probe_rpc is not None:
            self._probe_rpc.close()
        self._lock_file.close()  # drops the flock: another supervisor may take this root now

    # -- the monitor thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._first_launch()
        except BaseException as err:  # handed to start(), which raises it in the caller's thread
            self._start_error = err
            self._started.set()
            return
        self._started.set()
        try:
            self._watch()
        except Exception:
            log.exception("containerd supervisor for %s failed", self.root_dir)
        finally:
            if not self._detach:
                self._terminate(self._stop_timeout)

    def _first_launch(self) -> None:
        pid = self._read_pid_file()
        if pid and self._alive_pid(pid):
            if self._probe(min(5.0, self._start_timeout)):
                log.info("adopting containerd %d under %s", pid, self.root_dir)
                with self._cond:
                    self._pid, self._adopted, self._serving = pid, True, True
                    self._spawned_at = time.monotonic()
                return
            log.warning("containerd %d under %s does not answer; killing it", pid, self.root_dir)
            self._kill_pid(pid)
        try:
            self._spawn_and_wait()
        except BaseException:
            self._terminate(0.0)
            raise
        with self._cond:
            self._serving = True
            self._cond.notify_all()

    def _watch(self) -> None:
        failures = 0
        next_check = time.monotonic() + self._health_interval
        while not self._stop_requested.wait(_POLL):
            code = self._exit_code()
            if code is not None:
                log.warning("containerd %d under %s exited (%s); restarting", self.pid, self.root_dir, code)
                self._restart(crashed=True)
                failures, next_check = 0, time.monotonic() + self._health_interval
                continue
            if not self._health_failures or time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + self._health_interval
            if self._probe(min(self._health_interval, 2.0)):
                failures = 0
                continue
            failures += 1
            log.warning(
                "containerd %d under %s failed health check %d/%d",
                self.pid,
                self.root_dir,
                failures,
                self._health_failures,
            )
            if failures >= self._health_failures:
                log.error("containerd %d under %s is unhealthy; killing and restarting it", self.pid, self.root_dir)
                self._kill_current()
                self._restart(crashed=True)
                failures, next_check = 0, time.monotonic() + self._health_interval

    def _restart(self, *, crashed: bool) -> None:
        with self._cond:
            self._serving = False
            lived = time.monotonic() - self._spawned_at
            # A daemon killed through kill() did not crash: the crash-loop backoff is not for it.
            on_purpose, self._killed = self._killed == self._pid, 0
        if on_purpose or (crashed and lived >= _STABLE_AFTER):
            self._backoff = 0.0
        else:
            self._backoff = min(_BACKOFF_MAX, max(_BACKOFF_MIN, self._backoff * 2))
        while not self._stop_requested.wait(self._backoff):
            try:
                self._spawn_and_wait()
            except _Stopping:
                return
            except errdefs.LibcontainerdError as err:
                log.error("restarting containerd under %s failed: %s", self.root_dir, err)
                self._backoff = min(_BACKOFF_MAX, max(_BACKOFF_MIN, self._backoff * 2))
                continue
            with self._cond:
                self._restarts += 1
                self._serving = True
                self._cond.notify_all()
            log.info("containerd under %s restarted as pid %d", self.root_dir, self.pid)
            return

    def _spawn_and_wait(self) -> None:
        try:
            offset = os.path.getsize(self.log_path)
        except OSError:
            offset = 0
        try:
            with open(self.log_path, "ab") as logf:
                proc = subprocess.Popen(
                    _launch_argv([self.binary, "--config", self.config_path], self.kill_with_parent),
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                    env=_daemon_env(self.binary, self._env),
                    start_new_session=True,
                )
        except OSError as err:
            raise errdefs.System(f"cannot launch {self.binary} for {self.root_dir}: {err}") from err
        with self._cond:
            self._proc, self._pid, self._adopted = proc, proc.pid, False
            self._spawned_at = time.monotonic()
        _write_atomic(self.pid_path, f"{proc.pid}\n")
        log.debug("launched containerd %d under %s", proc.pid, self.root_dir)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self._start_timeout) | tenacity.stop_when_event_set(self._stop_requested),
            wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
            retry=tenacity.retry_if_exception_type(_NotServing),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    if proc.poll() is not None:
                        break
                    if not self._probe(0.5):
                        raise _NotServing
        except _NotServing:
            if self._stop_requested.is_set():
                raise _Stopping from None
            self._kill_current()
            raise errdefs.Deadline(
                f"containerd under {self.root_dir} did not serve on {self.address} within {self._start_timeout:g}s; "
                f"last lines of {self.log_path}:\n{_log_tail(self.log_path, offset)}"
            ) from None
        if proc.returncode is not None:
            raise errdefs.System(
                f"containerd under {self.root_dir} exited with code {proc.returncode} while starting; "
                f"last lines of {self.log_path}:\n{_log_tail(self.log_path, offset)}"
            )

    def _terminate(self, timeout: float) -> None:
        """Stop the current process gracefully (SIGTERM, then SIGKILL) and remove the pid file."""
        pid = self.pid
        if pid and self._exit_code() is None:
            log.debug("stopping containerd %d under %s", pid, self.root_dir)
            for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGCONT: a frozen daemon must see the SIGTERM
                with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                    os.kill(pid, sig)
            if not self._wait_exit(timeout):
                log.warning("containerd %d under %s ignored SIGTERM for %gs; killing it", pid, self.root_dir, timeout)
                self._kill_current()
        if self._read_pid_file() == pid:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                os.unlink(self.pid_path)

    # -- process helpers (monitor thread) ----------------------------------------------------------

    def _probe(self, timeout: float) -> bool:
        conn = self._probe_rpc
        if conn is None:
            return False
        try:
            conn.call(conn.version.Version, empty_pb2.Empty(), "containerd", timeout=timeout, wait_for_ready=True)
        except errdefs.LibcontainerdError:  # Cancelled: the connection was closed under us
            return False
        return True

    def _read_pid_file(self) -> int:
        try:
            with open(self.pid_path, encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _alive_pid(self, pid: int) -> bool:
        state = _procfs.state(pid)
        return state is not None and state != "Z" and _is_our_daemon(pid, self.binary, self.config_path)

    def _exit_code(self) -> int | str | None:
        """None while the current daemon runs; its exit code (or "gone" for an adopted one) once it ended."""
        with self._cond:
            proc, pid = self._proc, self._pid
        if proc is not None:
            return proc.poll()
        return None if self._alive_pid(pid) else "gone"

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._exit_code() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _kill_current(self) -> None:
        with self._cond:
            pid, proc = self._pid, self._proc
        if proc is not None:
            proc.kill()
            proc.wait()
        elif pid:
            self._kill_pid(pid)

    def _kill_pid(self, pid: int) -> None:
        if not self._alive_pid(pid):
            return
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while self._alive_pid(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def start(
    root_dir: str,
    state_dir: str | None = None,
    *,
    binary: str | None = None,
    log_level: str = "info",
    debug_address: str | None = None,
    health_interval: float = 2.0,
    health_failures: int = 3,
    start_timeout: float = 30.0,
    kill_with_parent: bool = True,
    env: Mapping[str, str] | None = None,
    **opts: TomlValue,
) -> Daemon:
    """Start (or adopt) a private containerd under ``root_dir`` and supervise it.

    The config goes to ``<root_dir>/containerd.toml``; containerd's root is ``<root_dir>/root``, its
    state ``state_dir`` (default ``<root_dir>/state``), its gRPC socket ``<state_dir>/containerd.sock``,
    its pid file ``<root_dir>/containerd.pid`` and its output ``<root_dir>/containerd.log``. runc's state
    of its containers lives in ``<state_dir>/runc`` (see :attr:`Daemon.runc_root`). A daemon
    still alive from the pid file (same binary, same config) that answers is adopted instead of
    launching a second one. Only one supervisor at a time may manage a root (a ``flock``).

    Args:
        root_dir: directory of this daemon; created if missing.
        state_dir: containerd's state directory; the socket path in it must fit in 104 bytes.
        binary: the containerd executable, a name on PATH or a path; by default ``$LIBCONTAINERD_CONTAINERD``
            or else ``containerd``. Its shim is looked up in its own directory first, then on PATH.
            containerd 1.6, 1.7 and 2.x are told apart by ``binary --version`` and each gets the
            config it reads (``version = 2`` for 1.x, ``version = 3`` for 2.x).
        log_level: containerd's ``[debug] level``.
        debug_address: a unix socket path for containerd's debug endpoint, or None.
        health_interval: seconds between health checks (a Version call).
        health_failures: failed health checks in a row after which the daemon is killed and restarted;
            0 disables health checks (a daemon frozen with SIGSTOP is then left alone).
        start_timeout: seconds to wait for the daemon to serve, at start and at each restart.
        kill_with_parent: SIGKILL the daemon when this process dies (PR_SET_PDEATHSIG); with False it
            outlives us, at exit it is detached rather than stopped, and the next start() adopts it.
        env: the daemon's environment (default: this process's). Its shims and runc inherit it: runc
            finds CRIU on this ``PATH``. The binary's own directory is put first on it.
        **opts: more containerd config merged into the file: top-level keys (``oom_score=-999``) or
            tables as dicts (``plugins={"io.containerd.gc.v1.scheduler": {"pause_threshold": 0.05}}``).

    Returns:
        The serving :class:`Daemon`.

    Raises:
        errdefs.NotFound: the binary is not found.
        errdefs.InvalidParameter: a bad option, a socket path too long, a root/state dir that cannot be a
            directory (nothing is created then).
        errdefs.Forbidden: a root/state dir in a place we may not write.
        errdefs.Conflict: another supervisor manages this root.
        errdefs.System: the daemon exited while starting (the message has the end of its log).
        errdefs.Deadline: the daemon did not serve within ``start_timeout``.

    >>> with start("/tmp/lcd-doc", health_failures=0) as daemon:  # doctest: +SKIP
    ...     print(daemon.address)
    /tmp/lcd-doc/state/containerd.sock
    """
    if log_level not in _LOG_LEVELS:
        raise errdefs.InvalidParameter(f"log_level must be one of {', '.join(_LOG_LEVELS)}, not {log_level!r}")
    if health_interval <= 0 or start_timeout <= 0 or health_failures < 0:
        raise errdefs.InvalidParameter("health_interval and start_timeout must be > 0 and health_failures >= 0")
    for key in ("version", "root", "state", "ttrpc"):
        if key in opts:
            raise errdefs.InvalidParameter(f"containerd config option {key!r} is set by the supervisor")
    grpc_opts = opts.get("grpc")
    if isinstance(grpc_opts, Mapping) and "address" in grpc_opts:
        raise errdefs.InvalidParameter("containerd config option grpc.address is set by the supervisor")

    if binary is None:
        binary = os.environ.get(ENV_BINARY) or "containerd"
    resolved = shutil.which(binary)
    if resolved is None:
        raise errdefs.NotFound(f"containerd binary {binary!r} not found on PATH")
    resolved = os.path.abspath(resolved)
    release = ContainerdRelease.of(resolved)

    root_dir = os.path.abspath(root_dir)
    state_dir = os.path.abspath(state_dir) if state_dir is not None else os.path.join(root_dir, "state")
    address = os.path.join(state_dir, _SOCKET_NAME)
    ttrpc_address = address + ".ttrpc"
    _check_socket_path(ttrpc_address, "ttrpc")
    _check_socket_path(address, "gRPC")
    if debug_address is not None:
        debug_address = os.path.abspath(debug_address)
        _check_socket_path(debug_address, "debug")
    _check_creatable(root_dir, "root dir")
    _check_creatable(state_dir, "state dir")

    _makedirs(root_dir, "root dir")
    _makedirs(state_dir, "state dir")
    lock_file = open(os.path.join(root_dir, _LOCK_NAME), "ab")  # noqa: SIM115 - held for the daemon's life
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise errdefs.Conflict(f"containerd under {root_dir} is already managed by another supervisor") from None

    try:
        config: dict[str, Any] = {
            **_base_config(release),
            "root": os.path.join(root_dir, "root"),
            "state": state_dir,
            "grpc": {"address": address},
            "ttrpc": {"address": ttrpc_address},
            "debug": {"level": log_level, "address": debug_address or ""},
            # The default is the host-wide /opt/containerd.
            "plugins": {"io.containerd.internal.v1.opt": {"path": os.path.join(root_dir, "root", "opt")}},
        }
        config = _merge(config, opts)
        config_path = os.path.join(root_dir, CONFIG_NAME)
        _write_atomic(
            config_path,
            "# Written by libcontainerd.supervisor; rewritten at each start.\n"
            + "\n".join(_render_toml(config))
            + "\n",
        )
        daemon = Daemon(
            address=address,
            ttrpc_address=ttrpc_address,
            root_dir=root_dir,
            state_dir=state_dir,
            runc_root=_runc_root.write(state_dir),
            config_path=config_path,
            log_path=os.path.join(root_dir, LOG_NAME),
            pid_path=os.path.join(root_dir, PID_NAME),
            binary=resolved,
            release=release,
            kill_with_parent=kill_with_parent,
            health_interval=health_interval,
            health_failures=health_failures,
            start_timeout=start_timeout,
            lock_file=lock_file,
            env=dict(env) if env is not None else None,
        )
    except BaseException:
        lock_file.close()
        raise
    daemon._launch()
    log.info("containerd %d serving on %s", daemon.pid, address)
    return daemon

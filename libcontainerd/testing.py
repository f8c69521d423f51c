"""Support for tests, demos and benchmarks: a busybox root filesystem and a private containerd.

This module owns what a test needs around the SDK: :func:`busybox_rootfs` builds a minimal
root filesystem from the host's static busybox; :func:`start_daemon` starts a private,
supervised containerd with a short socket path; :func:`cleanup_root` removes every trace of
one (daemon, shims, container processes, runc state, mounts, directories), which the
supervisor itself must never do; :func:`find_criu` finds a CRIU that can checkpoint here and
:func:`daemon_env` puts it on the daemon's PATH; :func:`require_containerd` skips (or, under CI, fails) a
test when the host lacks what it needs; :func:`open_fds` and :func:`leftover_threads` help leak
checks; :class:`RecordingBackend` records events and waits for one, :class:`CountingSink`
takes a process's output in flat memory. It must import without pytest (pytest is imported
lazily) and must never touch a system-wide containerd or a process that is not under the given root.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import attrs

from libcontainerd import _procfs, errdefs, supervisor
from libcontainerd.types import EventInfo, EventType

if TYPE_CHECKING:
    from libcontainerd.remote import Client

__all__ = [
    "CountingSink",
    "Leftovers",
    "PrivateContainerd",
    "RecordingBackend",
    "busybox_image_archive",
    "busybox_rootfs",
    "cleanup_root",
    "containerd_tool",
    "daemon_env",
    "daemon_processes",
    "find_busybox",
    "find_criu",
    "leftover_threads",
    "open_fds",
    "remove_containers",
    "require_containerd",
    "require_criu",
    "require_tools",
    "shim_socket",
    "start_daemon",
]

log = logging.getLogger(__name__)

_MARKER = ".libcontainerd-rootfs"
_RUNC_ROOT = "/run/containerd/runc"  # the runc shim's default --root; one subdirectory per namespace
_TASK_DIR = "io.containerd.runtime.v2.task"
_MNT_DETACH = 2
_PT_INTERP = 3
_CONTAINERD_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "busybox")
# The tools that come with containerd: looked up beside the containerd under test first.
_BESIDE_CONTAINERD = frozenset({"containerd", "containerd-shim-runc-v2", "ctr"})

_PASSWD = """root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
_GROUP = """root:x:0:
user:x:1000:
nogroup:x:65534:
"""


@attrs.frozen
class Leftovers:
    """What :func:`cleanup_root` had to clean: pids it killed and mount points it detached."""

    processes: tuple[int, ...] = ()
    mounts: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.processes or self.mounts)


# -- busybox rootfs ------------------------------------------------------------------------------


def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (static, or static-pie)."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF":
            return False
        endian = "<" if header[5] == 1 else ">"
        if header[4] == 2:  # ELFCLASS64
            (phoff,) = struct.unpack_from(endian + "Q", header, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", header, 54)
        else:
            (phoff,) = struct.unpack_from(endian + "I", header, 28)
            phentsize, phnum = struct.unpack_from(endian + "HH", header, 42)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(endian + "I", f.read(4))
            if p_type == _PT_INTERP:
                return False
    return True


def containerd_tool(name: str) -> str | None:
    """The path of ``containerd``, its shim or ``ctr`` of the containerd under test, or None.

    The containerd under test is ``$LIBCONTAINERD_CONTAINERD`` (see
    :data:`libcontainerd.supervisor.ENV_BINARY`), else the one on PATH; its shim and ``ctr`` are the
    ones in its directory, as a containerd package installs them, else the ones on PATH.

    >>> containerd_tool("ctr")  # doctest: +SKIP
    '/usr/bin/ctr'
    """
    chosen = shutil.which(os.environ.get(supervisor.ENV_BINARY) or "containerd")
    if name == "containerd":
        return chosen
    if chosen is not None and name in _BESIDE_CONTAINERD:
        beside = os.path.join(os.path.dirname(chosen), name)
        if os.access(beside, os.X_OK):
            return beside
    return shutil.which(name)


def find_busybox(busybox: str | None = None) -> str:
    """The path of the host's static busybox.

    Args:
        busybox: a path or name to use instead of looking on PATH and in /bin, /usr/bin.

    Raises:
        errdefs.NotFound: there is no busybox.
        errdefs.InvalidParameter: the busybox found is dynamically linked (it would not run in a
            rootfs that has no libc).

    >>> find_busybox()  # doctest: +SKIP
    '/usr/bin/busybox'
    """
    candidates = [busybox] if busybox else ["busybox", "/bin/busybox", "/usr/bin/busybox"]
    for name in candidates:
        path = shutil.which(name)
        if path is not None:
            path = os.path.realpath(path)
            if not _is_static_elf(path):
                raise errdefs.InvalidParameter(f"{path} is not a statically linked busybox; install busybox-static")
            return path
    raise errdefs.NotFound(f"no busybox found ({', '.join(c for c in candidates if c)}); install busybox-static")


def busybox_rootfs(dest: str | os.PathLike[str], *, busybox: str | None = None) -> str:
    """Build a minimal root filesystem at ``dest`` from the host's static busybox; reuse one already built.

    The tree has ``bin sbin usr/bin usr/sbin etc proc sys dev tmp root home``, ``/bin/busybox``, a
    relative symlink for every applet of ``busybox --list-full``, and ``/etc/passwd`` with ``root`` and
    ``user`` (uid 1000), ``/etc/group``, ``/etc/hostname``. It is built beside ``dest`` and renamed into
    place, so a half-built tree is never seen; ``dest`` may be missing or an empty directory.

    Args:
        dest: where the rootfs goes.
        busybox: the busybox binary to use instead of the one found on the host.

    Returns:
        The absolute rootfs path.

    Raises:
        errdefs.NotFound, errdefs.InvalidParameter: see :func:`find_busybox`; also a non-empty ``dest``
            that is not a rootfs built here.

    >>> rootfs = busybox_rootfs("/tmp/rootfs")  # doctest: +SKIP
    >>> os.readlink(rootfs + "/bin/sh")  # doctest: +SKIP
    'busybox'
    """
    dest = os.path.abspath(os.fspath(dest))
    if os.path.exists(os.path.join(dest, _MARKER)):
        return dest
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise errdefs.InvalidParameter(f"{dest} exists and is not a rootfs built by busybox_rootfs")
    binary = find_busybox(busybox)
    applets = subprocess.run([binary, "--list-full"], check=True, capture_output=True, text=True).stdout.split()
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".rootfs-", dir=parent)
    try:
        _build_rootfs(tmp, binary, applets)
        try:
            os.rename(tmp, dest)  # replaces a missing or empty dest atomically
        except OSError:
            if not os.path.exists(os.path.join(dest, _MARKER)):  # not another builder winning the race
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _build_rootfs(root: str, binary: str, applets: list[str]) -> None:
    os.chmod(root, 0o755)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)  # mkdir's mode is filtered by the umask
    os.chmod(os.path.join(root, "root"), 0o700)
    with contextlib.suppress(PermissionError):  # only root can give the directory away
        os.chown(os.path.join(root, "home/user"), 1000, 1000)
    target = os.path.join(root, "bin", "busybox")
    shutil.copyfile(binary, target)
    os.chmod(target, 0o755)
    for applet in applets:
        rel = os.path.normpath(applet.lstrip("/"))
        if rel == "bin/busybox" or rel.startswith(".."):
            continue
        link = os.path.join(root, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.relpath(target, os.path.dirname(link)), link)
    files = {
        "etc/passwd": _PASSWD,
        "etc/group": _GROUP,
        "etc/hostname": "busybox\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    }
    for name, text in files.items():
        with open(os.path.join(root, name), "w", encoding="ascii") as f:
            f.write(text)
    with open(binary, "rb") as src, open(os.path.join(root, _MARKER), "w", encoding="ascii") as f:
        f.write(hashlib.sha256(src.read()).hexdigest() + "\n")


# -- the private daemon --------------------------------------------------------------------------


def start_daemon(tmpdir: str | os.PathLike[str], **opts: Any) -> supervisor.Daemon:
    """Start a private containerd under ``<tmpdir>/containerd`` with a socket path that fits.

    When ``<tmpdir>`` is too deep for a unix socket path, the state dir goes to a fresh short
    directory under /tmp; :func:`cleanup_root` removes it too.

    Args:
        tmpdir: a directory the daemon may own a subdirectory of.
        **opts: passed to :func:`libcontainerd.supervisor.start` (e.g. ``health_failures=0``).

    >>> daemon = start_daemon("/tmp/lcd-test")  # doctest: +SKIP
    >>> cleanup_root(daemon)  # doctest: +SKIP
    Leftovers(processes=(), mounts=())
    """
    root = os.path.join(os.path.abspath(os.fspath(tmpdir)), "containerd")
    state = os.path.join(root, "state")
    made = None
    if len(os.fsencode(os.path.join(state, "containerd.sock.ttrpc"))) > supervisor.MAX_SOCKET_PATH:
        state = made = tempfile.mkdtemp(prefix="lcd-", dir="/tmp")
    try:
        return supervisor.start(root, state, **opts)
    except BaseException:
        if made:
            shutil.rmtree(made, ignore_errors=True)
        raise


class PrivateContainerd:
    """A private containerd in a fresh short temporary directory, as a context manager.

    ``with`` starts it (:func:`start_daemon` with ``opts``) and gives the
    :class:`~libcontainerd.supervisor.Daemon`; leaving stops it, removes everything it ran with
    :func:`cleanup_root` and deletes the directory, also when starting failed. Afterwards
    :attr:`leftovers` says what the clean-up had to remove and :attr:`remaining` which of its
    processes survived (both empty when the test cleaned up after itself).

    >>> owner = PrivateContainerd("lcd-doc-", health_failures=0)  # doctest: +SKIP
    >>> with owner as daemon:  # doctest: +SKIP
    ...     client = libcontainerd.new_client(daemon.address, "/tmp/lcd-doc-state", "doc", None)
    >>> owner.leftovers, owner.remaining  # doctest: +SKIP
    (Leftovers(processes=(), mounts=()), {})
    """

    def __init__(self, prefix: str = "lcd-", **opts: Any) -> None:
        self.prefix = prefix
        self.opts = opts
        self.leftovers = Leftovers()
        self.remaining: dict[int, list[str]] = {}
        self._tmp = ""
        self._daemon: supervisor.Daemon | None = None

    def __enter__(self) -> supervisor.Daemon:
        self._tmp = tempfile.mkdtemp(prefix=self.prefix)  # short: the socket path must fit in 104 bytes
        try:
            self._daemon = start_daemon(self._tmp, **self.opts)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        return self._daemon

    def __exit__(self, *exc: object) -> None:
        daemon, self._daemon = self._daemon, None
        if daemon is None:
            return
        try:
            self.leftovers = cleanup_root(daemon)
            self.remaining = daemon_processes(daemon.root_dir)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)


@functools.cache
def _criu_check(path: str) -> bool:
    try:
        proc = subprocess.run([path, "check"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Looks good" in proc.stdout + proc.stderr


def find_criu(candidates: Iterable[str | os.PathLike[str]] = ()) -> str | None:
    """The first CRIU that can checkpoint on this machine (``criu check`` says "Looks good").

    Tried in order: ``$LIBCONTAINERD_CRIU``, ``candidates``, ``criu`` on PATH. A CRIU that is
    installed but fails its own check (Debian 12's 3.17 on a newer kernel) is passed over, since
    every dump would fail; ``scripts/build-criu`` builds one that works. Each is checked once
    per process.

    Args:
        candidates: paths of CRIU binaries to try before the one on PATH.

    Returns:
        The absolute path of a working CRIU, or None.

    >>> find_criu([".cache/criu/4.1.1/bin/criu"])  # doctest: +SKIP
    '/src/libcontainerd/.cache/criu/4.1.1/bin/criu'
    """
    tried = [os.environ.get("LIBCONTAINERD_CRIU", ""), *(os.fspath(c) for c in candidates), shutil.which("criu") or ""]
    for path in tried:
        if path and os.access(path, os.X_OK) and _criu_check(os.path.abspath(path)):
            return os.path.abspath(path)
    return None


def daemon_env(criu: str | None, runtime_dir: str | None = None) -> dict[str, str] | None:
    """An environment for :func:`start_daemon` in which the runc shim finds ``criu`` first on PATH.

    containerd's runc shim runs ``runc checkpoint``/``restore``, and runc runs ``criu`` from
    PATH (runc's ``criu_path`` option is honoured by containerd 1.6 only), so the daemon's PATH
    decides which CRIU dumps.

    Args:
        criu: a path from :func:`find_criu`, or None to leave PATH as it is.
        runtime_dir: the daemon's ``XDG_RUNTIME_DIR``. containerd 1.6 extracts every checkpoint
            it restores into a ``ctrd-checkpoint*`` directory there (``/tmp`` when unset) and
            never removes it; a directory of the daemon's own keeps that with the daemon.

    Returns:
        The environment, or None (this process's, unchanged) when neither is given.

    >>> start_daemon("/tmp/lcd-test", env=daemon_env(find_criu()))  # doctest: +SKIP
    """
    if criu is None and runtime_dir is None:
        return None
    env = dict(os.environ)
    if criu is not None:
        env["PATH"] = os.pathsep.join([os.path.dirname(criu), env.get("PATH", os.defpath)])
    if runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = runtime_dir
    return env


def _config_strings(config_path: str) -> dict[str, str]:
    """The ``state`` and ``[grpc] address`` of a config written by the supervisor."""
    found: dict[str, str] = {}
    table = ""
    try:
        with open(config_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        if line.startswith("["):
            table = line.strip("[]")
        m = re.match(r'^(\w+) = (".*")$', line)
        if m:
            # The supervisor escapes only what JSON escapes too.
            found[f"{table}.{m.group(1)}" if table else m.group(1)] = json.loads(m.group(2))
    return found


def _flag(argv: list[str], name: str) -> str | None:
    for a, b in zip(argv, argv[1:]):
        if a in (name, "-" + name):
            return b
    return None


@attrs.frozen
class _Paths:
    root_dir: str
    state_dir: str
    address: str
    config_path: str


def _paths(daemon_or_root: supervisor.Daemon | str | os.PathLike[str]) -> _Paths:
    if isinstance(daemon_or_root, supervisor.Daemon):
        d = daemon_or_root
        return _Paths(d.root_dir, d.state_dir, d.address, d.config_path)
    root = os.path.abspath(os.fspath(daemon_or_root))
    config_path = os.path.join(root, supervisor.CONFIG_NAME)
    values = _config_strings(config_path)
    state = values.get("state", os.path.join(root, "state"))
    return _Paths(root, state, values.get("grpc.address", os.path.join(state, "containerd.sock")), config_path)


def daemon_processes(daemon_or_root: supervisor.Daemon | str | os.PathLike[str]) -> dict[int, list[str]]:
    """The live containerd and shim processes that belong to a root: ``{pid: argv}``.

    A containerd belongs when its ``--config`` is the root's config; a shim when its ``-address`` is
    the root's socket. Zombies do not count.

    >>> daemon_processes(daemon)  # doctest: +SKIP
    {4242: ['/usr/bin/containerd', '--config', '/tmp/lcd-x/containerd/containerd.toml']}
    """
    paths = _paths(daemon_or_root)
    found = {}
    for pid in _procfs.pids():
        argv = _procfs.cmdline(pid)
        if not argv or not _procfs.running(pid):
            continue
        name = os.path.basename(argv[0])
        shim = name.startswith("containerd-shim") and _flag(argv, "address") == paths.address
        if shim or (name == "containerd" and _flag(argv, "--config") == paths.config_path):
            found[pid] = argv
    return found


def _kill_and_wait(pids: Collection[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _procfs.running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def _bundles(state_dir: str) -> Iterator[tuple[str, str, str]]:
    """``(namespace, id, bundle dir)`` of every task bundle containerd keeps in its state dir."""
    base = os.path.join(state_dir, _TASK_DIR)
    with contextlib.suppress(OSError):
        for ns in sorted(os.listdir(base)):
            with contextlib.suppress(OSError):
                for cid in sorted(os.listdir(os.path.join(base, ns))):
                    yield ns, cid, os.path.join(base, ns, cid)


def _namespaces(state_dir: str) -> set[str]:
    try:
        return set(os.listdir(os.path.join(state_dir, _TASK_DIR)))
    except OSError:
        return set()


def _runc_root_of(bundle: str) -> str:
    """runc's ``--root`` of a task: the ``root`` the shim saved in the bundle's ``options.json``, else its default."""
    try:
        with open(os.path.join(bundle, "options.json"), encoding="utf-8") as f:
            root = json.load(f).get("root")
    except (OSError, ValueError, AttributeError):
        return _RUNC_ROOT
    return root if isinstance(root, str) and os.path.isabs(root) else _RUNC_ROOT


def _runc_cleanup(ns: str, cid: str, bundle: str) -> None:
    """``runc delete --force`` a container of ours: kills its processes, removes its cgroups and runc state."""
    runc_root = os.path.join(_runc_root_of(bundle), ns)
    state_dir = os.path.join(runc_root, cid)
    try:
        with open(os.path.join(state_dir, "state.json"), encoding="utf-8") as f:
            if f"bundle={bundle}" not in f.read():
                return  # same namespace and id, but another daemon's container
    except OSError:
        return
    runc = shutil.which("runc")
    if runc is not None:
        result = subprocess.run(
            [runc, "--root", runc_root, "delete", "--force", cid],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode:
            log.warning("runc delete --force %s/%s: %s", ns, cid, result.stderr.strip())
    shutil.rmtree(state_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(runc_root)


def shim_socket(bundle: str) -> str | None:
    """The socket path of the shim that serves a task bundle of containerd's state dir, or None.

    containerd 1.x's shim writes it to ``<bundle>/address`` as ``unix://PATH``; 2.x's to
    ``<bundle>/bootstrap.json`` (``{"version": 2, "address": "unix://PATH", "protocol": "ttrpc"}``).
    A bundle with neither (the shim died before writing it) gives None.

    >>> shim_socket("/run/containerd/io.containerd.runtime.v2.task/default/web")  # doctest: +SKIP
    '/run/containerd/s/0c6e...'
    """
    address: object = None
    with contextlib.suppress(OSError, ValueError), open(os.path.join(bundle, "bootstrap.json"), "rb") as f:
        address = json.load(f).get("address")
    if address is None:
        with contextlib.suppress(OSError), open(os.path.join(bundle, "address"), encoding="utf-8") as f:
            address = f.read().strip()
    if not isinstance(address, str) or not address:
        return None
    return address.removeprefix("unix://")


def _remove_empty_cgroups(namespaces: Collection[str]) -> None:
    """rmdir ``<controller>/<namespace>`` cgroups (the "/<ns>/<id>" layout) that no longer hold anything.

    rmdir(2) of a cgroup fails unless it has neither processes nor children, so a busy one is left alone.
    """
    base = "/sys/fs/cgroup"
    with contextlib.suppress(OSError):
        controllers = [os.path.join(base, c) for c in os.listdir(base)]
        for ns in namespaces:
            for ctrl in [base, *controllers]:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(ctrl, ns))


def _mounts_under(dirs: Collection[str]) -> list[str]:
    prefixes = [d.rstrip("/") + "/" for d in dirs]
    found = [point for point in _procfs.mount_points()
             if any(point == p.rstrip("/") or point.startswith(p) for p in prefixes)]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _umount(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        log.warning("cannot unmount %s: %s", path, os.strerror(err))


def cleanup_root(daemon_or_root: supervisor.Daemon | str | os.PathLike[str]) -> Leftovers:
    """Remove every trace of a private containerd: for tests' teardown, never for production use.

    In order: stop the daemon (a :class:`~libcontainerd.supervisor.Daemon` is stopped; for a bare root
    any containerd running with its config is killed); ``runc delete --force`` every container whose
    bundle is in its state dir; SIGKILL its shims (``-address`` is its socket) and what runs under
    them; remove the shims' sockets and the now empty ``/<namespace>`` cgroups; lazily unmount
    everything under the root and state dirs, deepest first; remove both directories.

    Args:
        daemon_or_root: the daemon, or its root dir (the state dir is read from its config).

    Returns:
        What had to be killed besides the daemon and what was unmounted (empty when all was clean).

    >>> cleanup_root(daemon)  # doctest: +SKIP
    Leftovers(processes=(), mounts=())
    """
    paths = _paths(daemon_or_root)
    if isinstance(daemon_or_root, supervisor.Daemon):
        daemon_or_root.stop()
    procs = daemon_processes(paths.root_dir)
    _kill_and_wait([pid for pid, argv in procs.items() if os.path.basename(argv[0]) == "containerd"])

    shims = {pid for pid, argv in procs.items() if os.path.basename(argv[0]) != "containerd"}
    bundles = list(_bundles(paths.state_dir))
    for ns, cid, bundle in bundles:
        _runc_cleanup(ns, cid, bundle)
    below = _procfs.descendants(shims)
    _kill_and_wait(below)
    _kill_and_wait(shims)
    for _ns, _cid, bundle in bundles:
        # A killed shim leaves its socket behind.
        socket = shim_socket(bundle)
        if socket is not None and socket.startswith("/run/containerd/s/"):
            with contextlib.suppress(OSError):
                os.unlink(socket)

    _remove_empty_cgroups({ns for ns, _cid, _bundle in bundles} | _namespaces(paths.state_dir))
    mounts = _mounts_under([paths.root_dir, paths.state_dir])
    for point in mounts:
        _umount(point)
    for d in (paths.state_dir, paths.root_dir):
        shutil.rmtree(d, ignore_errors=True)
    leftovers = Leftovers(processes=tuple(sorted(shims | below)), mounts=tuple(mounts))
    if leftovers:
        log.warning("cleaned up after containerd under %s: %s", paths.root_dir, leftovers)
    return leftovers


# -- requirements and leak checks ------------------------------------------------------------------


def _missing(names: Collection[str]) -> list[str]:
    missing = []
    for name in names:
        if name == "busybox":
            try:
                find_busybox()
            except errdefs.LibcontainerdError as err:
                missing.append(str(err))
        elif containerd_tool(name) is None:
            missing.append(name)
    return missing


def require_tools(*names: str, root: bool = False) -> None:
    """Skip the calling test when a tool is missing; under CI (env ``CI`` set), fail it instead.

    Args:
        *names: executables that must be on PATH (``busybox`` must also be static).
        root: also require running as root.

    >>> require_tools("busybox")  # doctest: +SKIP
    """
    missing = _missing(names)
    if root and os.geteuid() != 0:
        missing.append("root privileges")
    if not missing:
        return
    _skip_or_fail(f"needs {', '.join(missing)} (apt-get install containerd runc busybox-static; run as root)")


def require_containerd() -> None:
    """Skip (or, under CI, fail) unless containerd, its runc shim, runc, a static busybox and root are here.

    >>> require_containerd()  # doctest: +SKIP
    """
    require_tools(*_CONTAINERD_TOOLS, root=True)


def require_criu(candidates: Iterable[str | os.PathLike[str]] = ()) -> str:
    """The path of a working CRIU (see :func:`find_criu`); skip the test without one, fail it under CI.

    >>> require_criu()  # doctest: +SKIP
    '/usr/sbin/criu'
    """
    criu = find_criu(candidates)
    if criu is None:
        _skip_or_fail("needs a CRIU that passes `criu check` (scripts/build-criu builds CRIU 4.1.1)")
    return criu


def _skip_or_fail(reason: str) -> NoReturn:
    import pytest  # lazily: this module is imported by programs that do not have pytest

    if os.environ.get("CI"):
        pytest.fail(f"integration tests must not skip in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def open_fds() -> int:
    """How many file descriptors this process has open (entries of /proc/self/fd).

    >>> before = open_fds(); f = open("/dev/null"); open_fds() - before
    1
    >>> f.close()
    """
    return len(_procfs.fds()) - 1  # the listing's own descriptor


def leftover_threads(baseline: Collection[threading.Thread], prefix: str = "libcontainerd-") -> list[str]:
    """Names of live threads that were not in ``baseline`` and whose name starts with ``prefix``.

    Args:
        baseline: the threads alive before, e.g. ``threading.enumerate()``.
        prefix: which threads count; ``""`` counts every thread.

    >>> before = threading.enumerate(); leftover_threads(before)
    []
    """
    known = set(baseline)
    return sorted(t.name for t in threading.enumerate() if t not in known and t.name.startswith(prefix))


def remove_containers(client: Client) -> list[str]:
    """Force-delete every task and container in the client's namespace; return their ids.

    For test teardown and scripts that start over: whatever state a test or a fault left a
    container in, its task is killed and deleted, then the container and its bundle dir.

    >>> remove_containers(client)  # doctest: +SKIP
    ['web-1', 'web-2']
    """
    removed = []
    for ctr in client.list_containers():
        try:
            ctr.task().force_delete()
        except errdefs.NotFound:
            pass
        ctr.delete()
        removed.append(ctr.id)
    return removed


# -- a backend and a sink for tests ---------------------------------------------------------------


class RecordingBackend:
    """A backend that records every event and lets a test wait for one.

    Attributes:
        events: ``(container_id, event_type, info)`` in the order they were delivered.
        threads: the names of the threads that delivered them.
        hook: called with each event before it is recorded, on the delivering thread: a test
            makes the backend slow, raise, or close the client from a callback with it.

    >>> rec = RecordingBackend()
    >>> client = libcontainerd.new_client(address, state_dir, "ns", rec)  # doctest: +SKIP
    >>> task = client.new_container("web", spec).start()  # doctest: +SKIP
    >>> rec.wait_for("web", EventType.START).pid == task.pid  # doctest: +SKIP
    True
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, EventType, EventInfo]] = []
        self.threads: set[str] = set()
        self.hook: Callable[[str, EventType, EventInfo], None] | None = None
        self._cond = threading.Condition()

    def process_event(self, container_id: str, event_type: EventType, info: EventInfo) -> None:
        """Record the event (after the :attr:`hook`, if any) and wake whoever waits for it."""
        self.threads.add(threading.current_thread().name)
        if self.hook is not None:
            self.hook(container_id, event_type, info)
        with self._cond:
            self.events.append((container_id, event_type, info))
            self._cond.notify_all()

    def of(self, container_id: str) -> list[tuple[EventType, str]]:
        """``(event_type, process_id)`` of each event of one container so far.

        >>> RecordingBackend().of("web")
        []
        """
        with self._cond:
            return [(t, i.process_id) for c, t, i in self.events if c == container_id]

    def wait_for(self, container_id: str, event_type: EventType, process_id: str | None = None,
                 timeout: float = 20.0) -> EventInfo:
        """The first event of that type for the container (and process, if given), once it arrived.

        Raises:
            TimeoutError: none arrived within ``timeout`` seconds (the message lists what did).

        >>> RecordingBackend().wait_for("web", EventType.EXIT, timeout=0)
        Traceback (most recent call last):
        ...
        TimeoutError: no EventType.EXIT for web/None within 0 s; got []
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for c, t, i in self.events:
                    if c == container_id and t is event_type and (process_id is None or i.process_id == process_id):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {event_type} for {container_id}/{process_id} within {timeout:g} s; "
                                       f"got {self.of(container_id)}")
                self._cond.wait(left)


class CountingSink(io.RawIOBase):
    """A binary stream for :func:`libcontainerd.stdio.attach` that counts what is written and drops it.

    For tests of large outputs: memory then shows what the SDK holds, not what the test kept.
    Writes may come from several threads.

    >>> sink = CountingSink(); sink.write(b"abc"); sink.count
    3
    3
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.count = 0
        self.flushes = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        with self._lock:
            self.count += n
        return n

    def flush(self) -> None:
        super().flush()
        self.flushes += 1
def busybox_image_archive(path: str | os.PathLike[str], rootfs: str | os.PathLike[str],
                          name: str = "docker.io/library/busybox:latest", *,
                          config: dict[str, Any] | None = None) -> str:
    """Write a ``docker save`` archive of a two-layer image made from a busybox rootfs (no network needed).

    The lower layer is the rootfs (plus ``/etc/doomed`` and ``/data/keep``); the upper one deletes
    ``/etc/doomed`` with a whiteout and adds ``/hello.txt``. ``config`` is the image config's
    ``config`` (Cmd, Env, WorkingDir, User ...); default ``{"Cmd": ["sh"]}``.

    Returns:
        The archive's path, for :meth:`Client.import_images`.

    >>> archive = busybox_image_archive("/tmp/bb.tar", busybox_rootfs("/tmp/rootfs"))  # doctest: +SKIP
    >>> [i.name for i in client.import_images(archive)]  # doctest: +SKIP
    ['docker.io/library/busybox:latest']
    """
    from libcontainerd import _testing_images

    out = os.fspath(path)
    _testing_images.write_docker_save(out, _testing_images.image_layers(os.fspath(rootfs)), [name],
                                      config=config or {"Cmd": ["sh"]})
    return out

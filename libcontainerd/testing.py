"""Support for tests, demos and benchmarks: a busybox root filesystem and a private containerd.

This module owns what a test needs around the SDK: :func:`busybox_rootfs` builds a minimal
root filesystem from the host's static busybox; :func:`start_daemon` starts a private,
supervised containerd with a short socket path; :func:`cleanup_root` removes every trace of
one (daemon, shims, container processes, runc state, mounts, directories), which the
supervisor itself must never do; :func:`require_containerd` skips (or, under CI, fails) a
test when the host lacks what it needs; :func:`open_fds` and :func:`leftover_threads` help leak
checks. It must import without pytest (pytest is imported lazily) and must never touch a
system-wide containerd or a process that is not under the given root.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
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
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, Optional, Union

import attrs

from libcontainerd import errdefs, supervisor

if TYPE_CHECKING:
    from libcontainerd.remote import Client

__all__ = [
    "Leftovers",
    "busybox_image_archive",
    "busybox_rootfs",
    "cleanup_root",
    "daemon_processes",
    "find_busybox",
    "leftover_threads",
    "open_fds",
    "remove_containers",
    "require_containerd",
    "require_tools",
    "start_daemon",
]

log = logging.getLogger(__name__)

_MARKER = ".libcontainerd-rootfs"
_RUNC_ROOT = "/run/containerd/runc"  # the runc shim's default --root; one subdirectory per namespace
_TASK_DIR = "io.containerd.runtime.v2.task"
_MNT_DETACH = 2
_PT_INTERP = 3
_CONTAINERD_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "busybox")

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


def find_busybox(busybox: Optional[str] = None) -> str:
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


def busybox_rootfs(dest: Union[str, os.PathLike[str]], *, busybox: Optional[str] = None) -> str:
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


def start_daemon(tmpdir: Union[str, os.PathLike[str]], **opts: Any) -> supervisor.Daemon:
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


def _pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _flag(argv: list[str], name: str) -> Optional[str]:
    for a, b in zip(argv, argv[1:]):
        if a in (name, "-" + name):
            return b
    return None


def _parents() -> dict[int, int]:
    parents = {}
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat_line = f.read()
        except OSError:
            continue
        fields = stat_line[stat_line.rfind(b")") + 2 :].split()
        if fields and fields[0] != b"Z":
            parents[pid] = int(fields[1])
    return parents


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return True
    return stat_line[stat_line.rfind(b")") + 2 :][:1] == b"Z"  # a zombie our init may never reap


@attrs.frozen
class _Paths:
    root_dir: str
    state_dir: str
    address: str
    config_path: str


def _paths(daemon_or_root: Union[supervisor.Daemon, str, os.PathLike[str]]) -> _Paths:
    if isinstance(daemon_or_root, supervisor.Daemon):
        d = daemon_or_root
        return _Paths(d.root_dir, d.state_dir, d.address, d.config_path)
    root = os.path.abspath(os.fspath(daemon_or_root))
    config_path = os.path.join(root, supervisor.CONFIG_NAME)
    values = _config_strings(config_path)
    state = values.get("state", os.path.join(root, "state"))
    return _Paths(root, state, values.get("grpc.address", os.path.join(state, "containerd.sock")), config_path)


def daemon_processes(daemon_or_root: Union[supervisor.Daemon, str, os.PathLike[str]]) -> dict[int, list[str]]:
    """The live containerd and shim processes that belong to a root: ``{pid: argv}``.

    A containerd belongs when its ``--config`` is the root's config; a shim when its ``-address`` is
    the root's socket. Zombies do not count.

    >>> daemon_processes(daemon)  # doctest: +SKIP
    {4242: ['/usr/bin/containerd', '--config', '/tmp/lcd-x/containerd/containerd.toml']}
    """
    paths = _paths(daemon_or_root)
    found = {}
    for pid in _pids():
        argv = _cmdline(pid)
        if not argv or _gone(pid):
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
        while not _gone(pid) and time.monotonic() < deadline:
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


def _runc_cleanup(ns: str, cid: str, bundle: str) -> None:
    """``runc delete --force`` a container of ours: kills its processes, removes its cgroups and runc state."""
    state_dir = os.path.join(_RUNC_ROOT, ns, cid)
    try:
        with open(os.path.join(state_dir, "state.json"), encoding="utf-8") as f:
            if f"bundle={bundle}" not in f.read():
                return  # same namespace and id, but another daemon's container
    except OSError:
        return
    runc = shutil.which("runc")
    if runc is not None:
        result = subprocess.run(
            [runc, "--root", os.path.join(_RUNC_ROOT, ns), "delete", "--force", cid],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode:
            log.warning("runc delete --force %s/%s: %s", ns, cid, result.stderr.strip())
    shutil.rmtree(state_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.join(_RUNC_ROOT, ns))


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
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if any(point == p.rstrip("/") or point.startswith(p) for p in prefixes):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _umount(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        log.warning("cannot unmount %s: %s", path, os.strerror(err))


def cleanup_root(daemon_or_root: Union[supervisor.Daemon, str, os.PathLike[str]]) -> Leftovers:
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
    parents = _parents()
    below: set[int] = set()
    frontier = set(shims)
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - below
        below |= frontier
    _kill_and_wait(below)
    _kill_and_wait(shims)
    for _ns, _cid, bundle in bundles:
        # The shim writes where its socket is; a killed shim leaves the socket behind.
        with contextlib.suppress(OSError), open(os.path.join(bundle, "address"), encoding="utf-8") as f:
            socket = f.read().strip().removeprefix("unix://")
            if socket.startswith("/run/containerd/s/"):
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
        elif shutil.which(name) is None:
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
    return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor


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


def busybox_image_archive(path: Union[str, os.PathLike[str]], rootfs: Union[str, os.PathLike[str]],
                          name: str = "docker.io/library/busybox:latest", *,
                          config: Optional[dict[str, Any]] = None) -> str:
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

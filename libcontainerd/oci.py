"""OCI runtime spec builders: plain ``dict`` specs that runc accepts as they are.

This module owns the *shape* of the specs the SDK hands to containerd: a complete Linux
container spec modelled on containerd 1.6's ``oci.populateDefaultUnixSpec`` (same mounts,
capabilities, masked and read-only paths, namespaces and device rule), the process block an
``exec`` needs, and a few small "spec options" (memory limit, user namespace, extra mounts). It
checks what callers pass and raises :class:`~libcontainerd.errdefs.InvalidParameter` before
anything reaches the daemon. It must not talk to containerd (but through the image handle
:func:`image_spec` is given, for its config and ``/etc/passwd``), touch the filesystem, or
serialise (the spec travels as JSON; the remote client does that). Builders return fresh
dicts, and the ``with_*`` helpers return a modified deep copy, never changing their input.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from libcontainerd import _validation as valid
from libcontainerd.errdefs import InvalidParameter, NotFound

if TYPE_CHECKING:
    from libcontainerd.remote import Image

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_PATH_ENV",
    "DEFAULT_READONLY_PATHS",
    "OCI_VERSION",
    "bind_mount",
    "default_spec",
    "image_spec",
    "process_spec",
    "resolve_user",
    "with_memory_limit",
    "with_mounts",
    "with_user_namespace",
]

#: The runtime-spec version containerd 1.6 writes (runc 1.1 reports the same).
OCI_VERSION = "1.0.2-dev"

#: The ``PATH`` every process gets unless the caller sets its own.
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: containerd's ``defaultUnixCaps`` (also Docker's default set).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

#: Paths hidden from the container (containerd 1.6's list).
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)

#: Paths made read-only in the container (containerd 1.6's list).
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_NAMESPACES = ("pid", "ipc", "uts", "mount", "network")

# Accepted forms of ``env``.
Env = Union[Mapping[str, str], Sequence[str]]


def _default_mounts() -> list[dict[str, Any]]:
    # containerd's defaultMounts(), in its order: /dev before /dev/pts and friends.
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
    ]


def _merge_env(env: Env | None, terminal: bool) -> list[str]:
    """containerd's ``replaceOrAppendEnvValues`` over the default PATH, plus TERM for a terminal."""
    merged: dict[str, str] = {"PATH": DEFAULT_PATH_ENV.partition("=")[2]}
    if env is None:
        pairs: list[tuple[object, object]] = []
    elif isinstance(env, Mapping):
        pairs = list(env.items())
    elif isinstance(env, (str, bytes)) or not isinstance(env, Sequence):
        raise InvalidParameter(f'env must be a mapping or a list of "KEY=value" strings, not {env!r}')
    else:
        pairs = []
        for i, raw in enumerate(env):
            entry = valid.text(raw, f"env[{i}]")
            if "=" not in entry:
                raise InvalidParameter(f'env[{i}] must look like "KEY=value", not {entry!r}')
            name, _, text = entry.partition("=")
            pairs.append((name, text))
    for raw_name, raw_value in pairs:
        key = valid.text(raw_name, "an env name")
        if not key or "=" in key:
            raise InvalidParameter(f"env name {key!r} must be non-empty and must not contain '='")
        merged[key] = valid.text(raw_value, f"env {key!r}")
    if terminal:
        merged.setdefault("TERM", "xterm")
    return [f"{key}={value}" for key, value in merged.items()]


def process_spec(
    args: Sequence[str],
    *,
    env: Env | None = None,
    cwd: str = "/",
    terminal: bool = False,
    user: tuple[int, int] = (0, 0),
    additional_gids: Sequence[int] = (),
) -> dict[str, Any]:
    """Build an OCI ``process`` block, as :meth:`Task.exec` takes it and :func:`default_spec` uses.

    The environment is ``PATH`` (:data:`DEFAULT_PATH_ENV`) overridden or extended by ``env``,
    plus ``TERM=xterm`` with a terminal unless ``env`` sets ``TERM``. Root gets the default
    capabilities in the bounding, effective and permitted sets; any other uid gets them only
    in the bounding set, as Docker does, so a non-root process holds no capabilities.

    Args:
        args: the command and its arguments, a non-empty list of strings.
        env: ``{"KEY": "value"}`` or ``["KEY=value", ...]``.
        cwd: absolute working directory inside the container.
        terminal: allocate a pseudo-terminal.
        user: ``(uid, gid)`` inside the container.
        additional_gids: supplementary groups.

    Returns:
        A JSON-serialisable dict.

    Raises:
        InvalidParameter: a malformed argument (the message names it).

    >>> p = process_spec(["ls", "-l"], env={"LANG": "C"}, user=(1000, 1000))
    >>> p["args"], p["env"], p["user"]["uid"], p["capabilities"]["effective"]
    (['ls', '-l'], ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG=C'], 1000, [])
    """
    checked_args = valid.args(args)
    uid, gid = valid.user(user)
    if isinstance(additional_gids, (str, bytes)) or not isinstance(additional_gids, Iterable):
        raise InvalidParameter(f"additional_gids must be a list of group ids, not {additional_gids!r}")
    gids = [valid.uint32(g, "an additional gid") for g in additional_gids]
    if not isinstance(terminal, bool):
        raise InvalidParameter(f"terminal must be True or False, not {terminal!r}")
    granted = list(DEFAULT_CAPABILITIES) if uid == 0 else []
    return {
        "terminal": terminal,
        "user": {"uid": uid, "gid": gid, "additionalGids": gids},
        "args": checked_args,
        "env": _merge_env(env, terminal),
        "cwd": valid.cwd(cwd),
        "capabilities": {
            "bounding": list(DEFAULT_CAPABILITIES),
            "effective": granted,
            "permitted": list(granted),
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    }


def default_spec(
    rootfs: str | os.PathLike[str],
    args: Sequence[str],
    *,
    env: Env | None = None,
    cwd: str = "/",
    terminal: bool = False,
    user: tuple[int, int] = (0, 0),
    hostname: str | None = None,
    readonly_rootfs: bool = False,
    additional_gids: Sequence[int] = (),
    cgroups_path: str | None = None,
) -> dict[str, Any]:
    """Build a complete Linux OCI runtime spec, like containerd's default Unix spec.

    New pid, ipc, uts, mount and network namespaces (the network namespace is empty but for
    ``lo``); containerd's default mounts, masked and read-only paths; a device cgroup that
    denies everything (runc itself then allows and creates ``/dev/null``, ``/dev/zero``,
    ``/dev/tty`` and the other standard devices). ``linux.cgroupsPath`` is left out unless
    given: :meth:`Client.new_container` then sets ``/<namespace>/<id>``, as containerd does.

    Args:
        rootfs: the root filesystem directory; a relative path is relative to the bundle.
        args: the command and its arguments, a non-empty list of strings.
        env: ``{"KEY": "value"}`` or ``["KEY=value", ...]``, on top of the default ``PATH``.
        cwd: absolute working directory inside the container.
        terminal: allocate a pseudo-terminal (and set ``TERM=xterm``).
        user: ``(uid, gid)`` inside the container.
        hostname: the container's hostname (at most 64 bytes, the kernel's limit); unset leaves runc's default.
        readonly_rootfs: mount the root filesystem read-only.
        additional_gids: supplementary groups of the process.
        cgroups_path: ``linux.cgroupsPath``, e.g. ``"/mynamespace/myid"``.

    Returns:
        A JSON-serialisable dict.

    Raises:
        InvalidParameter: a malformed argument (the message names it).

    >>> spec = default_spec("/tmp/rootfs", ["sh", "-c", "echo hi"], hostname="box")
    >>> spec["root"], spec["hostname"], spec["process"]["args"]
    ({'path': '/tmp/rootfs', 'readonly': False}, 'box', ['sh', '-c', 'echo hi'])
    """
    try:
        root_path = os.fspath(rootfs)
    except TypeError:
        raise InvalidParameter(f"rootfs must be a path, not {rootfs!r}") from None
    root_path = valid.text(root_path, "rootfs")
    if not root_path:
        raise InvalidParameter("rootfs must not be empty")
    if not isinstance(readonly_rootfs, bool):
        raise InvalidParameter(f"readonly_rootfs must be True or False, not {readonly_rootfs!r}")
    process = process_spec(args, env=env, cwd=cwd, terminal=terminal, user=user, additional_gids=additional_gids)
    linux: dict[str, Any] = {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": ns} for ns in _NAMESPACES],
        "maskedPaths": list(DEFAULT_MASKED_PATHS),
        "readonlyPaths": list(DEFAULT_READONLY_PATHS),
    }
    if cgroups_path is not None:
        linux["cgroupsPath"] = valid.text(cgroups_path, "cgroups_path")
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": root_path, "readonly": readonly_rootfs},
    }
    if hostname is not None:
        spec["hostname"] = valid.hostname(hostname)
    spec["mounts"] = _default_mounts()
    spec["linux"] = linux
    return spec


def _linux(spec: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise InvalidParameter(f"spec must be an OCI runtime spec dict, not {type(spec).__name__}")
    new = copy.deepcopy(dict(spec))
    linux = new.setdefault("linux", {})
    if not isinstance(linux, dict):
        raise InvalidParameter("spec['linux'] must be a dict")
    return new


def with_memory_limit(spec: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """Return a copy of ``spec`` with ``linux.resources.memory.limit`` set to ``limit`` bytes.

    Args:
        spec: an OCI runtime spec dict (not modified).
        limit: the memory limit in bytes, a positive integer.

    Raises:
        InvalidParameter: ``limit`` is not a positive integer.

    >>> with_memory_limit(default_spec("/r", ["true"]), 64 << 20)["linux"]["resources"]["memory"]
    {'limit': 67108864}
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit < 2**63:
        raise InvalidParameter(f"memory limit must be a positive number of bytes, not {limit!r}")
    new = _linux(spec)
    resources = new["linux"].setdefault("resources", {})
    resources.setdefault("memory", {})["limit"] = limit
    return new


def _mappings(entries: Iterable[tuple[int, int, int]], what: str) -> list[dict[str, int]]:
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
        raise InvalidParameter(f"{what} must be a list of (container_id, host_id, size) triples, not {entries!r}")
    result = []
    for entry in entries:
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 3:
            raise InvalidParameter(f"{what} entries must be (container_id, host_id, size) triples, not {entry!r}")
        container_id = valid.uint32(entry[0], f"{what} container id")
        host_id = valid.uint32(entry[1], f"{what} host id")
        size = valid.uint32(entry[2], f"{what} size")
        if size == 0:
            raise InvalidParameter(f"{what} size must be at least 1 in {entry!r}")
        result.append({"containerID": container_id, "hostID": host_id, "size": size})
    if not result:
        raise InvalidParameter(f"{what} must hold at least one mapping")
    return result


def with_user_namespace(
    spec: Mapping[str, Any],
    uid_map: Iterable[tuple[int, int, int]],
    gid_map: Iterable[tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """Return a copy of ``spec`` in a new user namespace with the given id mappings.

    Like containerd's ``WithUserNamespace``: adds the ``user`` namespace once and appends the
    mappings (so calling it twice adds more ranges). The root filesystem must be usable by the
    mapped ids (e.g. owned by the host id that container root maps to).

    Args:
        spec: an OCI runtime spec dict (not modified).
        uid_map: ``(container_id, host_id, size)`` triples.
        gid_map: the same for groups; ``None`` uses ``uid_map``.

    Raises:
        InvalidParameter: a malformed mapping.

    >>> s = with_user_namespace(default_spec("/r", ["true"]), [(0, 100000, 65536)])
    >>> s["linux"]["uidMappings"], {"type": "user"} in s["linux"]["namespaces"]
    ([{'containerID': 0, 'hostID': 100000, 'size': 65536}], True)
    """
    uids = _mappings(uid_map, "uid_map")
    gids = uids if gid_map is None else _mappings(gid_map, "gid_map")
    new = _linux(spec)
    linux = new["linux"]
    namespaces = linux.setdefault("namespaces", [])
    if not any(ns.get("type") == "user" for ns in namespaces):
        namespaces.append({"type": "user"})
    linux.setdefault("uidMappings", []).extend(copy.deepcopy(uids))
    linux.setdefault("gidMappings", []).extend(copy.deepcopy(gids))
    return new


def bind_mount(source: str | os.PathLike[str], destination: str, *, readonly: bool = False) -> dict[str, Any]:
    """Build a recursive bind mount entry for :func:`with_mounts`.

    Args:
        source: host path to bind.
        destination: absolute path inside the container.
        readonly: mount it read-only.

    >>> bind_mount("/srv/data", "/data", readonly=True)
    {'destination': '/data', 'type': 'bind', 'source': '/srv/data', 'options': ['rbind', 'ro']}
    """
    return {
        "destination": destination,
        "type": "bind",
        "source": os.fspath(source),
        "options": ["rbind", "ro" if readonly else "rw"],
    }


def with_mounts(spec: Mapping[str, Any], mounts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Return a copy of ``spec`` with ``mounts`` added after the existing ones.

    Each mount is an OCI mount dict (``destination`` required and absolute; ``type``,
    ``source`` and ``options`` as runc takes them), e.g. from :func:`bind_mount`. A mount on a
    destination that is already mounted replaces that entry in its place (so a new ``/dev``
    still comes before ``/dev/pts``), as Docker's user mounts replace the defaults.

    Args:
        spec: an OCI runtime spec dict (not modified).
        mounts: the mounts to add, in order.

    Raises:
        InvalidParameter: a mount without an absolute ``destination``, or with malformed options.

    >>> s = with_mounts(default_spec("/r", ["true"]), [bind_mount("/etc/hosts", "/etc/hosts", readonly=True)])
    >>> s["mounts"][-1]["destination"]
    '/etc/hosts'
    """
    if isinstance(mounts, Mapping) or not isinstance(mounts, Iterable):
        raise InvalidParameter(f"mounts must be a list of mount dicts, not {mounts!r}")
    checked = []
    for mount in mounts:
        if not isinstance(mount, Mapping):
            raise InvalidParameter(f"a mount must be a dict, not {mount!r}")
        destination = mount.get("destination")
        if not isinstance(destination, str) or not destination.startswith("/"):
            raise InvalidParameter(f"a mount needs an absolute 'destination', not {destination!r}")
        options = mount.get("options", [])
        if isinstance(options, str) or not all(isinstance(o, str) for o in options):
            raise InvalidParameter(f"options of the mount on {destination!r} must be a list of strings")
        checked.append(copy.deepcopy(dict(mount)))
    if not isinstance(spec, Mapping):
        raise InvalidParameter(f"spec must be an OCI runtime spec dict, not {type(spec).__name__}")
    new = copy.deepcopy(dict(spec))
    result: list[Any] = list(new.get("mounts", []))
    for mount in checked:
        same = [i for i, old in enumerate(result) if old.get("destination") == mount["destination"]]
        if same:
            result[same[0]] = mount
        else:
            result.append(mount)
    new["mounts"] = result
    return new


def _lookup(table: bytes | None, key: str) -> list[str] | None:
    """The ``/etc/passwd`` or ``/etc/group`` entry whose name (or, for a number, id) is ``key``."""
    for line in (table or b"").decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and (fields[0] == key or (key.isdigit() and fields[2] == key)):
            return fields
    return None


def resolve_user(user: str, passwd: bytes | None, group: bytes | None,
                 image_name: str = "image") -> tuple[int, int]:
    """An image config's ``User`` (``name``, ``uid``, ``name:group``, ``uid:gid``...) as ``(uid, gid)``.

    As containerd's ``oci.WithUser``: a number needs no entry in ``/etc/passwd`` (its gid is then
    the entry's, or 0); a name must have one.

    Raises:
        NotFound: a user or group name that the image's ``/etc/passwd`` or ``/etc/group`` lacks.

    Example:
        >>> resolve_user("1000:50", None, None)
        (1000, 50)
        >>> resolve_user("user", b"user:x:1000:1001::/home/user:/bin/sh", None)
        (1000, 1001)
    """
    name, _, grp = user.partition(":")
    if not name:
        name = "0"
    entry = _lookup(passwd, name)
    if name.isdigit():
        uid = int(name)
        gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    elif entry is None:
        raise NotFound(f"image {image_name}: user {name!r} is not in its /etc/passwd")
    else:
        uid, gid = int(entry[2]), int(entry[3])
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            gentry = _lookup(group, grp)
            if gentry is None:
                raise NotFound(f"image {image_name}: group {grp!r} is not in its /etc/group")
            gid = int(gentry[2])
    return valid.user((uid, gid))


def image_spec(
    image: Image,
    args: Sequence[str] | None = None,
    *,
    env: Env | None = None,
    cwd: str | None = None,
    user: str | tuple[int, int] | None = None,
    terminal: bool = False,
    hostname: str | None = None,
) -> dict[str, Any]:
    """A complete runtime spec for a container of ``image`` (``root.path`` is ``"rootfs"``).

    The image config gives the defaults, as containerd's ``oci.WithImageConfig`` does: ``args``
    default to its Entrypoint + Cmd (given ``args`` replace both), ``env`` is merged over its Env,
    ``cwd`` defaults to its WorkingDir (else ``/``) and ``user`` to its User; a user or group
    *name* is looked up in the image's own ``/etc/passwd`` and ``/etc/group`` (read from its
    layers in the content store).

    Args:
        image: an :class:`~libcontainerd.Image` (from ``client.pull``, ``client.get_image``...).
        args: the command; default Entrypoint + Cmd.
        env: ``{"KEY": "value"}`` or ``["KEY=value"]`` over the image's Env.
        cwd: absolute working directory.
        user: ``(uid, gid)`` or a string as in a Dockerfile's USER (``"nobody"``, ``"1000:1000"``).
        terminal: allocate a pseudo-terminal.
        hostname: the container's hostname.

    Raises:
        InvalidParameter: no command (neither ``args`` nor Entrypoint/Cmd), or a malformed argument.
        NotFound: a user or group name that the image does not know.

    >>> spec = oci.image_spec(client.get_image("docker.io/library/busybox:latest"), ["id"])  # doctest: +SKIP
    >>> client.new_container("id1", spec, image="docker.io/library/busybox:latest")  # doctest: +SKIP
    """
    config = image.config().get("config") or {}
    if not isinstance(config, Mapping):
        config = {}
    if args is None:
        args = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        if not args:
            raise InvalidParameter(f"image {image.name} has no Entrypoint or Cmd: give args")
    merged: dict[str, str] = {}
    for entry in config.get("Env") or []:
        if isinstance(entry, str) and "=" in entry:
            key, _, value = entry.partition("=")
            merged[key] = value
    if env is not None:
        if isinstance(env, Mapping):
            merged.update(env)
        elif isinstance(env, (str, bytes)) or not isinstance(env, Sequence):
            raise InvalidParameter(f'env must be a mapping or a list of "KEY=value" strings, not {env!r}')
        else:
            for i, entry in enumerate(env):
                if not isinstance(entry, str) or "=" not in entry:
                    raise InvalidParameter(f'env[{i}] must look like "KEY=value", not {entry!r}')
                key, _, value = entry.partition("=")
                merged[key] = value
    if cwd is None:
        cwd = str(config.get("WorkingDir") or "/")
    if user is None:
        user = str(config.get("User") or "")
    if isinstance(user, str):
        needs_files = any(part and not part.isdigit() for part in user.split(":"))
        passwd = image.read_file("/etc/passwd") if needs_files or user.isdigit() else None
        group = image.read_file("/etc/group") if needs_files and ":" in user else None
        ids = resolve_user(user, passwd, group, image.name)
    else:
        ids = valid.user(user)
    return default_spec("rootfs", args, env=merged, cwd=cwd, terminal=terminal, user=ids, hostname=hostname)

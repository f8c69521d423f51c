"""The command line: argparse subcommands over the public SDK (``libcontainerd run``, ``ps``, ``events`` ...).

This module owns the parser, the global options (``--address``, ``--namespace``,
``--state-dir``, ``--debug``, each also from a ``LIBCONTAINERD_*`` environment
variable, accepted before and after the subcommand), the terminal handling of
``run``/``exec`` (raw mode, SIGWINCH → ``resize``) and the formatting of tables,
human units and JSON lines. It is the one place of the package that writes to
stdout/stderr. It must use the public API only (``new_client``, ``Container``,
``Task``, ``oci``, ``stdio``, ``supervisor``, ``testing``), never the client's
private parts or the generated gRPC modules, and it must turn every error into one
line on stderr and an exit code, with a traceback only under ``--debug``. The
``demo`` subcommand lives in :mod:`libcontainerd._cli_demo`, the image commands (``pull``,
``images``, ``rmi``, ``import``) in :mod:`libcontainerd._cli_images`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import re
import shlex
import signal
import sys
import termios
import threading
import traceback
import tty
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Callable, NoReturn, Optional, Protocol

import libcontainerd
from libcontainerd import errdefs
from libcontainerd.types import EventInfo, EventType, Stats, Status

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_DAEMON_ROOT",
    "DEFAULT_NAMESPACE",
    "DEFAULT_STATE_DIR",
    "build_parser",
    "human_bytes",
    "human_duration",
    "main",
    "parse_memory",
]

log = logging.getLogger(__name__)

PROG = "libcontainerd"
DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "libcontainerd"
DEFAULT_STATE_DIR = "/var/run/libcontainerd"
DEFAULT_DAEMON_ROOT = "/var/lib/libcontainerd/containerd"
ENV_ADDRESS = "LIBCONTAINERD_ADDRESS"
ENV_NAMESPACE = "LIBCONTAINERD_NAMESPACE"
ENV_STATE_DIR = "LIBCONTAINERD_STATE_DIR"
ENV_DEBUG = "LIBCONTAINERD_DEBUG"

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Unary calls get a deadline so that a wedged daemon cannot hang the command forever; waits have none.
_CALL_TIMEOUT = 120.0
# After the process exited, how long its output may take to drain (a background child may hold it open).
_DRAIN_TIMEOUT = 5.0
# The cache of --busybox, inside the state dir; a leading "_" cannot be a container id, so no bundle clashes.
_ROOTFS_CACHE = os.path.join("_rootfs", "busybox")
_NO_LIMIT = 1 << 62  # cgroup v1 reports "no memory limit" as a page-rounded 2**63-1
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


class UsageError(Exception):
    """A bad command line value found after argparse (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line in the style of every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


# -- small pure helpers (unit-tested) ---------------------------------------------------------------


def human_bytes(n: int) -> str:
    """A byte count in binary units with one decimal.

    >>> human_bytes(12_900_000)
    '12.3 MiB'
    >>> human_bytes(512)
    '512 B'
    """
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def human_duration(ns: int) -> str:
    """A CPU time in nanoseconds, in the largest unit that keeps it readable.

    >>> human_duration(1_234_000_000), human_duration(45_600_000), human_duration(3_700_000_000_000)
    ('1.23 s', '45.6 ms', '1h01m40s')
    """
    if ns < 1_000:
        return f"{ns} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    seconds = ns / 1e9
    if seconds < 60:
        return f"{seconds:.2f} s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def parse_memory(text: str) -> int:
    """A memory size such as ``64m``, ``1g``, ``512MiB`` or ``1048576`` in bytes (binary units).

    >>> parse_memory("64m"), parse_memory("1.5G"), parse_memory("4096")
    (67108864, 1610612736, 4096)
    """
    m = _MEMORY.match(text)
    if m is None:
        raise UsageError(f"--memory {text!r} is not a size like 64m, 512MiB or 1g")
    size = int(float(m.group(1)) * 1024 ** _UNITS[m.group(2).lower()])
    if size <= 0:
        raise UsageError(f"--memory {text!r} must be more than 0 bytes")
    return size


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Aligned columns, three spaces apart; the columns in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    last = len(headers) - 1
    lines = []
    for row in [list(headers), *rows]:
        cells = []
        for i, cell in enumerate(row):
            if i in right:
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell if i == last else cell.ljust(widths[i]))
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def _iso(when: Optional[datetime.datetime]) -> Optional[str]:
    if when is None:
        return None
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _note(text: str) -> None:
    """A message for the person at the terminal (stderr, so that stdout stays parseable)."""
    sys.stderr.write(f"{PROG}: {text}\n")
    sys.stderr.flush()


# -- stats ------------------------------------------------------------------------------------------


def stats_numbers(stats: Stats) -> dict[str, Optional[int]]:
    """Memory, its limit, CPU time and pids from a cgroup v1 or v2 ``Metrics`` message."""
    m = stats.metrics
    name = getattr(getattr(type(m), "DESCRIPTOR", None), "full_name", "")
    limit: Optional[int]
    if name.endswith("v2.Metrics"):
        memory, limit = int(m.memory.usage), int(m.memory.usage_limit)
        cpu = int(m.cpu.usage_usec) * 1000
    else:
        memory, limit = int(m.memory.usage.usage), int(m.memory.usage.limit)
        cpu = int(m.cpu.usage.total)
    pids_limit: Optional[int] = int(m.pids.limit) or None
    if not limit or limit >= _NO_LIMIT:
        limit = None
    return {"memory_bytes": memory, "memory_limit_bytes": limit, "cpu_ns": cpu,
            "pids": int(m.pids.current), "pids_limit": pids_limit}


# -- the command context ----------------------------------------------------------------------------


class _Context:
    """The resolved global options of one invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.address: str = getattr(args, "address", None) or os.environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS
        self.namespace: str = getattr(args, "namespace", None) or os.environ.get(ENV_NAMESPACE) or DEFAULT_NAMESPACE
        self.state_dir: str = getattr(args, "state_dir", None) or os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR
        self.debug: bool = bool(getattr(args, "debug", False)) or os.environ.get(ENV_DEBUG, "") not in ("", "0")

    def client(self, backend: Optional[libcontainerd.Backend] = None) -> libcontainerd.Client:
        return libcontainerd.new_client(self.address, self.state_dir, self.namespace, backend, timeout=_CALL_TIMEOUT)

    def busybox_rootfs(self) -> str:
        from libcontainerd import testing

        return testing.busybox_rootfs(os.path.join(os.path.abspath(self.state_dir), _ROOTFS_CACHE))


Handler = Callable[[argparse.Namespace, _Context], int]


# -- users ------------------------------------------------------------------------------------------


def _lookup(path: str, name: str) -> Optional[tuple[int, int]]:
    """``(id, gid)`` of ``name`` (or of a numeric id) in a passwd- or group-style file; None when absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 3 and (fields[0] == name or fields[2] == name):
                    gid = fields[3] if len(fields) > 3 and fields[3].isdigit() else fields[2]
                    return int(fields[2]), int(gid) if gid.isdigit() else 0
    except OSError:
        pass
    return None


def parse_user(text: str, rootfs: Optional[str]) -> tuple[int, int]:
    """``UID[:GID]`` or ``NAME[:GROUP]`` (names from the rootfs's /etc/passwd and /etc/group).

    >>> parse_user("1000:100", None)
    (1000, 100)
    """
    user, _, group = text.partition(":")
    passwd = _lookup(os.path.join(rootfs, "etc", "passwd"), user) if rootfs else None
    if user.isdigit():
        uid = int(user)
        gid = passwd[1] if passwd else 0
    elif passwd is not None:
        uid, gid = passwd
    else:
        raise UsageError(f"--user {text!r}: no user {user!r} in the container's /etc/passwd; give a number")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = _lookup(os.path.join(rootfs, "etc", "group"), group) if rootfs else None
            if found is None:
                raise UsageError(f"--user {text!r}: no group {group!r} in the container's /etc/group; give a number")
            gid = found[0]
    return uid, gid


# -- attached processes: stdio, terminal, exit code -------------------------------------------------


class _Proc(Protocol):
    """What run and exec share of Task and Process."""

    @property
    def io(self) -> Any: ...

    def wait(self, timeout: Optional[float] = None) -> libcontainerd.ExitStatus: ...

    def resize(self, width: int, height: int) -> None: ...


def _stdio_callback(tty_mode: bool, interactive: bool) -> Any:
    from libcontainerd import stdio

    return stdio.attach(
        stdin=sys.stdin.buffer if interactive else None,
        stdout=sys.stdout.buffer,
        stderr=None if tty_mode else sys.stderr.buffer,
    )


def _with_console_size(process: dict[str, Any], tty_mode: bool) -> None:
    """Give a terminal process the local terminal's size from its first moment (OCI ``consoleSize``).

    Resizing after the start leaves a window in which the process sees a 0x0 terminal.
    """
    size = _terminal_size() if tty_mode else None
    if size is not None and size[0] > 0 and size[1] > 0:
        process["consoleSize"] = {"width": size[0], "height": size[1]}


def _terminal_size() -> Optional[tuple[int, int]]:
    for stream in (sys.stdout, sys.stdin, sys.stderr):
        try:
            if stream.isatty():
                size = os.get_terminal_size(stream.fileno())
                return size.columns, size.lines
        except (OSError, ValueError):
            continue
    return None


@contextlib.contextmanager
def _terminal(proc: _Proc, tty_mode: bool, interactive: bool) -> Iterator[None]:
    """With a container terminal: the local terminal in raw mode and its size forwarded on SIGWINCH."""
    if not tty_mode:
        yield
        return

    def resize(*_: object) -> None:
        size = _terminal_size()
        if size is not None:
            try:
                proc.resize(*size)
            except errdefs.LibcontainerdError as exc:  # the process may be gone already
                log.debug("resize failed: %s", exc)

    resize()
    old_winch = signal.signal(signal.SIGWINCH, resize)
    saved: Optional[list[Any]] = None
    fd = -1
    if interactive and sys.stdin.isatty():
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setraw(fd, termios.TCSANOW)  # not tty's default TCSAFLUSH: that would drop what was typed ahead
    try:
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)


def _follow(proc: _Proc, tty_mode: bool, interactive: bool) -> int:
    """Wait for an attached process, then for its output to drain; return its exit code."""
    with _terminal(proc, tty_mode, interactive):
        status = proc.wait()
        io = proc.io
        if io is not None:
            try:
                io.wait(timeout=_DRAIN_TIMEOUT)
            except TimeoutError:
                log.debug("output still open %s s after the exit; dropping the rest", _DRAIN_TIMEOUT)
    return status.code


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Hold off Ctrl-C while cleaning up, so that a second Ctrl-C cannot leave things half removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def _deferred_interrupts() -> Iterator[None]:
    """Hold a Ctrl-C back until the block is done, then raise it.

    Creating and starting are RPCs that containerd completes even when the caller stops
    waiting: interrupted half-way, the caller would not know what exists. Deferred, the
    interrupt arrives when the container or process is known, and the usual cleanup runs.

    Only Python's own Ctrl-C handling is deferred: a process started with SIGINT ignored (a
    background job, nohup) keeps ignoring it, and an embedding program's handler is left alone.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    pending: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if pending:
        raise KeyboardInterrupt


# -- subcommands ------------------------------------------------------------------------------------


def cmd_version(args: argparse.Namespace, ctx: _Context) -> int:
    import grpc

    with ctx.client() as client:
        v = client.version()
    rows = [
        ("client", f"libcontainerd {libcontainerd.__version__} "
                   f"(Python {sys.version.split()[0]}, grpcio {grpc.__version__})"),
        ("server", f"containerd {v.version} (revision {v.revision})"),
        ("address", ctx.address),
        ("namespace", ctx.namespace),
    ]
    _out("\n".join(f"{key:<10} {value}" for key, value in rows))
    return 0


def cmd_daemon(args: argparse.Namespace, ctx: _Context) -> int:
    from libcontainerd import supervisor

    stop = threading.Event()
    root = os.path.abspath(args.root)
    daemon = supervisor.start(root, log_level=args.log_level)
    old_term = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        _out(f"containerd (pid {daemon.pid}) is serving at {daemon.address}")
        _note(f"root {root}, log {daemon.log_path}")
        _note(f"use it with: export {ENV_ADDRESS}={daemon.address}")
        _note("press Ctrl-C to stop it")
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass  # Ctrl-C is how this command is meant to end
    finally:
        with _no_interrupts():
            _note("stopping containerd")
            daemon.stop()
            signal.signal(signal.SIGTERM, old_term)
    _note("containerd stopped (containers and their shims keep running until removed)")
    return 0


def _image_run_spec(args: argparse.Namespace, client: libcontainerd.Client) -> tuple[dict[str, Any], Any]:
    """``run IMAGE ID [COMMAND...]``: the spec from the image's config, and the image."""
    from libcontainerd import oci

    image = client.get_image(args.image)
    memory = parse_memory(args.memory) if args.memory else None
    spec = oci.image_spec(image, list(args.command) or None, env=list(args.env), cwd=args.cwd, user=args.user,
                          terminal=args.tty, hostname=args.hostname or args.id)
    if memory is not None:
        spec = oci.with_memory_limit(spec, memory)
    _with_console_size(spec["process"], args.tty)
    return spec, image


def _build_run_spec(args: argparse.Namespace, ctx: _Context) -> dict[str, Any]:
    from libcontainerd import oci

    if args.busybox and args.rootfs:
        raise UsageError("give either --rootfs DIR or --busybox, not both")
    if args.busybox:
        rootfs = ctx.busybox_rootfs()
    elif args.rootfs:
        rootfs = os.path.abspath(args.rootfs)
        if not os.path.isdir(rootfs):
            raise UsageError(f"--rootfs {args.rootfs}: not a directory")
    else:
        raise UsageError("say what to run: IMAGE ID, --rootfs DIR ID, or --busybox ID")
    user = parse_user(args.user, rootfs) if args.user else (0, 0)
    memory = parse_memory(args.memory) if args.memory else None
    command = list(args.command) or ["sh"]
    spec = oci.default_spec(rootfs, command, env=list(args.env), cwd=args.cwd or "/", terminal=args.tty, user=user,
                            hostname=args.hostname or args.id)
    if memory is not None:
        spec = oci.with_memory_limit(spec, memory)
    _with_console_size(spec["process"], args.tty)
    return spec


def cmd_run(args: argparse.Namespace, ctx: _Context) -> int:
    if args.detach and (args.rm or args.interactive):
        raise UsageError("-d/--detach cannot be combined with --rm or -i: nothing would stay attached")
    args.image = None
    if not args.busybox and not args.rootfs:
        # `run IMAGE ID [COMMAND...]`: what the rootfs forms take as the id is the image.
        if not args.command:
            raise UsageError("say what to run: IMAGE ID [COMMAND...], --rootfs DIR ID, or --busybox ID")
        args.image, args.id, args.command = args.id, args.command[0], args.command[1:]
    spec = _build_run_spec(args, ctx) if args.image is None else None
    with ctx.client() as client:
        ctr: Optional[libcontainerd.Container] = None
        task: Optional[libcontainerd.Task] = None
        image = None
        if spec is None:
            spec, image = _image_run_spec(args, client)
        try:
            with _deferred_interrupts():
                ctr = client.new_container(args.id, spec, image=image)
                if args.detach:
                    task = ctr.start()
                else:
                    task = ctr.start(with_stdin=args.interactive,
                                     attach_stdio=_stdio_callback(args.tty, args.interactive))
        except BaseException:
            with _no_interrupts():
                if task is not None:  # Ctrl-C during the start: it is stopped and removed as below
                    with contextlib.suppress(errdefs.LibcontainerdError):
                        task.force_delete()
                if ctr is not None:  # a container whose task never started is of no use to anyone
                    with contextlib.suppress(errdefs.LibcontainerdError):
                        ctr.delete()
            raise
        assert ctr is not None and task is not None  # the block above either made both or raised
        if args.detach:
            _out(args.id)
            return 0
        try:
            code = _follow(task, args.tty, args.interactive)
        except BaseException:
            # Interrupted (or the wait failed): a container attached to this terminal must not linger unseen.
            with _no_interrupts():
                with contextlib.suppress(errdefs.LibcontainerdError):
                    task.force_delete()
                if args.rm:
                    with contextlib.suppress(errdefs.LibcontainerdError):
                        ctr.delete()
            raise
        with _no_interrupts():
            task.delete()
            if args.rm:
                ctr.delete()
    return code


def cmd_exec(args: argparse.Namespace, ctx: _Context) -> int:
    from libcontainerd import oci

    if not args.command:
        raise UsageError("say what to run: exec ID COMMAND [ARG...]")
    exec_id = args.exec_id or f"exec-{uuid.uuid4().hex[:8]}"
    with ctx.client() as client:
        ctr = client.load_container(args.id)
        task = ctr.task()
        process = dict(ctr.spec.get("process") or {})
        root = str((ctr.spec.get("root") or {}).get("path", ""))
        if root and not os.path.isabs(root):
            root = os.path.join(ctr.bundle_dir, root)
        if args.user:
            user = parse_user(args.user, root or None)
        else:
            spec_user = process.get("user") or {}
            user = (int(spec_user.get("uid", 0)), int(spec_user.get("gid", 0)))
        env = [e for e in process.get("env") or [] if not e.startswith("TERM=")] + list(args.env)
        cwd = args.cwd or process.get("cwd") or "/"
        spec = oci.process_spec(list(args.command), env=env, cwd=cwd, terminal=args.tty, user=user)
        _with_console_size(spec, args.tty)
        if args.detach:
            task.exec(exec_id, spec)
            _out(exec_id)
            return 0
        proc: Optional[libcontainerd.Process] = None
        try:
            with _deferred_interrupts():
                proc = task.exec(exec_id, spec, with_stdin=args.interactive,
                                 attach_stdio=_stdio_callback(args.tty, args.interactive))
            code = _follow(proc, args.tty, args.interactive)
        except BaseException:
            if proc is not None:
                with _no_interrupts(), contextlib.suppress(errdefs.LibcontainerdError, TimeoutError):
                    proc.kill(signal.SIGKILL)
                    proc.wait(timeout=10)
                    proc.delete()
            raise
        with _no_interrupts():
            proc.delete()
    return code


def _task_or_none(ctr: libcontainerd.Container) -> Optional[libcontainerd.Task]:
    try:
        return ctr.task()
    except errdefs.NotFound:
        return None


def cmd_ps(args: argparse.Namespace, ctx: _Context) -> int:
    with ctx.client() as client:
        containers = sorted(client.list_containers(), key=lambda c: c.id)
        if args.quiet:
            for ctr in containers:
                _out(ctr.id)
            return 0
        rows = []
        for ctr in containers:
            task = _task_or_none(ctr)
            status, pid = "stopped", "-"
            if task is not None:
                try:
                    status = task.status().value
                    pid = str(task.pid) if task.pid else "-"
                except errdefs.NotFound:
                    pass
            args_ = (ctr.spec.get("process") or {}).get("args") or []
            rows.append([ctr.id, status, pid, shlex.join(str(a) for a in args_)])
    _out(_table(["CONTAINER", "STATUS", "PID", "COMMAND"], rows, right=(2,)))
    return 0


def _host_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return "?"  # a remote daemon's pids are not ours to look at
    return shlex.join(os.fsdecode(a) for a in raw.split(b"\0") if a) or "?"


def cmd_top(args: argparse.Namespace, ctx: _Context) -> int:
    with ctx.client() as client:
        task = client.load_container(args.id).task()
        procs = task.summary()
    rows = [[str(p.pid), p.exec_id or ("(main)" if p.pid == task.pid else "-"), _host_cmdline(p.pid)]
            for p in sorted(procs, key=lambda p: p.pid)]
    _out(_table(["PID", "EXEC", "COMMAND"], rows, right=(0,)))
    return 0


def cmd_kill(args: argparse.Namespace, ctx: _Context) -> int:
    with ctx.client() as client:
        client.load_container(args.id).task().kill(args.signal)
    return 0


def _each(ids: Sequence[str], ctx: _Context, action: Callable[[libcontainerd.Client, str], None]) -> int:
    """Apply ``action`` to each id; report failures one line each and go on (exit 1 if any failed)."""
    failed = 0
    with ctx.client() as client:
        for cid in ids:
            try:
                action(client, cid)
            except errdefs.LibcontainerdError as exc:
                if len(ids) == 1:
                    raise
                _error_line(str(exc))
                failed += 1
    return EXIT_ERROR if failed else 0


def cmd_pause(args: argparse.Namespace, ctx: _Context) -> int:
    return _each(args.ids, ctx, lambda client, cid: client.load_container(cid).task().pause())


def cmd_resume(args: argparse.Namespace, ctx: _Context) -> int:
    return _each(args.ids, ctx, lambda client, cid: client.load_container(cid).task().resume())


def cmd_rm(args: argparse.Namespace, ctx: _Context) -> int:
    def remove(client: libcontainerd.Client, cid: str) -> None:
        ctr = client.load_container(cid)
        task = _task_or_none(ctr)
        if task is not None:
            status = task.status()
            if status is Status.STOPPED:
                task.delete()
            elif args.force or status is Status.CREATED:  # a created task never ran: nothing to lose
                task.force_delete()
            else:
                raise errdefs.Conflict(f"container {cid} is {status.value}; stop it first or use rm -f")
        ctr.delete()
        _out(cid)

    with _no_interrupts():
        return _each(args.ids, ctx, remove)


def cmd_stats(args: argparse.Namespace, ctx: _Context) -> int:
    with ctx.client() as client:
        if args.ids:
            targets = [(cid, client.load_container(cid).task()) for cid in args.ids]
        else:
            targets = []
            for ctr in sorted(client.list_containers(), key=lambda c: c.id):
                task = _task_or_none(ctr)
                if task is not None and task.status() in (Status.RUNNING, Status.PAUSED, Status.PAUSING):
                    targets.append((ctr.id, task))
        results = [(cid, task.stats()) for cid, task in targets]
    if args.json:
        from google.protobuf import json_format

        for cid, st in results:
            doc: dict[str, Any] = {"id": cid, "read": _iso(st.read), **stats_numbers(st),
                                   "metrics": json_format.MessageToDict(st.metrics)}
            _out(json.dumps(doc, sort_keys=False))
        return 0
    rows = []
    for cid, st in results:
        n = stats_numbers(st)
        limit = n["memory_limit_bytes"]
        pids_limit = n["pids_limit"]
        rows.append([
            cid,
            human_duration(n["cpu_ns"] or 0),
            human_bytes(n["memory_bytes"] or 0),
            human_bytes(limit) if limit else "-",
            f"{n['pids']}" + (f" / {pids_limit}" if pids_limit else ""),
        ])
    _out(_table(["CONTAINER", "CPU TIME", "MEMORY", "LIMIT", "PIDS"], rows, right=(1, 2, 3, 4)))
    return 0


class _EventPrinter:
    """A backend that writes one line per event to stdout as it arrives."""

    def __init__(self, as_json: bool) -> None:
        self._json = as_json
        self._lock = threading.Lock()

    def process_event(self, container_id: str, event_type: EventType, info: EventInfo) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        if self._json:
            line = json.dumps({
                "time": _iso(now), "type": event_type.value, "container": container_id,
                "process": info.process_id, "pid": info.pid, "exit_code": info.exit_code,
                "exited_at": _iso(info.exited_at), "error": info.error,
            })
        else:
            details = describe_event(container_id, event_type, info)
            line = f"{_iso(now)}  {event_type.value:<12}  {container_id}{details}"
        with self._lock:
            try:
                _out(line)
            except (BrokenPipeError, ValueError):
                pass  # the reader went away; the main thread notices on its own


def describe_event(container_id: str, event_type: EventType, info: EventInfo) -> str:
    """The details of an event for a human: exec id, pid, exit code (with a leading separator)."""
    parts = []
    if info.process_id and info.process_id != container_id:
        parts.append(f"exec {info.process_id}")
    if info.pid:
        parts.append(f"pid {info.pid}")
    if event_type is EventType.EXIT:
        parts.append(f"exit code {info.exit_code}")
    if info.error:
        parts.append(f"({info.error})")
    return ("  " + ", ".join(parts)) if parts else ""


def cmd_events(args: argparse.Namespace, ctx: _Context) -> int:
    stop = threading.Event()
    with ctx.client(_EventPrinter(args.json)) as client:
        client.version()  # fail now, with the usual message, when nothing serves there
        _note(f"watching events of namespace {ctx.namespace} at {ctx.address} (Ctrl-C to stop)")
        while not stop.wait(1.0):
            pass
    return 0


def cmd_checkpoint(args: argparse.Namespace, ctx: _Context) -> int:
    directory = os.path.abspath(args.dir)
    with ctx.client() as client:
        task = client.load_container(args.id).task()
        task.create_checkpoint(directory, exit=args.exit)
    _note(f"checkpoint of {args.id} written to {directory}" + (" (the task was stopped)" if args.exit else ""))
    return 0


def cmd_demo(args: argparse.Namespace, ctx: _Context) -> int:
    from libcontainerd._cli_demo import run_demo

    return run_demo(args.root, sys.stdout, pause_on=sys.stdin if args.pause else None)


# -- the parser -------------------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, where: str) -> None:
    # SUPPRESS: an option given neither before nor after the subcommand leaves no attribute, so
    # the env var and then the default apply, and one given after the subcommand wins.
    group = parser.add_argument_group(f"global options (also accepted {where} the subcommand)")
    group.add_argument("--address", metavar="SOCKET", default=argparse.SUPPRESS,
                       help=f"containerd's socket or host:port (${ENV_ADDRESS}; default {DEFAULT_ADDRESS})")
    group.add_argument("--namespace", metavar="NS", default=argparse.SUPPRESS,
                       help=f"containerd namespace (${ENV_NAMESPACE}; default {DEFAULT_NAMESPACE})")
    group.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                       help=f"where bundles and FIFOs live (${ENV_STATE_DIR}; default {DEFAULT_STATE_DIR})")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"debug logging and tracebacks on errors (${ENV_DEBUG}=1)")


def _stdio_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-i", "--interactive", action="store_true", help="connect your stdin to the process")
    parser.add_argument("-t", "--tty", action="store_true",
                        help="give the process a terminal (your terminal goes into raw mode with -i)")
    parser.add_argument("-d", "--detach", action="store_true", help=f"start the {what} and print its id, no stdio")
    parser.add_argument("-u", "--user", metavar="UID[:GID]", help="run as this user (number or name in the rootfs)")
    parser.add_argument("-e", "--env", metavar="KEY=VALUE", action="append", default=[],
                        help="set an environment variable (repeatable)")
    parser.add_argument("-w", "--cwd", metavar="DIR", default=None, help="working directory inside the container")


_COMMANDS: list[tuple[str, list[str], str, str]] = [
    # name, aliases, one-line help, examples (the epilog)
    ("daemon", [], "run a private, managed containerd in the foreground until Ctrl-C",
     f"example:\n  {PROG} daemon --root /tmp/lcd\n  export {ENV_ADDRESS}=/tmp/lcd/state/containerd.sock"),
    ("version", [], "show the versions of this client and of containerd",
     f"example:\n  {PROG} version --address /tmp/lcd/state/containerd.sock"),
    ("run", [], "create a container, start it and follow it; its exit code becomes yours",
     f"examples:\n  {PROG} run --rm --busybox hello echo hello world\n"
     f"  {PROG} run --rm 127.0.0.1:5000/busybox:latest hello echo from an image\n"
     f"  {PROG} run --rm -it --busybox box sh\n"
     f"  {PROG} run -d --busybox --memory 64m web httpd -f -p 8080\n"
     f"  echo data | {PROG} run --rm -i --busybox up tr a-z A-Z\n\n"
     "Everything after the container id is the command and its arguments; no `--` needed.\n"
     "Without --rootfs or --busybox the first word is an image (pulled or imported before) and\n"
     "the command defaults to the image's Entrypoint and Cmd."),
    ("exec", [], "run another process in a running container",
     f"examples:\n  {PROG} exec web ps\n  {PROG} exec -it web sh\n  {PROG} exec --user 1000 web id"),
    ("ps", ["list", "ls"], "list the containers of the namespace with their task status and pid",
     f"example:\n  {PROG} ps\n  {PROG} ps -q | xargs {PROG} rm -f"),
    ("top", [], "list the processes running in a container",
     f"example:\n  {PROG} top web"),
    ("kill", [], "send a signal to a container's main process",
     f"examples:\n  {PROG} kill web\n  {PROG} kill --signal KILL web"),
    ("pause", [], "freeze every process of containers", f"example:\n  {PROG} pause web"),
    ("resume", [], "thaw paused containers", f"example:\n  {PROG} resume web"),
    ("stats", [], "show CPU time, memory and pids of running containers",
     f"examples:\n  {PROG} stats\n  {PROG} stats --json web"),
    ("events", [], "print task events as they happen, until Ctrl-C",
     f"examples:\n  {PROG} events\n  {PROG} events --json | jq .type"),
    ("checkpoint", [], "checkpoint a running container with CRIU into a directory",
     f"example:\n  {PROG} checkpoint --exit web /tmp/web-checkpoint"),
    ("rm", [], "remove containers (their stopped tasks too; -f kills running ones first)",
     f"examples:\n  {PROG} rm web\n  {PROG} rm -f web db"),
    ("pull", [], "fetch an image from a registry and unpack it",
     f"examples:\n  {PROG} pull --plain-http 127.0.0.1:5000/busybox:latest\n"
     f"  {PROG} pull --ca-file ca.pem --user alice registry.example.com/team/app:1.2\n"
     f"  {PROG} pull --platform linux/arm64 --no-unpack busybox"),
    ("images", [], "list the images of the namespace", f"examples:\n  {PROG} images\n  {PROG} images -q"),
    ("rmi", [], "remove images (containerd's garbage collector frees their content)",
     f"example:\n  {PROG} rmi --sync 127.0.0.1:5000/busybox:latest"),
    ("import", [], "import images from a docker save or OCI layout archive",
     f"examples:\n  {PROG} import busybox.tar\n  docker save busybox | {PROG} import -"),
    ("demo", [], "a private containerd, a busybox container, exec, stats, pause/resume and events, step by step",
     f"examples:\n  {PROG} demo\n  {PROG} demo --pause       # wait for Enter before each step\n"
     f"  {PROG} demo --root /tmp/lcd-demo\n\n"
     "Everything the demo makes is removed at the end, also on Ctrl-C."),
]


def build_parser() -> argparse.ArgumentParser:
    """The full parser; each subparser's ``handler`` default is the function that runs it.

    >>> build_parser().parse_args(["run", "--busybox", "box", "sh", "-c", "echo hi"]).command
    ['sh', '-c', 'echo hi']
    """
    from libcontainerd import _cli_images

    parser = _Parser(
        prog=PROG, formatter_class=_Formatter, allow_abbrev=False,
        description="A command line for containerd over the libcontainerd Python SDK.",
        epilog=f"examples:\n  {PROG} demo\n  {PROG} daemon --root /tmp/lcd &\n"
               f"  {PROG} --address /tmp/lcd/state/containerd.sock run --rm --busybox hi echo hello\n\n"
               f"`{PROG} COMMAND --help` shows the options and an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {libcontainerd.__version__}")
    _global_options(parser, "after")
    common = _Parser(add_help=False)
    _global_options(common, "before")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", title="commands")
    subparsers: dict[str, argparse.ArgumentParser] = {}
    for name, aliases, help_text, example in _COMMANDS:
        subparsers[name] = sub.add_parser(
            name, aliases=aliases, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
            epilog=example, parents=[common], formatter_class=_Formatter, allow_abbrev=False,
        )
    handlers: dict[str, Handler] = {
        "daemon": cmd_daemon, "version": cmd_version, "run": cmd_run, "exec": cmd_exec, "ps": cmd_ps,
        "top": cmd_top, "kill": cmd_kill, "pause": cmd_pause, "resume": cmd_resume, "stats": cmd_stats,
        "events": cmd_events, "checkpoint": cmd_checkpoint, "rm": cmd_rm, "demo": cmd_demo,
        "pull": _cli_images.cmd_pull, "images": _cli_images.cmd_images, "rmi": _cli_images.cmd_rmi,
        "import": _cli_images.cmd_import,
    }
    for name, handler in handlers.items():
        subparsers[name].set_defaults(handler=handler)

    p = subparsers["daemon"]
    p.add_argument("--root", metavar="DIR", default=DEFAULT_DAEMON_ROOT,
                   help=f"the daemon's directory: config, data, log, socket (default {DEFAULT_DAEMON_ROOT})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                   help="containerd's log level (default info)")

    p = subparsers["run"]
    p.add_argument("--rm", action="store_true",
                   help="remove the container when it exits (else it stays, stopped, until `rm`)")
    rootfs = p.add_mutually_exclusive_group()
    rootfs.add_argument("--rootfs", metavar="DIR", help="the root filesystem directory to run")
    rootfs.add_argument("--busybox", action="store_true",
                        help="use a minimal busybox root filesystem (built once, cached in the state dir)")
    _stdio_options(p, "container")
    p.add_argument("-m", "--memory", metavar="SIZE", help="memory limit, e.g. 64m, 512MiB, 1g")
    p.add_argument("--hostname", metavar="NAME", help="the container's hostname (default: its id)")
    p.add_argument("id", metavar="ID", help="the new container's id (with an image: IMAGE ID)")
    p.add_argument("command", metavar="COMMAND ...", nargs=argparse.REMAINDER,
                   help="the command and its arguments (default: sh)")

    p = subparsers["exec"]
    _stdio_options(p, "process")
    p.add_argument("--exec-id", metavar="EXEC_ID", help="the process's exec id (default: exec-<random>)")
    p.add_argument("id", metavar="ID", help="the running container")
    p.add_argument("command", metavar="COMMAND ...", nargs=argparse.REMAINDER, help="the command and its arguments")

    subparsers["ps"].add_argument("-q", "--quiet", action="store_true", help="print the container ids only")
    subparsers["top"].add_argument("id", metavar="ID", help="the container")

    p = subparsers["kill"]
    p.add_argument("-s", "--signal", default="TERM", metavar="SIGNAL", help="name or number (default TERM)")
    p.add_argument("id", metavar="ID", help="the container")

    for name in ("pause", "resume"):
        subparsers[name].add_argument("ids", metavar="ID", nargs="+", help="the containers")

    p = subparsers["stats"]
    p.add_argument("--json", action="store_true", help="one JSON object per container and line, with raw metrics")
    p.add_argument("ids", metavar="ID", nargs="*", help="the containers (default: every running one)")

    subparsers["events"].add_argument("--json", action="store_true", help="one JSON object per event and line")

    p = subparsers["checkpoint"]
    p.add_argument("--exit", action="store_true", help="stop the container after the checkpoint")
    p.add_argument("id", metavar="ID", help="the running container")
    p.add_argument("dir", metavar="DIR", help="where the checkpoint's files go")

    p = subparsers["rm"]
    p.add_argument("-f", "--force", action="store_true", help="kill and remove running containers too")
    p.add_argument("ids", metavar="ID", nargs="+", help="the containers")

    _cli_images.add_image_commands(subparsers)

    subparsers["demo"].add_argument("--root", metavar="DIR", default=None,
                                    help="put everything under DIR instead of a fresh temporary directory")
    subparsers["demo"].add_argument("--pause", action="store_true",
                                    help="wait for Enter before each step (for presenting it)")
    return parser


# -- main -------------------------------------------------------------------------------------------


def _error_line(message: str) -> None:
    # One line whatever the message looked like; of a multi-line one (e.g. a daemon's log tail) the
    # first line says what failed and the last one, usually, why.
    lines = [" ".join(line.split()) for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    if len(lines) > 1:
        text += f" … {lines[-1]}"
    sys.stderr.write(f"{PROG}: error: {text}\n")
    sys.stderr.flush()


def _not_event_stream(record: logging.LogRecord) -> bool:
    return os.path.basename(record.pathname) != "_events.py"


def _setup_logging(debug: bool, *, quiet_event_stream: bool) -> Callable[[], None]:
    """Send the SDK's log records to stderr for this command; returns what undoes it (main() may be embedded)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s" if debug else f"{PROG}: %(levelname)s: %(message)s"))
    if quiet_event_stream and not debug:
        # Every client reads the event stream; only `events` cares that it broke (the call's own error says why).
        handler.addFilter(_not_event_stream)
    root = logging.getLogger("libcontainerd")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(old_level)

    return undo


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code.

    >>> main(["version", "--address", "/nonexistent.sock"])  # doctest: +SKIP
    1
    """
    try:
        parser = build_parser()
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        handler: Optional[Handler] = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        ctx = _Context(args)
        undo_logging = _setup_logging(ctx.debug, quiet_event_stream=handler is not cmd_events)
        try:
            return _dispatch(handler, args, ctx)
        finally:
            undo_logging()
    except KeyboardInterrupt:  # before or after the command ran: nothing to clean up, nothing to say
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED


def _dispatch(handler: Handler, args: argparse.Namespace, ctx: _Context) -> int:
    try:
        return handler(args, ctx)
    except KeyboardInterrupt:
        if ctx.debug:
            traceback.print_exc()
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        _error_line(str(exc))
        return EXIT_USAGE
    except errdefs.LibcontainerdError as exc:
        if ctx.debug:
            traceback.print_exc()
        message = str(exc)
        if isinstance(exc, errdefs.Unavailable):
            message += f" — is containerd running at {ctx.address}? Start one with `{PROG} daemon`, or pass --address"
        _error_line(message)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader of our stdout left (e.g. `| head`): not an error; keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # anything else is a bug or an OS error: still one line, unless debugging
        if ctx.debug:
            traceback.print_exc()
        _error_line(f"{type(exc).__name__}: {exc}" + ("" if ctx.debug else " (run with --debug for the traceback)"))
        return EXIT_ERROR


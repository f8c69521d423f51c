"""The subcommands, each declared once: its name, help, example, arguments and handler together.

This module owns what each command does with the public SDK and what it prints; the
order of declaration is the order of ``--help``. It must use the public API only
(``new_client``, ``Container``, ``Task``, ``oci``, ``stdio``, ``supervisor``,
``testing``), never the client's private parts or the generated gRPC modules, and it
leaves errors to :mod:`._main`, which turns each into one line and an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from typing import Any, Callable

import libcontainerd
from libcontainerd import _procfs, cio, errdefs
from libcontainerd.types import EventInfo, EventType, ExitStatus, Status

from ._attached import Attached, check_terminal, exec_spec, image_run_spec, run_spec
from ._context import DEFAULT_DAEMON_ROOT, ENV_ADDRESS, EXIT_ERROR, PROG, Context, UsageError
from ._detached import LogTail, log_path, mark_detached_exec, reap_detached_execs
from ._format import describe_event, error_line, human_bytes, human_duration, iso, json_message, note, out, table
from ._registry import command
from ._signals import deferred_interrupts, forwarded_signals, no_interrupts
from ._terminal import raw_input, resized, stdio_callback

__all__: list[str] = []  # the commands are reached through the registry


def _daemon_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", metavar="DIR", default=DEFAULT_DAEMON_ROOT,
                   help=f"the daemon's directory: config, data, log, socket (default {DEFAULT_DAEMON_ROOT})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                   help="containerd's log level (default info)")


@command("daemon", "run a private, managed containerd in the foreground until Ctrl-C",
         f"example:\n  {PROG} daemon --root /tmp/lcd\n  export {ENV_ADDRESS}=/tmp/lcd/state/containerd.sock",
         arguments=_daemon_arguments)
def cmd_daemon(args: argparse.Namespace, ctx: Context) -> int:
    from libcontainerd import supervisor

    stop = threading.Event()
    root = os.path.abspath(args.root)
    try:
        daemon = supervisor.start(root, log_level=args.log_level)
    except (errdefs.InvalidParameter, errdefs.Forbidden) as exc:
        # The supervisor speaks of its parameters (root_dir, state_dir); here both come from --root.
        reason = str(exc).replace("pass a shorter state_dir", "pass a shorter --root")
        raise UsageError(f"--root {args.root}: {reason}") from exc
    old_term = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        out(f"containerd (pid {daemon.pid}) is serving at {daemon.address}")
        note(f"root {root}, log {daemon.log_path}")
        note(f"use it with: export {ENV_ADDRESS}={daemon.address}")
        note("press Ctrl-C to stop it")
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass  # Ctrl-C is how this command is meant to end
    finally:
        with no_interrupts():
            note("stopping containerd")
            daemon.stop()
            signal.signal(signal.SIGTERM, old_term)
    note("containerd stopped (containers and their shims keep running until removed)")
    return 0


@command("version", "show the versions of this client and of containerd",
         f"example:\n  {PROG} version --address /tmp/lcd/state/containerd.sock")
def cmd_version(args: argparse.Namespace, ctx: Context) -> int:
    import grpc

    with ctx.client() as client:
        v = client.version()
    rows = [
        ("client", f"libcontainerd {libcontainerd.__version__} "
                   f"(Python {sys.version.split()[0]}, grpcio {grpc.__version__})"),
        ("server", f"containerd {v}"),
        ("address", ctx.address),
        ("namespace", ctx.namespace),
    ]
    out("\n".join(f"{key:<10} {value}" for key, value in rows))
    return 0


def _stdio_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-i", "--interactive", action="store_true", help="connect your stdin to the process")
    parser.add_argument("-t", "--tty", action="store_true",
                        help="give the process a terminal (your terminal goes into raw mode with -i)")
    parser.add_argument("-d", "--detach", action="store_true",
                        help=f"start the {what} and print its id" + (
                            " (its output goes to its log: see `logs` and `attach`)" if what == "container"
                            else ", no stdio"))
    parser.add_argument("-u", "--user", metavar="UID[:GID]", help="run as this user (number or name in the rootfs)")
    parser.add_argument("-e", "--env", metavar="KEY=VALUE", action="append", default=[],
                        help="set an environment variable (repeatable)")
    parser.add_argument("-w", "--cwd", metavar="DIR", default=None, help="working directory inside the container")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rm", action="store_true",
                   help="remove the container when it exits (else it stays, stopped, until `rm`)")
    rootfs = p.add_mutually_exclusive_group()
    rootfs.add_argument("--rootfs", metavar="DIR", help="the root filesystem directory to run")
    rootfs.add_argument("--busybox", action="store_true",
                        help="use a minimal busybox root filesystem (built once, cached in the state dir)")
    _stdio_options(p, "container")
    p.add_argument("-m", "--memory", metavar="SIZE", help="memory limit, e.g. 64m, 512MiB, 1g")
    p.add_argument("--hostname", metavar="NAME", help="the container's hostname (default: its id, cut to 64 chars)")
    p.add_argument("id", metavar="ID", help="the new container's id (with an image: IMAGE ID)")
    p.add_argument("command", metavar="COMMAND ...", nargs=argparse.REMAINDER,
                   help="the command and its arguments (default: sh)")


@command("run", "create a container, start it and follow it; its exit code becomes yours",
         f"examples:\n  {PROG} run --rm --busybox hello echo hello world\n"
         f"  {PROG} run --rm 127.0.0.1:5000/busybox:latest hello echo from an image\n"
         f"  {PROG} run --rm -it --busybox box sh\n"
         f"  {PROG} run -d --busybox --memory 64m web httpd -f -p 8080\n"
         f"  echo data | {PROG} run --rm -i --busybox up tr a-z A-Z\n\n"
         "Everything after the container id is the command and its arguments; no `--` needed.\n"
         "Without --rootfs or --busybox the first word is an image (pulled or imported before) and\n"
         "the command defaults to the image's Entrypoint and Cmd.",
         arguments=_run_arguments)
def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    if args.detach and args.rm:
        raise UsageError("-d/--detach cannot be combined with --rm: nothing would stay to remove it")
    if not args.detach:
        check_terminal(args)  # a detached container's terminal is not ours: `attach` checks when it is used
    args.image = None
    if not args.busybox and not args.rootfs:
        # `run IMAGE ID [COMMAND...]`: what the rootfs forms take as the id is the image.
        if not args.command:
            raise UsageError("say what to run: IMAGE ID [COMMAND...], --rootfs DIR ID, or --busybox ID")
        args.image, args.id, args.command = args.id, args.command[0], args.command[1:]
    spec = run_spec(args, ctx) if args.image is None else None
    with ctx.client() as client:
        image = None
        if spec is None:
            spec, image = image_run_spec(args, client)

        def start(made: Attached) -> None:
            made.container = client.new_container(args.id, spec, image=image)
            if args.detach:
                # The shim writes the output into the log file itself: `logs` and `attach` read it later.
                made.process = made.container.start(with_stdin=args.interactive, log_file=log_path(made.container))
            else:
                made.process = made.container.start(with_stdin=args.interactive,
                                                    attach_stdio=stdio_callback(args.tty, args.interactive))

        attached = Attached(keep_container=not args.rm, client=client, container_id=args.id)
        attached.start(start, forward_signals=not args.detach,
                       raw_terminal=args.tty and args.interactive and not args.detach)
        if args.detach:
            out(args.id)
            return 0
        return attached.follow(args.tty)


def _exec_arguments(p: argparse.ArgumentParser) -> None:
    _stdio_options(p, "process")
    p.add_argument("--exec-id", metavar="EXEC_ID", help="the process's exec id (default: exec-<random>)")
    p.add_argument("id", metavar="ID", help="the running container")
    p.add_argument("command", metavar="COMMAND ...", nargs=argparse.REMAINDER, help="the command and its arguments")


@command("exec", "run another process in a running container",
         f"examples:\n  {PROG} exec web ps\n  {PROG} exec -it web sh\n  {PROG} exec --user 1000 web id",
         arguments=_exec_arguments)
def cmd_exec(args: argparse.Namespace, ctx: Context) -> int:
    if not args.command:
        raise UsageError("say what to run: exec ID COMMAND [ARG...]")
    check_terminal(args)
    exec_id = args.exec_id or f"exec-{uuid.uuid4().hex[:8]}"
    with ctx.client() as client:
        ctr = client.load_container(args.id)
        task = ctr.task()
        spec = exec_spec(args, ctr)
        reap_detached_execs(task)  # so that the id of an `exec -d` process that exited is free again
        if args.detach:
            task.exec(exec_id, spec)
            mark_detached_exec(ctr, exec_id)
            out(exec_id)
            return 0

        def start(made: Attached) -> None:
            made.process = task.exec(exec_id, spec, with_stdin=args.interactive,
                                     attach_stdio=stdio_callback(args.tty, args.interactive))

        attached = Attached(keep_container=True)
        attached.start(start, raw_terminal=args.tty and args.interactive)
        return attached.follow(args.tty)


def _logs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true",
                   help="go on printing the output as it comes, until the container exits (or Ctrl-C)")
    p.add_argument("id", metavar="ID", help="a container started with run -d")


@command("logs", "print the output of a container started with run -d (kept in a file until rm)",
         f"examples:\n  {PROG} logs web\n  {PROG} logs -f web",
         arguments=_logs_arguments)
def cmd_logs(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        ctr = client.load_container(args.id)
        with LogTail(ctr) as tail:
            tail.copy()
            task = _task_or_none(ctr) if args.follow else None
            if task is not None:
                try:
                    tail.follow(task, cancel=client.close)
                except errdefs.NotFound:
                    tail.copy()  # the task was deleted meanwhile: what it wrote is all there is
    return 0


def _attach_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-stdin", action="store_true",
                   help="do not connect your stdin (else, for a container started with run -d -i, your stdin "
                        "becomes its stdin, and its end the end of the container's)")
    p.add_argument("id", metavar="ID", help="a running container started with run -d")


@command("attach", "follow a container started with run -d: its output from now on, your stdin (run -d -i) "
         "and signals; exit with its code",
         f"examples:\n  {PROG} attach web\n  {PROG} run -d -i --busybox up tr a-z A-Z && echo hi | {PROG} attach up\n\n"
         "SIGTERM, SIGHUP and a first Ctrl-C go to the container's process; a second Ctrl-C leaves it running.\n"
         "Its output is read from its log (see `logs` for what came before). There is no daemon to hold\n"
         "the container's stdin open: when the stdin of `attach` ends, so does the container's.",
         arguments=_attach_arguments)
def cmd_attach(args: argparse.Namespace, ctx: Context) -> int:
    from libcontainerd import stdio

    with ctx.client() as client:
        ctr = client.load_container(args.id)
        task = ctr.task()
        if task.status() is Status.STOPPED:
            raise errdefs.Conflict(f"container {args.id} is stopped: nothing to attach to (`logs` shows its output)")
        tty = bool((ctr.spec.get("process") or {}).get("terminal", False))
        try:
            feed = not args.no_stdin and cio.FifoSet.existing(ctr.bundle_dir, ctr.id).stdin is not None
        except (errdefs.NotFound, errdefs.InvalidParameter):
            feed = False  # started without -i (or not by this command line): no stdin to give it
        if feed and tty and not sys.stdin.isatty():
            raise UsageError("the input device is not a TTY: the container has a terminal (use --no-stdin)")
        with LogTail(ctr, from_end=True) as tail, contextlib.ExitStack() as attached:
            if feed:
                task = ctr.attach_task(stdio.attach(stdin=sys.stdin.buffer))
                attached.callback(task.io.close)  # joins the stdin pump
            followed = task

            def send(signum: int) -> None:
                with contextlib.suppress(errdefs.LibcontainerdError):  # it may have exited meanwhile
                    followed.kill(signum)

            attached.enter_context(forwarded_signals(
                send, lambda: note("sent SIGINT to the process; Ctrl-C again detaches (it keeps running)")))
            note(f"attached to {args.id}" + (" (your stdin is its stdin)" if feed else ""))
            attached.enter_context(raw_input(tty, feed))
            attached.enter_context(resized(task, tty))
            return tail.follow(task, cancel=client.close)


def _task_or_none(ctr: libcontainerd.Container) -> libcontainerd.Task | None:
    try:
        return ctr.task()
    except errdefs.NotFound:
        return None


def _task_state(task: libcontainerd.Task | None) -> tuple[Status | None, int, ExitStatus | None]:
    """A task's status, pid and, once it stopped, exit status; ``(None, 0, None)`` without a task."""
    if task is None:
        return None, 0, None
    try:
        status = task.status()
        # containerd answers a Wait for a stopped task at once, with the exit status it keeps.
        return status, task.pid, task.wait() if status is Status.STOPPED else None
    except errdefs.NotFound:
        return None, 0, None  # deleted between the lookup and the question


def _ps_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print the container ids only")


@command("ps", "list the containers of the namespace with their task status, pid and exit code",
         f"example:\n  {PROG} ps\n  {PROG} ps -q | xargs {PROG} rm -f",
         arguments=_ps_arguments, aliases=("list", "ls"))
def cmd_ps(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        containers = sorted(client.list_containers(), key=lambda c: c.id)
        if args.quiet:
            for ctr in containers:
                out(ctr.id)
            return 0
        rows = []
        for ctr in containers:
            status, pid, exited = _task_state(_task_or_none(ctr))
            args_ = (ctr.spec.get("process") or {}).get("args") or []
            rows.append([ctr.id, "stopped" if status is None else status.value, str(pid) if pid else "-",
                         "-" if exited is None else str(exited.code), shlex.join(str(a) for a in args_)])
    out(table(["CONTAINER", "STATUS", "PID", "EXIT", "COMMAND"], rows, right=(2, 3)))
    return 0


def _one_container(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="the container")


@command("inspect", "print a container as JSON: spec, labels, bundle, image, task status, pid and exit code",
         f"examples:\n  {PROG} inspect web\n  {PROG} inspect web | jq .task.exit_code",
         arguments=_one_container)
def cmd_inspect(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        ctr = client.load_container(args.id)
        status, pid, exited = _task_state(_task_or_none(ctr))
    snapshot = ctr.snapshot
    try:
        bundle: str | None = ctr.bundle_dir
    except errdefs.InvalidParameter:
        bundle = None  # a container another client made (`ctr run`) has no bundle label
    doc: dict[str, Any] = {
        "id": ctr.id,
        "runtime": ctr.runtime,
        "labels": dict(ctr.labels),
        "bundle": bundle,
        "image": snapshot.image if snapshot else None,
        "snapshotter": snapshot.snapshotter if snapshot else None,
        "snapshot_key": snapshot.key if snapshot else None,
        # No task at all (never started, or deleted) is told apart from a stopped one: null, not "stopped".
        "task": None if status is None else {
            "status": status.value,
            "pid": pid or None,
            "exit_code": exited.code if exited else None,
            "exited_at": iso(exited.exited_at) if exited else None,
        },
        "spec": ctr.spec,
    }
    out(json.dumps(doc, indent=2))
    return 0


@command("top", "list the processes running in a container", f"example:\n  {PROG} top web",
         arguments=_one_container)
def cmd_top(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        task = client.load_container(args.id).task()
        reap_detached_execs(task)
        procs = task.summary()
    rows = [[str(p.pid), p.exec_id or ("(main)" if p.pid == task.pid else "-"),
             shlex.join(_procfs.cmdline(p.pid)) or "?"]  # "?" too for a remote daemon's pids: not ours to read
            for p in sorted(procs, key=lambda p: p.pid)]
    out(table(["PID", "EXEC", "COMMAND"], rows, right=(0,)))
    return 0


def _each(ids: Sequence[str], ctx: Context, action: Callable[[libcontainerd.Client, str], None]) -> int:
    """Apply ``action`` to each id; report failures one line each and go on (exit 1 if any failed)."""
    failed = 0
    with ctx.client() as client:
        for cid in ids:
            try:
                action(client, cid)
            except errdefs.LibcontainerdError as exc:
                if len(ids) == 1:
                    raise
                error_line(str(exc))
                failed += 1
    return EXIT_ERROR if failed else 0


def _containers(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", metavar="ID", nargs="+", help="the containers")


def _kill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", default="TERM", metavar="SIGNAL", help="name or number (default TERM)")
    p.add_argument("-a", "--all", action="store_true", help="every container of the namespace with a live task")
    p.add_argument("ids", metavar="ID", nargs="*", help="the containers")


def _live_ids(client: libcontainerd.Client) -> list[str]:
    """The containers whose task has a process to signal (created, running, paused or pausing)."""
    ids = []
    for ctr in sorted(client.list_containers(), key=lambda c: c.id):
        task = _task_or_none(ctr)
        if task is None:
            continue
        try:
            if task.status() in (Status.CREATED, Status.RUNNING, Status.PAUSED, Status.PAUSING):
                ids.append(ctr.id)
        except errdefs.NotFound:
            pass  # the task went between the listing and the status: nothing to signal
    return ids


@command("kill", "send a signal to the main process of containers",
         f"examples:\n  {PROG} kill web\n  {PROG} kill --signal KILL web db\n  {PROG} kill --all",
         arguments=_kill_arguments)
def cmd_kill(args: argparse.Namespace, ctx: Context) -> int:
    if bool(args.ids) == args.all:
        raise UsageError("name the containers to signal, or --all (not both)")
    ids = args.ids
    if args.all:
        with ctx.client() as client:
            ids = _live_ids(client)
    return _each(ids, ctx, lambda client, cid: client.load_container(cid).task().kill(args.signal))


@command("wait", "wait until containers' tasks exit; print each exit code, exit with the first one's",
         f"examples:\n  {PROG} wait web\n  {PROG} run -d --busybox job sh -c 'exit 3' && {PROG} wait job",
         arguments=_containers)
def cmd_wait(args: argparse.Namespace, ctx: Context) -> int:
    codes: list[int] = []

    def wait(client: libcontainerd.Client, cid: str) -> None:
        # containerd answers a Wait for an already stopped task at once, with its exit status.
        code = client.load_container(cid).task().wait().code
        out(str(code))
        codes.append(code)

    failed = _each(args.ids, ctx, wait)
    return failed if failed or not codes else codes[0]


def _stop_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", metavar="SECONDS", type=float, default=10.0,
                   help="how long to wait after SIGTERM before SIGKILL (default 10)")
    _containers(p)


@command("stop", "stop containers: SIGTERM, then SIGKILL if still running after -t seconds",
         f"examples:\n  {PROG} stop web\n  {PROG} stop -t 0 web db", arguments=_stop_arguments)
def cmd_stop(args: argparse.Namespace, ctx: Context) -> int:
    if args.time < 0:
        raise UsageError(f"-t/--time {args.time:g}: a number of seconds, 0 or more")

    def stop(client: libcontainerd.Client, cid: str) -> None:
        task = client.load_container(cid).task()
        if task.status() is not Status.STOPPED:
            if task.status() is Status.PAUSED:
                task.resume()  # a frozen process cannot act on SIGTERM
            task.kill(signal.SIGTERM)
            try:
                task.wait(timeout=args.time)
            except TimeoutError:
                task.kill(signal.SIGKILL)
                task.wait()
        out(cid)

    return _each(args.ids, ctx, stop)


@command("pause", "freeze every process of containers", f"example:\n  {PROG} pause web", arguments=_containers)
def cmd_pause(args: argparse.Namespace, ctx: Context) -> int:
    return _each(args.ids, ctx, lambda client, cid: client.load_container(cid).task().pause())


@command("resume", "thaw paused containers", f"example:\n  {PROG} resume web", arguments=_containers)
def cmd_resume(args: argparse.Namespace, ctx: Context) -> int:
    return _each(args.ids, ctx, lambda client, cid: client.load_container(cid).task().resume())


def _stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per container and line, with raw metrics")
    p.add_argument("ids", metavar="ID", nargs="*", help="the containers (default: every running one)")


@command("stats", "show CPU time, memory and pids of running containers",
         f"examples:\n  {PROG} stats\n  {PROG} stats --json web", arguments=_stats_arguments)
def cmd_stats(args: argparse.Namespace, ctx: Context) -> int:
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
        for cid, st in results:
            doc: dict[str, Any] = {
                "id": cid, "read": iso(st.read), "memory_bytes": st.memory_bytes,
                "memory_limit_bytes": st.memory_limit_bytes, "cpu_ns": st.cpu_ns, "pids": st.pids,
                "pids_limit": st.pids_limit, "metrics": json_message(st.metrics),
            }
            out(json.dumps(doc, sort_keys=False))
        return 0
    rows = []
    for cid, st in results:
        limit, pids_limit = st.memory_limit_bytes, st.pids_limit
        rows.append([
            cid,
            human_duration(st.cpu_ns),
            human_bytes(st.memory_bytes),
            human_bytes(limit) if limit else "-",
            f"{st.pids}" + (f" / {pids_limit}" if pids_limit else ""),
        ])
    out(table(["CONTAINER", "CPU TIME", "MEMORY", "LIMIT", "PIDS"], rows, right=(1, 2, 3, 4)))
    return 0


class _EventPrinter:
    """A backend that writes one line per event to stdout as it arrives, until the reader of stdout leaves."""

    def __init__(self, as_json: bool, containers: frozenset[str]) -> None:
        self._json = as_json
        self._containers = containers
        self._lock = threading.Lock()
        #: set when stdout's reader went away (``events | head -1``): the command then ends
        self.reader_gone = threading.Event()

    def process_event(self, container_id: str, event_type: EventType, info: EventInfo) -> None:
        if self._containers and container_id not in self._containers:
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        if self._json:
            # No process has pid 0, and only an exit has an exit code: absent values are null, not 0.
            line = json.dumps({
                "time": iso(now), "type": event_type.value, "container": container_id,
                "process": info.process_id, "pid": info.pid or None,
                "exit_code": info.exit_code if event_type is EventType.EXIT else None,
                "exited_at": iso(info.exited_at), "error": info.error,
            })
        else:
            details = describe_event(container_id, event_type, info)
            line = f"{iso(now)}  {event_type.value:<12}  {container_id}{details}"
        with self._lock:
            if self.reader_gone.is_set():
                return
            try:
                out(line)
            except (BrokenPipeError, ValueError):
                self.reader_gone.set()


def _events_filter(value: str) -> str:
    key, sep, container_id = value.partition("=")
    if key != "container" or not sep or not container_id:
        raise argparse.ArgumentTypeError(f"{value!r} is not container=ID")
    return container_id


def _events_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per event and line")
    p.add_argument("--filter", metavar="container=ID", type=_events_filter, action="append", default=[],
                   help="only the events of this container (repeat for several)")


@command("events", "print task events as they happen, until Ctrl-C",
         f"examples:\n  {PROG} events\n  {PROG} events --json | jq .type\n  {PROG} events --filter container=web",
         arguments=_events_arguments, reports_event_stream=True)
def cmd_events(args: argparse.Namespace, ctx: Context) -> int:
    printer = _EventPrinter(args.json, frozenset(args.filter))
    with ctx.client(printer) as client:
        client.version()  # fail now, with the usual message, when nothing serves there
        note(f"watching events of namespace {ctx.namespace} at {ctx.address} (Ctrl-C to stop)")
        while not printer.reader_gone.wait(1.0):
            pass
    # As `ctr events` does, end when nobody reads any more; main() treats this as the quiet end it is.
    raise BrokenPipeError


def _checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exit", action="store_true", help="stop the container after the checkpoint")
    p.add_argument("id", metavar="ID", help="the running container")
    p.add_argument("dir", metavar="DIR", help="where the checkpoint's files go")


@command("checkpoint", "checkpoint a running container with CRIU into a directory",
         f"example:\n  {PROG} checkpoint --exit web /tmp/web-checkpoint", arguments=_checkpoint_arguments)
def cmd_checkpoint(args: argparse.Namespace, ctx: Context) -> int:
    directory = os.path.abspath(args.dir)
    with ctx.client() as client:
        task = client.load_container(args.id).task()
        task.create_checkpoint(directory, exit=args.exit)
    note(f"checkpoint of {args.id} written to {directory}" + (" (the task was stopped)" if args.exit else ""))
    return 0


def _restore_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="the container, with no task or a stopped one (checkpoint --exit)")
    p.add_argument("dir", metavar="DIR", help="a checkpoint directory written by `checkpoint`")


@command("restore", "start a container's task again from a checkpoint directory that `checkpoint` wrote",
         f"example:\n  {PROG} checkpoint --exit web /tmp/web-checkpoint\n  {PROG} restore web /tmp/web-checkpoint\n"
         f"  {PROG} logs web\n\nThe restored task runs detached, as after `run -d`: its output goes on in its log.",
         arguments=_restore_arguments)
def cmd_restore(args: argparse.Namespace, ctx: Context) -> int:
    directory = os.path.abspath(args.dir)
    with ctx.client() as client:
        ctr = client.load_container(args.id)
        task = _task_or_none(ctr)
        if task is not None:
            status = task.status()
            if status is not Status.STOPPED:
                raise errdefs.Conflict(f"container {args.id} is {status.value}: a restore needs it stopped "
                                       "(`checkpoint --exit`, or `stop`)")
            task.delete()
        try:
            with_stdin = cio.FifoSet.existing(ctr.bundle_dir, ctr.id).stdin is not None  # `run -d -i` made one
        except errdefs.NotFound:
            with_stdin = False
        with deferred_interrupts():  # the restore completes in containerd anyway: return once it is known
            ctr.start(checkpoint_dir=directory, with_stdin=with_stdin, log_file=log_path(ctr))
    out(args.id)
    return 0


def _rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill and remove running containers too")
    _containers(p)


@command("rm", "remove containers (their stopped tasks too; -f kills running ones first)",
         f"examples:\n  {PROG} rm web\n  {PROG} rm -f web db", arguments=_rm_arguments)
def cmd_rm(args: argparse.Namespace, ctx: Context) -> int:
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
        out(cid)

    with no_interrupts():
        return _each(args.ids, ctx, remove)


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", metavar="DIR", default=None,
                   help="put everything under DIR instead of a fresh temporary directory")
    p.add_argument("--pause", action="store_true", help="wait for Enter before each step (for presenting it)")


@command("demo", "a private containerd, a busybox container, exec, stats, pause/resume and events, step by step",
         f"examples:\n  {PROG} demo\n  {PROG} demo --pause       # wait for Enter before each step\n"
         f"  {PROG} demo --root /tmp/lcd-demo\n\n"
         "Everything the demo makes is removed at the end, also on Ctrl-C.",
         arguments=_demo_arguments)
def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    from ._demo import run_demo

    return run_demo(args.root, sys.stdout, pause_on=sys.stdin if args.pause else None)

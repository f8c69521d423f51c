"""``run`` and ``exec`` in the foreground: the spec from the options, the start, the follow, the removal.

This module owns what the two commands share once their options are read: the process
spec (:func:`run_spec`, :func:`exec_spec`), the start with Ctrl-C held back, following
the process at the terminal, and the one path that removes what was made
(:class:`Attached`), after the exit, after an error and after Ctrl-C alike. It must not
write to stdout (the commands say what they print) and must not leave a container or
process of its own making behind unless the user asked to keep it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any, Callable

import attrs

import libcontainerd
from libcontainerd import _validation as valid
from libcontainerd import errdefs, oci

from ._context import PROG, Context, UsageError
from ._format import note
from ._signals import deferred_interrupts, forwarded_signals, interruptible, no_interrupts
from ._terminal import follow, raw_input, with_console_size
from ._values import parse_memory, parse_user

__all__ = ["Attached", "check_terminal", "exec_spec", "run_spec"]

# How long a killed exec'd process may take to exit before it is deleted anyway.
_KILL_WAIT = 10.0


def check_terminal(args: argparse.Namespace) -> None:
    """``-it`` needs a terminal on stdin, as docker says: raw mode and keystrokes need one."""
    if args.tty and args.interactive and not sys.stdin.isatty():
        raise UsageError("the input device is not a TTY: -it needs a terminal on stdin (drop -t to pipe input)")


@contextlib.contextmanager
def _bad_options_are_usage_errors() -> Iterator[None]:
    """What the spec builders refuse came from the command line (``-e NOEQ``, ``-w rel``): a usage error."""
    try:
        yield
    except errdefs.InvalidParameter as exc:
        raise UsageError(str(exc)) from exc


def run_spec(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    """The container's OCI spec from ``run``'s options (rootfs, user, env, memory, terminal size)."""
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
    with _bad_options_are_usage_errors():
        spec = oci.default_spec(rootfs, command, env=list(args.env), cwd=args.cwd or "/", terminal=args.tty,
                                user=user, hostname=args.hostname or args.id[:valid.HOST_NAME_MAX])
    if memory is not None:
        spec = oci.with_memory_limit(spec, memory)
    with_console_size(spec["process"], args.tty)
    return spec


def image_run_spec(args: argparse.Namespace, client: libcontainerd.Client) -> tuple[dict[str, Any], Any]:
    """``run IMAGE ID [COMMAND...]``: the spec from the image's config, and the image."""
    image = client.get_image(args.image)
    memory = parse_memory(args.memory) if args.memory else None
    spec = oci.image_spec(image, list(args.command) or None, env=list(args.env), cwd=args.cwd, user=args.user,
                          terminal=args.tty, hostname=args.hostname or args.id[:valid.HOST_NAME_MAX])
    if memory is not None:
        spec = oci.with_memory_limit(spec, memory)
    with_console_size(spec["process"], args.tty)
    return spec, image


def exec_spec(args: argparse.Namespace, ctr: libcontainerd.Container) -> dict[str, Any]:
    """The process spec from ``exec``'s options; user, env and cwd default to the container's own."""
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
    with _bad_options_are_usage_errors():
        spec = oci.process_spec(list(args.command), env=env, cwd=cwd, terminal=args.tty, user=user)
    with_console_size(spec, args.tty)
    return spec


@attrs.define
class Attached:
    """What ``run`` or ``exec`` made, and the one way it is removed.

    After the exit the process is deleted, and ``run --rm``'s container too. After an error
    or Ctrl-C (which is held back while the start is under way, and off during the removal)
    the process is killed before it is deleted, errors of the removal give way to the first
    one, and ``run``'s container goes unless ``--rm`` was not given and its task had started:
    a container whose task never started is of no use to anyone.

    Attributes:
        keep_container: keep the container once its task started (``run`` without ``--rm``).
        container: the container ``run`` created (exec's container is not its to remove).
        process: the task or exec'd process, once started.
    """

    keep_container: bool
    #: the client that made them: after a failure because containerd went away, the removal waits for it
    client: libcontainerd.Client | None = None
    #: the id of the container ``run`` creates (for the message when containerd went away during the create)
    container_id: str = ""
    container: libcontainerd.Container | None = None
    process: libcontainerd.Task | libcontainerd.Process | None = None
    _started: bool = False
    # signals that arrived before the process was started: sent to it once it is
    _held: list[int] = attrs.field(factory=list)
    _signals: contextlib.ExitStack = attrs.field(factory=contextlib.ExitStack)

    def start(self, start: Callable[[Attached], None], *, forward_signals: bool = True,
              raw_terminal: bool = False) -> None:
        """Run ``start`` (which sets :attr:`container` and :attr:`process` as it makes them); remove on failure.

        With ``forward_signals`` (the process is to be followed), SIGTERM and SIGHUP are forwarded from
        now until :meth:`follow` is done: one that arrives during the start waits for the process.
        With ``raw_terminal`` (``-it``), the local terminal is raw from now until :meth:`follow` is done.
        """
        self._signals.enter_context(raw_input(raw_terminal, raw_terminal))
        if forward_signals:
            self._signals.enter_context(
                forwarded_signals(self._forward, lambda: note("sent SIGINT to the process; Ctrl-C again kills it")))
        try:
            with deferred_interrupts():
                start(self)
        except BaseException as exc:
            with self._signals:
                self._remove(failed=True, containerd_away=isinstance(exc, errdefs.Unavailable))
            raise
        self._started = True
        for signum in self._held:
            self._forward(signum)

    def follow(self, tty_mode: bool) -> int:
        """Follow the started process at this terminal to its exit, remove it; return its exit code.

        SIGTERM, SIGHUP and a first Ctrl-C are sent to the process, which decides what they mean
        (its exit code is still ours); a second Ctrl-C kills and removes it.
        """
        assert self.process is not None  # start() made it or raised
        with self._signals:
            try:
                code = follow(self.process, tty_mode)
            except BaseException:
                # Interrupted (or the wait failed): what is attached to this terminal must not linger unseen.
                self._remove(failed=True)
                raise
            self._remove(failed=False)
        return code

    def _forward(self, signum: int) -> None:
        if not self._started or self.process is None:
            self._held.append(signum)
            return
        with contextlib.suppress(errdefs.LibcontainerdError):  # it may have exited meanwhile
            self.process.kill(signum)

    def _remove(self, *, failed: bool, containerd_away: bool = False) -> None:
        keep = self.keep_container and self._started
        with no_interrupts():
            if self.process is not None:
                if failed:
                    _discard(self.process)
                else:
                    self.process.delete()
            if self.container is not None and not keep:
                if failed:
                    self._discard_container(self.container)
                else:
                    self.container.delete()
            elif self.container is None and containerd_away and self.container_id:
                note(f"containerd went away while creating container {self.container_id}: if `ps` lists it once "
                     f"containerd is back, remove it with `{PROG} rm -f {self.container_id}`")

    def _discard_container(self, ctr: libcontainerd.Container) -> None:
        """Remove the container (and any task of it) after a failure; if containerd is away, once it is back.

        containerd may die during the start (between the create and the start, or while either is under
        way): then what it made is only known, and removable, once it serves again. The client waits for
        that (up to :data:`_CONTAINERD_BACK_WAIT` s; Ctrl-C stops waiting); what cannot be removed is named,
        with the command that removes it.
        """
        try:
            _discard_container(ctr)
            return
        except errdefs.Unavailable:
            pass
        except errdefs.LibcontainerdError as exc:
            _left_behind(ctr, str(exc))
            return
        note(f"containerd went away during the start of container {ctr.id}; waiting up to "
             f"{_CONTAINERD_BACK_WAIT:g} s for it to come back to remove the container (Ctrl-C stops waiting)")
        try:
            with interruptible():
                back = self.client is not None and self.client.is_serving(timeout=_CONTAINERD_BACK_WAIT)
                if back:
                    _discard_container(ctr)
        except KeyboardInterrupt:
            _left_behind(ctr, "stopped waiting for containerd")
            return
        except errdefs.LibcontainerdError as exc:
            _left_behind(ctr, str(exc))
            return
        if not back:
            _left_behind(ctr, f"containerd did not come back within {_CONTAINERD_BACK_WAIT:g} s")
            return
        note(f"containerd is back: removed container {ctr.id}")


# How long the removal after a failed start waits for a containerd that went away to serve again.
_CONTAINERD_BACK_WAIT = 60.0


def _discard_container(ctr: libcontainerd.Container) -> None:
    """Force-delete the container's task if containerd has one, then the container (gone already is fine)."""
    try:
        task = ctr.task()
    except errdefs.NotFound:
        task = None
    if task is not None:
        with contextlib.suppress(errdefs.NotFound):
            task.force_delete()
    with contextlib.suppress(errdefs.NotFound):
        ctr.delete()


def _left_behind(ctr: libcontainerd.Container, why: str) -> None:
    try:
        bundle = f" and its state {ctr.bundle_dir}"
    except errdefs.InvalidParameter:
        bundle = ""
    note(f"left behind: container {ctr.id} (with its task, if containerd made one){bundle} ({why}); "
         f"remove them with `{PROG} rm -f {ctr.id}` once containerd serves")


def _discard(proc: libcontainerd.Task | libcontainerd.Process) -> None:
    """Kill and delete a process after a failure, ignoring errors (the first error is the one to report)."""
    if isinstance(proc, libcontainerd.Task):
        with contextlib.suppress(errdefs.LibcontainerdError):
            proc.force_delete()
        return
    with contextlib.suppress(errdefs.LibcontainerdError, TimeoutError):
        proc.kill(signal.SIGKILL)
        proc.wait(timeout=_KILL_WAIT)
        proc.delete()

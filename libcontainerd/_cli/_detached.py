"""What outlives the command that started it: a detached container's log, and ``exec -d`` processes to reap.

This module owns the state a detached process leaves in its container's bundle directory
for later commands, and how later commands read it:

* the log of ``run -d`` (``<bundle>/<id>.log``): the shim appends the container's output to it
  itself (``Container.start(log_file=...)``), so the output is there whether or not a command
  runs; :class:`LogTail` copies it to our stdout, and follows it while the task runs (``logs
  -f``, ``attach``). It goes with the bundle dir when the container is removed.
* a marker per ``exec -d`` process (``<bundle>/.detached-execs/<exec id>``), so that the next
  command touching the task can delete the ones that exited. docker's daemon deletes an exec'd
  process on its exit event; this command line has no daemon, and containerd keeps an exited
  exec until someone deletes it (``ctr task exec -d`` leaks it for good), so the reaping is done
  by whoever comes next: ``exec`` (before it starts a process, so that an exec id is reusable
  once its process exited) and ``top``.

It writes to stdout only the container's own output (:class:`LogTail`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import BinaryIO, Callable

import libcontainerd
from libcontainerd import errdefs
from libcontainerd.types import Status

from ._signals import no_interrupts

__all__ = ["LogTail", "log_path", "mark_detached_exec", "reap_detached_execs"]

log = logging.getLogger(__name__)

_DETACHED_EXECS = ".detached-execs"
# While following: how long each wait for the task's exit lasts before the log is read again.
_FOLLOW_SLICE = 0.1
# After the exit the shim may still be copying the last output into the file (its exit event does
# not wait for the copy): read on until the file stopped growing for this long, or at most _SETTLE_MAX.
_SETTLE_QUIET, _SETTLE_MAX = 0.2, 3.0


def log_path(ctr: libcontainerd.Container) -> str:
    """Where ``run -d`` has the shim write the container's output: in its bundle dir, removed with it."""
    return os.path.join(ctr.bundle_dir, f"{ctr.id}.log")


class LogTail:
    """A detached container's log file, copied to our stdout from where it is opened on."""

    def __init__(self, ctr: libcontainerd.Container, *, from_end: bool = False) -> None:
        try:
            path = log_path(ctr)
        except errdefs.InvalidParameter as exc:
            raise errdefs.NotFound(f"container {ctr.id} has no log: it was not made by this command line") from exc
        try:
            self._file: BinaryIO = open(path, "rb")  # noqa: SIM115  (closed by close())
        except FileNotFoundError:
            raise errdefs.NotFound(f"container {ctr.id} has no log: only `run -d` keeps one") from None
        if from_end:
            self._file.seek(0, os.SEEK_END)

    def copy(self) -> int:
        """Copy what was written since the last call to stdout; returns how many bytes."""
        copied = 0
        while chunk := self._file.read(64 * 1024):
            sys.stdout.buffer.write(chunk)
            copied += len(chunk)
        if copied:
            sys.stdout.buffer.flush()
        return copied

    def follow(self, task: libcontainerd.Task, *, cancel: Callable[[], None]) -> int:
        """Copy the log as it grows until the task exits and its last output is in; returns its exit code.

        The wait for the exit runs on a thread of its own, and this (main) thread only reads the file:
        a Ctrl-C (``KeyboardInterrupt``, which leaves the task alone) or a reader of stdout that went
        away (``BrokenPipeError``) can then never land inside a gRPC call, where it would leave the
        channel unable to close. When following ends otherwise than by the exit, ``cancel`` (the
        client's ``close``) ends the wait under way, and the thread is joined.
        """
        outcome: list[libcontainerd.ExitStatus | BaseException] = []
        exited = threading.Event()

        def wait() -> None:
            try:
                outcome.append(task.wait())
            except BaseException as exc:  # handed to the main thread, which raises it
                outcome.append(exc)
            finally:
                exited.set()

        waiter = threading.Thread(target=wait, name="libcontainerd-cli-wait", daemon=True)
        waiter.start()
        try:
            while not exited.wait(_FOLLOW_SLICE):
                self.copy()
            deadline = quiet_since = time.monotonic()
            deadline += _SETTLE_MAX
            while time.monotonic() < deadline and time.monotonic() - quiet_since < _SETTLE_QUIET:
                if self.copy():
                    quiet_since = time.monotonic()
                time.sleep(_SETTLE_QUIET / 4)
        finally:
            with no_interrupts():
                if waiter.is_alive():
                    cancel()
                waiter.join()
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result.code

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LogTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _markers_dir(ctr: libcontainerd.Container) -> str | None:
    try:
        return os.path.join(ctr.bundle_dir, _DETACHED_EXECS)
    except errdefs.InvalidParameter:
        return None  # a container another client made (`ctr run`) has no bundle dir of ours


def mark_detached_exec(ctr: libcontainerd.Container, exec_id: str) -> None:
    """Record a started ``exec -d`` process, for :func:`reap_detached_execs` to delete once it exited.

    Written after the start: a marker never names a process that does not exist yet, so a reaper
    running meanwhile cannot take a missing process for a gone one.
    """
    directory = _markers_dir(ctr)
    if directory is None:
        log.warning("container %s has no bundle dir of this client: exec %s is not deleted when it exits",
                    ctr.id, exec_id)
        return
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, exec_id), "w"):
        pass


def reap_detached_execs(task: libcontainerd.Task) -> None:
    """Delete the ``exec -d`` processes of the task that have exited (their ids become free again)."""
    directory = _markers_dir(task.container)
    if directory is None:
        return
    try:
        exec_ids = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for exec_id in exec_ids:
        try:
            proc = task.load_process(exec_id)
            if proc.status() is not Status.STOPPED:
                continue
            proc.delete()
        except errdefs.NotFound:
            pass  # deleted already (by another command, or with a task that was restarted)
        except errdefs.LibcontainerdError as exc:
            log.debug("could not reap exec %s of %s: %s", exec_id, task.id, exc)
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, exec_id))

"""What outlives the command that started it: ``exec -d`` processes to reap later.

This module owns the state a detached process leaves in its container's bundle directory
for later commands: a marker per ``exec -d`` process (``<bundle>/.detached-execs/<exec id>``),
so that the next command touching the task can delete the ones that exited. docker's daemon
deletes an exec'd process on its exit event; this command line has no daemon, and containerd
keeps an exited exec until someone deletes it (``ctr task exec -d`` leaks it for good), so the
reaping is done by whoever comes next: ``exec`` (before it starts a process, so that an exec
id is reusable once its process exited) and ``top``. The markers go with the bundle dir when
the container is removed. It must not write to stdout.
"""

from __future__ import annotations

import contextlib
import logging
import os

import libcontainerd
from libcontainerd import errdefs
from libcontainerd.types import Status

__all__ = ["mark_detached_exec", "reap_detached_execs"]

log = logging.getLogger(__name__)

_DETACHED_EXECS = ".detached-execs"


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

"""Reading Linux's ``/proc``: process lists, command lines, states, parents, descriptors, mounts.

This module owns every parse of ``/proc`` in the package and its tests: which pids exist
(:func:`pids`), a process's argv (:func:`cmdline`), its one-letter state, whether it
still runs, its parent and what runs below it (:func:`state`, :func:`running`,
:func:`parents`, :func:`descendants`), its threads' states (:func:`thread_states`), this
process's descriptors and memory (:func:`fds`, :func:`status`), a process's cgroups
(:func:`cgroups`) and the mount points this process sees (:func:`mount_points`). It must
only read: no signals, no waiting, no writes; and a process that ends while it is being
read is an ordinary answer (empty or None), never an exception, because every caller
looks at processes that may exit at any moment.

Linux facts this module is built on (checked by ``tests/unit/test_procfs.py``):

* ``/proc/<pid>/stat`` is ``pid (comm) state ppid ...``, and ``comm`` may itself hold
  spaces and parentheses: the fields start after the *last* ``)``.
* ``/proc/<pid>/cmdline`` is the argv joined and ended by NUL bytes; it is empty for a
  zombie and for a kernel thread.
* A zombie (state ``Z``) keeps its ``/proc`` entry until it is reaped, which this
  machine's init may never do for orphans: "still exists" is not "still runs".
* ``/proc/self/mountinfo``'s fifth field is the mount point with space, tab, newline
  and backslash written as three-digit octal escapes.
* Listing ``/proc/self/fd`` opens a descriptor, which is in the listing itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from typing import Union

__all__ = [
    "cgroups",
    "cmdline",
    "descendants",
    "fds",
    "mount_points",
    "parents",
    "pids",
    "running",
    "state",
    "status",
    "thread_states",
]

Pid = Union[int, str]  # a pid, or "self"

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone (ENOENT, ESRCH) or not ours to read (EACCES)
        return None


def _stat_fields(path: str) -> list[str]:
    """The fields of a ``stat`` file after ``(comm)``: ``[state, ppid, ...]``; ``[]`` when unreadable."""
    raw = _read(path)
    if raw is None:
        return []
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def pids() -> list[int]:
    """The pids that have an entry in ``/proc`` now (zombies included), in no particular order.

    >>> os.getpid() in pids()
    True
    """
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def cmdline(pid: Pid) -> list[str]:
    """The argv of ``pid``; ``[]`` when it is gone, a zombie, a kernel thread or unreadable.

    >>> cmdline("self") != []
    True
    """
    raw = _read(f"/proc/{pid}/cmdline")
    return [os.fsdecode(a) for a in raw.split(b"\0") if a] if raw else []


def state(pid: Pid) -> str | None:
    """The one-letter state of ``pid`` (``R``, ``S``, ``D``, ``T``, ``Z`` ...); None when it is gone.

    >>> state("self")
    'R'
    """
    fields = _stat_fields(f"/proc/{pid}/stat")
    return fields[0] if fields else None


def running(pid: Pid) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's zombie may never be reaped here).

    >>> running("self")
    True
    """
    return state(pid) not in (None, "Z")


def thread_states(pid: Pid) -> list[str]:
    """The state letter of each thread of ``pid``; ``[]`` when it is gone.

    >>> thread_states("self")[0]
    'R'
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    states = (_stat_fields(f"/proc/{pid}/task/{tid}/stat") for tid in tids)
    return [fields[0] for fields in states if fields]  # a thread that ended meanwhile has none


def parents() -> dict[int, int]:
    """``{pid: parent pid}`` of every process that is not a zombie.

    >>> parents()[os.getpid()] == os.getppid()
    True
    """
    found = {}
    for pid in pids():
        fields = _stat_fields(f"/proc/{pid}/stat")
        if len(fields) > 1 and fields[0] != "Z":
            found[pid] = int(fields[1])
    return found


def descendants(roots: Collection[int]) -> set[int]:
    """The pids below ``roots`` (children, their children ...), zombies left out, ``roots`` not included.

    >>> descendants([os.getppid()]) >= {os.getpid()}
    True
    """
    tree = parents()
    below: set[int] = set()
    frontier = set(roots)
    while frontier:
        frontier = {pid for pid, ppid in tree.items() if ppid in frontier} - below
        below |= frontier
    return below


def status(pid: Pid = "self") -> dict[str, str]:
    """The ``Key: value`` lines of ``/proc/<pid>/status`` (e.g. ``State``, ``VmRSS``); ``{}`` when gone.

    >>> status()["VmRSS"].endswith(" kB")
    True
    """
    raw = _read(f"/proc/{pid}/status")
    found = {}
    for line in (raw or b"").decode("ascii", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            found[key] = value.strip()
    return found


def cgroups(pid: Pid) -> set[str]:
    """The lines of ``/proc/<pid>/cgroup`` (``hierarchy:controllers:path``); empty when gone.

    >>> all(line.count(":") >= 2 for line in cgroups("self"))
    True
    """
    raw = _read(f"/proc/{pid}/cgroup")
    return set((raw or b"").decode("utf-8", "surrogateescape").splitlines())


def fds() -> set[int]:
    """The descriptors this process has open, the one that lists them included.

    >>> f = open(os.devnull); f.fileno() in fds()
    True
    >>> f.close()
    """
    return {int(name) for name in os.listdir("/proc/self/fd")}


def mount_points() -> list[str]:
    """The mount points this process sees, unescaped, in ``mountinfo`` order (repeats kept).

    >>> "/" in mount_points()
    True
    """
    raw = _read("/proc/self/mountinfo") or b""
    return [_OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4])
            for line in raw.decode("utf-8", "surrogateescape").splitlines() if line]

"""The contract: value types, enums and the backend protocol.

Everything here is plain data (frozen attrs classes and enums) that callers build
on; nothing here talks to containerd or starts threads.
"""

from __future__ import annotations

import datetime
import enum
from typing import Any, Protocol, runtime_checkable

import attrs

__all__ = ["Backend", "Descriptor", "EventInfo", "EventType", "ExitStatus", "PullProgress", "Stats", "Status",
           "Summary", "Version"]

# cgroup v1 reports "no memory limit" as a page-rounded 2**63-1.
_NO_MEMORY_LIMIT = 1 << 62


@attrs.frozen
class Version:
    """containerd's version and git revision.

    The revision may be empty: some builds (Debian's containerd 2.x) carry none.

    >>> Version("1.6.20", "1.6.20~ds1-1")
    Version(version='1.6.20', revision='1.6.20~ds1-1')
    >>> print(Version("1.6.20", "1.6.20~ds1-1"), Version("2.1.9+unknown", ""), sep="; ")
    1.6.20 (revision 1.6.20~ds1-1); 2.1.9+unknown
    """

    version: str
    revision: str

    def __str__(self) -> str:
        return f"{self.version} (revision {self.revision})" if self.revision else self.version


@attrs.frozen
class ExitStatus:
    """How a process ended: its exit code (128+signal for a signal) and when.

    >>> ExitStatus(137).code - 128  # killed by SIGKILL
    9
    """

    code: int
    exited_at: datetime.datetime | None = None


class Status(enum.Enum):
    """A task's or process's state, as containerd reports it.

    >>> Status("running") is Status.RUNNING
    True
    """

    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    PAUSING = "pausing"
    UNKNOWN = "unknown"


@attrs.frozen
class Stats:
    """Resource usage of a task.

    Attributes:
        read: when containerd read the numbers (aware UTC datetime).
        metrics: containerd's cgroup ``Metrics`` message as is: cgroup v1
            (``io.containerd.cgroups.v1.Metrics``: ``memory.usage.usage``, ``pids.current`` ...)
            or v2 (``io.containerd.cgroups.v2.Metrics``: ``memory.usage``, ``pids.current`` ...).

    The properties give the numbers most callers want the same way for v1 and v2:
    memory in use and its limit, CPU time and the number of processes and their limit
    (a limit is None where there is none).

    >>> stats = task.stats()  # doctest: +SKIP
    >>> stats.metrics.memory.usage.usage  # cgroup v1  # doctest: +SKIP
    1400832
    >>> stats.memory_bytes, stats.memory_limit_bytes, stats.pids  # either version  # doctest: +SKIP
    (1400832, 67108864, 1)
    """

    read: datetime.datetime
    metrics: Any = attrs.field(repr=lambda m: f"<{getattr(type(m), 'DESCRIPTOR', type(m)).full_name}>"
                               if hasattr(type(m), "DESCRIPTOR") else repr(m))

    @property
    def _v2(self) -> bool:
        name: str = getattr(getattr(type(self.metrics), "DESCRIPTOR", None), "full_name", "")
        return name.endswith("v2.Metrics")

    @property
    def memory_bytes(self) -> int:
        """Memory in use by the task's cgroup, in bytes."""
        m = self.metrics.memory
        return int(m.usage if self._v2 else m.usage.usage)

    @property
    def memory_limit_bytes(self) -> int | None:
        """The cgroup's memory limit in bytes; None when it has none."""
        m = self.metrics.memory
        limit = int(m.usage_limit if self._v2 else m.usage.limit)
        return limit if 0 < limit < _NO_MEMORY_LIMIT else None

    @property
    def cpu_ns(self) -> int:
        """CPU time used by the task's processes, in nanoseconds."""
        cpu = self.metrics.cpu
        return int(cpu.usage_usec) * 1000 if self._v2 else int(cpu.usage.total)

    @property
    def pids(self) -> int:
        """How many processes the task's cgroup holds."""
        return int(self.metrics.pids.current)

    @property
    def pids_limit(self) -> int | None:
        """The cgroup's limit on processes; None when it has none."""
        return int(self.metrics.pids.limit) or None


@attrs.frozen
class Summary:
    """One process of a task: its host pid and, for an exec'd process, its exec id.

    >>> Summary(pid=4321, exec_id="ls-1")
    Summary(pid=4321, exec_id='ls-1')
    """

    pid: int
    exec_id: str | None = None


class EventType(enum.Enum):
    """The task events delivered to a backend.

    >>> EventType("exec-started")
    <EventType.EXEC_STARTED: 'exec-started'>
    """

    CREATE = "create"
    START = "start"
    EXIT = "exit"
    OOM = "oom"
    EXEC_ADDED = "exec-added"
    EXEC_STARTED = "exec-started"
    PAUSED = "paused"
    RESUMED = "resumed"


@attrs.frozen
class EventInfo:
    """What an event says.

    Attributes:
        container_id: the container the event is about.
        process_id: the exec id, or the container id for the task's main process.
        pid: host pid, 0 where the event carries none.
        exit_code: for EXIT events, else 0.
        exited_at: for EXIT events, an aware UTC datetime, else ``None``.
        error: set when the event was synthesised by the client (e.g. an exit found
            after a reconnect) and something about it is uncertain.

    >>> EventInfo("web", "web", pid=4242, exit_code=0)
    EventInfo(container_id='web', process_id='web', pid=4242, exit_code=0, exited_at=None, error=None)
    """

    container_id: str
    process_id: str
    pid: int = 0
    exit_code: int = 0
    exited_at: datetime.datetime | None = None
    error: str | None = None


@attrs.frozen
class Descriptor:
    """A blob of content: its media type, ``sha256:`` digest and size in bytes.

    >>> Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "0" * 64, 512).size
    512
    """

    media_type: str
    digest: str
    size: int


@attrs.frozen
class PullProgress:
    """One step of a pull or an import, as ``progress=`` callbacks receive it.

    Attributes:
        ref: the image reference being pulled.
        digest: the blob this is about.
        media_type: its media type (a layer, a config, a manifest or an index).
        offset: bytes of it in the content store so far.
        total: its size.
        status: ``"waiting"`` (not started), ``"downloading"``, ``"exists"`` (already in the
            content store: nothing fetched) or ``"done"`` (fetched, verified and committed).

    >>> PullProgress("docker.io/library/busybox:latest", "sha256:" + "0" * 64, "layer", 0, 10, "waiting").status
    'waiting'
    """

    ref: str
    digest: str
    media_type: str
    offset: int
    total: int
    status: str


@runtime_checkable
class Backend(Protocol):
    """What a client delivers events to.

    ``process_event`` is called on a worker thread of the client's event executor:
    one container's events one at a time and in order, different containers in
    parallel. It must not block for long (other events of the same container wait),
    and an exception it raises is logged and otherwise ignored. It may call the client,
    and may even close it.

    >>> class Printer:
    ...     def process_event(self, container_id, event_type, info):
    ...         print(container_id, event_type.value, info.exit_code)
    >>> isinstance(Printer(), Backend)
    True
    """

    def process_event(self, container_id: str, event_type: EventType, info: EventInfo) -> None:
        """Handle one event of ``container_id`` (see :class:`EventType` and :class:`EventInfo`)."""

"""The session: what the handles of one client share, and the only way they reach containerd.

A :class:`Session` is made by :func:`~libcontainerd.new_client` and owned by the
:class:`~libcontainerd.Client`; every :class:`~libcontainerd.Container`, :class:`~libcontainerd.Task`
and :class:`~libcontainerd.Process` (and the checkpoint code) holds it instead of the client.
It holds the connection (the gRPC boundary), the namespace and state dir, the tracker of
running processes that the event stream shares, the per-task exec-start locks, and the owner of
the client's stdio I/O loop (started by the stdio callbacks, closed by the client). It must not
know containers or tasks beyond their ids, start threads itself, or call the backend.
"""

from __future__ import annotations

import contextlib
import threading

import attrs

from .._ioloop import LoopOwner
from ._events import EventStream, ProcessTracker
from ._rpc import Connection


@attrs.define(eq=False)
class Session:
    """The connection, namespace, state dir, runc root, process tracker and exec-start locks of one client."""

    conn: Connection = attrs.field(repr=False)
    namespace: str
    state_dir: str
    #: serialize exec starts per task (containerd#8557: concurrent starts stall in the runc shim)
    serialize_exec_starts: bool = True
    #: runc's ``--root`` given to the runc containers this client creates (None: containerd's default)
    runc_root: str | None = attrs.field(default=None, kw_only=True)
    tracker: ProcessTracker = attrs.field(factory=ProcessTracker, repr=False)
    #: delivers an exit that a call (Wait, Delete) learned and the stream may have missed, exactly once
    exits: EventStream | None = attrs.field(default=None, repr=False)
    #: the I/O loop that moves the FIFO data of this client's ready-made stdio
    io_loop: LoopOwner = attrs.field(factory=LoopOwner, repr=False, kw_only=True)
    _exec_locks: dict[str, threading.Lock] = attrs.field(init=False, factory=dict, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def exec_start_lock(self, container_id: str) -> contextlib.AbstractContextManager[object]:
        """What an exec start of this container holds (nothing when starts are not serialized)."""
        if not self.serialize_exec_starts:
            return contextlib.nullcontext()
        with self._lock:
            lock = self._exec_locks.get(container_id)
            if lock is None:
                lock = self._exec_locks[container_id] = threading.Lock()
            return lock

    def forget_container(self, container_id: str) -> None:
        """The container was deleted: stop tracking its processes and drop its lock."""
        self.tracker.forget(container_id)
        with self._lock:
            self._exec_locks.pop(container_id, None)

    def log_extra(self, container_id: str) -> dict[str, str]:
        """Log record attributes that let a handler filter by container and namespace."""
        return {"container_id": container_id, "namespace": self.namespace}

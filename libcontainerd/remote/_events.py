"""The event stream: one reader thread per client, and what it hands to the backend.

The reader subscribes to containerd's ``Events.Subscribe`` for the task topics a backend gets
(``namespace==<ns>,topic=="/tasks/create"``, one filter per topic of :data:`BACKEND_TOPICS`; not
``/tasks/delete`` and the others, whose every message would cost a gRPC receive for nothing),
decodes every envelope and hands each task event to the client's keyed serial executor: one
container's events in order, different containers in parallel. Backend callbacks never run on the reader thread.

When the stream breaks for any reason but our own ``close()``, the reader waits until
containerd serves again (tenacity, from 100 ms with bounded exponential backoff, cut short
by ``close()``) and subscribes anew. containerd does not replay events published while no
one listened, so after every *re*-subscription the reader asks containerd about each
process this client believes to be running, and delivers an ``EXIT`` for each that
stopped meanwhile (once: an exit is delivered at most once per container, process and pid,
whichever of the stream and this reconciliation sees it first).

That question is asked only once containerd has registered the new subscription: a
``Subscribe`` call returns before containerd listens for it, and an exit published in
between would reach neither the stream nor a reconciliation made too early. For every
subscription (the first too, which ``new_client`` waits for up to 2 s) a helper thread
(``libcontainerd-events-resync``, owned and joined by the reader) publishes to a topic private
to this stream until the reader sees it come back; the reader then reconciles. A
subscription that never shows it is cancelled and made anew.

This module must not call the backend directly and must not block in ``close()``.
"""

from __future__ import annotations

import collections
import datetime
import functools
import logging
import threading
import time
import uuid
from typing import Any

import attrs
import tenacity
from google.protobuf import any_pb2, empty_pb2

from .. import errdefs
from .._api.containerd.api.services.events.v1 import events_pb2
from .._api.containerd.api.services.tasks.v1 import tasks_pb2
from .._api.containerd.api.types.task import task_pb2 as task_types
from .._typeurl import unpack
from ..queue import KeyedSerialExecutor
from ..types import Backend, EventInfo, EventType
from ._rpc import Connection, Stream

log = logging.getLogger(__name__)

READER_THREAD_NAME = "libcontainerd-events-reader"
RESYNC_THREAD_NAME = "libcontainerd-events-resync"
_EXITED_MEMORY = 8192
#: While containerd does not serve, a warning per failed attempt, at most one per this many seconds
#: (the attempts in between are logged at debug level).
DOWN_WARNING_INTERVAL = 10.0
# The sync event is a google.protobuf.Empty under its bare proto name: every subscriber of the namespace
# receives it (a topic cannot be hidden from a subscriber without a filter), and containerd's own
# decoders (typeurl: its registry, then the protobuf registry by full name) find that type on 1.6, 1.7
# and 2.x, so `ctr events` prints `{}` where a type of our own made it warn "cannot unmarshal an event".
_SYNC_EVENT = any_pb2.Any(type_url=empty_pb2.Empty.DESCRIPTOR.full_name)
#: After a reconnect, how long a process that containerd does not know is looked at again before it
#: counts as gone (containerd 2.x serves before it has reconnected to its tasks' shims).
RECONCILE_GRACE = 5.0


def timestamp_to_datetime(ts: Any) -> datetime.datetime | None:
    """An aware UTC datetime from a protobuf Timestamp, ``None`` for the zero value."""
    if ts is None or (ts.seconds <= 0 and ts.nanos == 0):
        return None
    return datetime.datetime.fromtimestamp(ts.seconds, tz=datetime.timezone.utc) + datetime.timedelta(
        microseconds=ts.nanos // 1000
    )


#: The containerd topics of the events a backend gets (:class:`~libcontainerd.types.EventType`), the only
#: task topics the reader subscribes to.
BACKEND_TOPICS = tuple(f"/tasks/{t.value}" for t in EventType)


def translate(type_url: str, event: Any) -> tuple[EventType, EventInfo] | None:
    """Map a decoded containerd task event to the backend's (type, info), as moby does.

    Returns ``None`` for events the backend does not get (TaskDelete, TaskIO, ...).
    """
    name = type_url.rsplit(".", 1)[-1]
    if name == "TaskCreate":
        return EventType.CREATE, EventInfo(event.container_id, event.container_id, pid=event.pid)
    if name == "TaskStart":
        return EventType.START, EventInfo(event.container_id, event.container_id, pid=event.pid)
    if name == "TaskExit":
        return EventType.EXIT, EventInfo(
            event.container_id,
            event.id,
            pid=event.pid,
            exit_code=event.exit_status,
            exited_at=timestamp_to_datetime(event.exited_at),
        )
    if name == "TaskOOM":
        return EventType.OOM, EventInfo(event.container_id, event.container_id)
    if name == "TaskExecAdded":
        return EventType.EXEC_ADDED, EventInfo(event.container_id, event.exec_id)
    if name == "TaskExecStarted":
        return EventType.EXEC_STARTED, EventInfo(event.container_id, event.exec_id, pid=event.pid)
    if name == "TaskPaused":
        return EventType.PAUSED, EventInfo(event.container_id, event.container_id)
    if name == "TaskResumed":
        return EventType.RESUMED, EventInfo(event.container_id, event.container_id)
    return None


class ProcessTracker:
    """Which processes of this client are believed running, and which exits were delivered.

    Fed by the client (on start/exec/delete) and by the stream (START, EXEC_STARTED, EXIT).
    The exits it remembers also answer :meth:`exit_of`, for a ``wait()`` whose process
    containerd forgot (a shim that died takes its ``Wait`` down with it; only the event tells).
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._running: dict[tuple[str, str], int] = {}
        self._exited: collections.OrderedDict[tuple[str, str, int], EventInfo | None] = collections.OrderedDict()

    def started(self, container_id: str, process_id: str, pid: int) -> None:
        with self._lock:
            if (container_id, process_id, pid) not in self._exited:
                self._running[(container_id, process_id)] = pid

    def forget(self, container_id: str, process_id: str | None = None) -> None:
        """Stop tracking a process (deleted), or every process of a container."""
        with self._lock:
            if process_id is not None:
                self._running.pop((container_id, process_id), None)
            else:
                for key in [k for k in self._running if k[0] == container_id]:
                    del self._running[key]

    def first_exit(self, container_id: str, process_id: str, pid: int, info: EventInfo | None = None) -> bool:
        """Record an exit; True if it was not delivered before.

        An exit without a pid (containerd's TaskExit for a task whose shim died says pid 0) is the
        exit of the process of that id believed running.
        """
        with self._lock:
            if not pid:
                pid = self._running.get((container_id, process_id), 0)
            key = (container_id, process_id, pid)
            if key in self._exited:
                return False
            self._exited[key] = info
            if len(self._exited) > _EXITED_MEMORY:
                self._exited.popitem(last=False)
            if self._running.get((container_id, process_id)) == pid:
                del self._running[(container_id, process_id)]
            self._lock.notify_all()
            return True

    def exit_of(self, container_id: str, process_id: str, pid: int, timeout: float) -> EventInfo | None:
        """The recorded exit of a process; waits up to ``timeout`` s if it is believed running, else None."""
        key = (container_id, process_id, pid)
        with self._lock:
            if key not in self._exited and self._running.get((container_id, process_id)) != pid:
                return None
            self._lock.wait_for(lambda: key in self._exited, timeout)
            return self._exited.get(key)

    def is_running(self, container_id: str, process_id: str, pid: int) -> bool:
        """Whether the process is believed running (its exit not yet seen)."""
        with self._lock:
            return self._running.get((container_id, process_id)) == pid

    def running(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return [(c, p, pid) for (c, p), pid in self._running.items()]


def _sync_topic() -> str:
    return f"/libcontainerd/sync/{uuid.uuid4().hex}"


@attrs.define(eq=False)
class EventStream:
    """Owns the reader thread; see the module docstring.

    Attributes:
        subscriptions: how many times the reader has subscribed.
        filters: the subscription's filters.
    """

    _rpc: Connection = attrs.field(repr=False)
    _namespace: str
    _backend: Backend | None = attrs.field(repr=False)
    _executor: KeyedSerialExecutor = attrs.field(repr=False)
    _tracker: ProcessTracker = attrs.field(repr=False)
    _retry_max_wait: float = attrs.field(default=2.0, kw_only=True, repr=False)
    subscriptions: int = attrs.field(init=False, default=0)
    # A private topic that only this stream subscribes to: seeing our own event on it
    # proves that containerd has registered the subscription (gRPC gives no such signal).
    _sync_topic: str = attrs.field(init=False, factory=_sync_topic, repr=False)
    filters: list[str] = attrs.field(init=False, repr=False)
    _closing: threading.Event = attrs.field(init=False, factory=threading.Event, repr=False)
    _started: threading.Event = attrs.field(init=False, factory=threading.Event, repr=False)
    _synced: threading.Event = attrs.field(init=False, factory=threading.Event, repr=False)
    # no exit can have been missed since the last subscription (its reconciliation is done)
    _reconciled: threading.Event = attrs.field(init=False, factory=threading.Event, repr=False)
    # the first subscription failed or ended
    _first_attempt_over: threading.Event = attrs.field(init=False, factory=threading.Event, repr=False)
    # set on every subscription, done by the reader on the sync event
    _reconcile_pending: bool = attrs.field(init=False, default=False, repr=False)
    _resync_timeout: float = attrs.field(init=False, default=10.0, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)
    _call: Stream | None = attrs.field(init=False, default=None, repr=False)
    _thread: threading.Thread = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.filters = [f'namespace=={self._namespace},topic=="{t}"' for t in (*BACKEND_TOPICS, self._sync_topic)]
        self._thread = threading.Thread(target=self._run, name=READER_THREAD_NAME, daemon=True)

    def start(self, ready_timeout: float = 2.0) -> bool:
        """Start the reader; return once containerd delivers to it (True) or cannot yet (False).

        Without this barrier the events of a container created right after ``new_client``
        could be published before containerd registered the subscription, and be lost. If
        it times out (a slow daemon), the first subscription is still synced by the resync
        thread, and the processes started meanwhile are reconciled as after a reconnect.
        """
        self._thread.start()
        self._started.wait()
        deadline = time.monotonic() + ready_timeout
        while not self._synced.is_set() and not self._first_attempt_over.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._synced.wait(min(left, 0.02))
        return self._synced.is_set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float | None = None) -> None:
        """Cancel the stream call and join the reader; never waits for a next event."""
        self._closing.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- reader thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._started.set()
        resubscribe = False
        while not self._closing.is_set():
            try:
                self._subscribe_and_read(resubscribe)
            except Exception:  # never let the reader die: log and reconnect
                log.exception("event stream of namespace %s failed", self._namespace)
            self._first_attempt_over.set()
            if self._closing.is_set():
                break
            resubscribe = True
            self._wait_until_serving()
        log.debug("event reader of namespace %s stopped", self._namespace)

    def _subscribe_and_read(self, resubscribe: bool) -> None:
        request = events_pb2.SubscribeRequest(filters=self.filters)
        try:
            call = self._rpc.stream(self._rpc.events.Subscribe, request, "event stream", timeout=None)
        except errdefs.Cancelled:  # channel closed under us
            return
        with self._lock:
            self._call = call
        if self._closing.is_set():
            call.cancel()
            return
        self.subscriptions += 1
        if resubscribe:
            log.info("event stream of namespace %s: containerd is back, resubscribed", self._namespace)
        self._synced.clear()
        self._reconcile_pending = True
        stop_resync = threading.Event()
        resync = threading.Thread(target=self._resync, args=(call, stop_resync), name=RESYNC_THREAD_NAME,
                                  daemon=True)
        resync.start()
        try:
            for envelope in call:
                self._handle(envelope)
            log.warning("event stream of namespace %s ended; reconnecting", self._namespace)
        except errdefs.LibcontainerdError as exc:
            if self._closing.is_set() or isinstance(exc, errdefs.Cancelled):
                if not self._closing.is_set():
                    log.warning("event stream of namespace %s was cancelled; reconnecting", self._namespace)
                return
            log.warning(
                "event stream of namespace %s broke (%s: %s); waiting for containerd",
                self._namespace, exc.code.name if exc.code else type(exc).__name__, exc.explanation,
            )
        finally:
            self._reconciled.clear()
            stop_resync.set()
            resync.join()
            with self._lock:
                self._call = None

    def _resync(self, call: Stream, stop: threading.Event) -> None:
        """Publish to the private topic until the reader sees it; cancel a subscription that never does."""
        request = events_pb2.PublishRequest(topic=self._sync_topic, event=_SYNC_EVENT)
        deadline = time.monotonic() + self._resync_timeout
        while not (self._synced.is_set() or stop.is_set() or self._closing.is_set()):
            if time.monotonic() > deadline:
                log.warning("event stream of namespace %s: containerd did not deliver to the new subscription "
                            "within %s s; subscribing again", self._namespace, self._resync_timeout)
                call.cancel()
                return
            try:
                self._rpc.call(self._rpc.events.Publish, request, "sync event", timeout=0.5)
            except errdefs.LibcontainerdError as exc:
                log.debug("sync publish failed: %s", exc)
                stop.wait(0.1)
            self._synced.wait(0.05)

    def _wait_until_serving(self) -> None:
        down_since = time.monotonic()
        last_warning = -DOWN_WARNING_INTERVAL

        def warn(state: tenacity.RetryCallState) -> None:
            nonlocal last_warning
            now = time.monotonic()
            level = logging.DEBUG  # the attempts between two warnings
            if now - last_warning >= DOWN_WARNING_INTERVAL:
                level, last_warning = logging.WARNING, now
            exc = state.outcome.exception() if state.outcome is not None else None
            why = str(exc) if isinstance(exc, errdefs.LibcontainerdError) else repr(exc)
            log.log(level, "containerd has not served namespace %s for %.1f s (attempt %d: %s); still waiting",
                    self._namespace, now - down_since, state.attempt_number, why,
                    extra={"namespace": self._namespace})

        retrying = tenacity.Retrying(
            wait=tenacity.wait_exponential(multiplier=0.1, min=0.1, max=self._retry_max_wait),
            stop=lambda state: self._closing.is_set(),
            sleep=self._sleep,
            retry=tenacity.retry_if_exception_type(Exception),
            before_sleep=warn,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    if self._closing.is_set():
                        return
                    self._rpc.call(self._rpc.version.Version, empty_pb2.Empty(), "containerd", timeout=1.0)
        except Exception:  # stopped by close()
            return

    def _sleep(self, seconds: float) -> None:
        """tenacity's sleep, cut short by close()."""
        self._closing.wait(seconds)

    def _reconcile(self) -> None:
        """Deliver the exits that happened while no stream was listening.

        A process containerd does not know is looked at again for :data:`RECONCILE_GRACE` s before
        it counts as gone: containerd 2.x serves before it has reconnected to the shims of its
        tasks, and answers NotFound for them until it has.
        """
        pending = self._tracker.running()
        deadline = time.monotonic() + RECONCILE_GRACE
        missing: list[tuple[str, str, int]] = []
        while pending:
            missing = [p for p in pending if not self._look_after_reconnect(*p)]
            if not missing or time.monotonic() >= deadline or self._closing.wait(0.25):
                break
            pending = [p for p in missing if self._tracker.is_running(*p)]
            missing = pending
        if self._closing.is_set():
            return
        for container_id, process_id, pid in missing:
            info = EventInfo(container_id, process_id, pid=pid, exit_code=255,
                             error="the process is gone: containerd no longer knows it after a reconnect")
            if self._dispatch_exit(info):
                log.info("container %s process %s is gone after a reconnect; its exit code is lost",
                         container_id, process_id, extra=self._extra(container_id))
        self._reconciled.set()

    def _look_after_reconnect(self, container_id: str, process_id: str, pid: int) -> bool:
        """Deliver the exit of a process that stopped; False if containerd does not know it."""
        exec_id = "" if process_id == container_id else process_id
        try:
            resp = self._rpc.call(
                self._rpc.tasks.Get,
                tasks_pb2.GetRequest(container_id=container_id, exec_id=exec_id),
                f"container {container_id}",
                timeout=10.0,
            )
        except errdefs.NotFound:
            return False
        except errdefs.LibcontainerdError as exc:
            log.warning("after reconnect, cannot look at %s/%s: %s", container_id, process_id, exc,
                        extra=self._extra(container_id))
            return True
        proc = resp.process
        if proc.status == task_types.STOPPED:
            info = EventInfo(container_id, process_id, pid=proc.pid or pid, exit_code=proc.exit_status,
                             exited_at=timestamp_to_datetime(proc.exited_at))
            log.info("container %s process %s exited while the stream was down (code %d)",
                     container_id, process_id, proc.exit_status, extra=self._extra(container_id))
            self._dispatch_exit(info)
        return True

    def settled(self, container_id: str, process_id: str, pid: int, code: int,
                exited_at: datetime.datetime | None) -> EventInfo:
        """A call (Wait, Delete) learned a process's exit: deliver it if the stream may have missed it.

        Between a break of the stream and the end of the reconciliation after the next
        subscription, containerd's exit event may have gone to no one; and containerd >= 1.7 may
        show a task's exit to a ``Wait`` right after it started and then remove the task, so that
        the reconciliation finds nothing. In that window the exit the call learned is delivered now
        (once). Returns the exit that the backend got or will get, for the caller to return.
        """
        info = EventInfo(container_id, process_id, pid=pid, exit_code=code, exited_at=exited_at)
        if not self._reconciled.is_set() and self._dispatch_exit(info):
            return info
        recorded = self._tracker.exit_of(container_id, process_id, pid, 0.0)
        return info if recorded is None else recorded

    def report_gone(self, container_id: str, process_id: str, pid: int, reason: str) -> EventInfo:
        """Deliver the exit of a process containerd no longer knows, unless the stream delivered one.

        Returns the exit that was delivered for it (the stream's, when it came first): code 255 and
        ``error=reason`` otherwise, as after a reconnect. The backend gets exactly one either way.
        """
        info = EventInfo(container_id, process_id, pid=pid, exit_code=255, error=reason)
        if self._dispatch_exit(info):
            log.info("container %s process %s is gone; its exit code is lost (%s)", container_id, process_id,
                     reason, extra=self._extra(container_id))
            return info
        found = self._tracker.exit_of(container_id, process_id, pid, 0.0)
        return info if found is None else found

    def _handle(self, envelope: Any) -> None:
        if envelope.namespace != self._namespace:
            return
        if envelope.topic == self._sync_topic:
            self._synced.set()
            if self._reconcile_pending:  # the new subscription is registered: nothing can slip by now
                self._reconcile_pending = False
                self._reconcile()
            return
        if not envelope.HasField("event"):
            log.warning("event envelope on topic %s without an event; skipped", envelope.topic,
                        extra={"namespace": self._namespace})
            return
        try:
            event = unpack(envelope.event)
        except errdefs.LibcontainerdError as exc:
            log.warning("event on topic %s skipped: %s", envelope.topic, exc, extra={"namespace": self._namespace})
            return
        translated = translate(envelope.event.type_url, event)
        if translated is None:
            cid = str(getattr(event, "container_id", ""))  # every /tasks/ event of containerd has one
            log.debug("event on topic %s of container %s ignored (%s)", envelope.topic, cid or "-",
                      envelope.event.type_url, extra=self._extra(cid))
            return
        event_type, info = translated
        if event_type is EventType.EXIT:
            self._dispatch_exit(info)
            return
        if event_type in (EventType.START, EventType.EXEC_STARTED):
            self._tracker.started(info.container_id, info.process_id, info.pid)
        self._dispatch(event_type, info)

    def _dispatch_exit(self, info: EventInfo) -> bool:
        if self._tracker.first_exit(info.container_id, info.process_id, info.pid, info):
            self._dispatch(EventType.EXIT, info)
            return True
        return False

    def _dispatch(self, event_type: EventType, info: EventInfo) -> None:
        if self._backend is None:
            return
        try:
            self._executor.submit(info.container_id, functools.partial(self._deliver, event_type, info))
        except RuntimeError:  # executor closed: we are shutting down
            log.debug("event %s of %s dropped: client closing", event_type.value, info.container_id,
                      extra=self._extra(info.container_id))

    def _deliver(self, event_type: EventType, info: EventInfo) -> None:
        assert self._backend is not None
        try:
            self._backend.process_event(info.container_id, event_type, info)
        except Exception:
            log.exception(
                "backend failed to process event %s of container %s: %r", event_type.value, info.container_id, info,
                extra=self._extra(info.container_id),
            )

    def _extra(self, container_id: str) -> dict[str, str]:
        """Log record attributes that let a handler filter by container and namespace."""
        return {"container_id": container_id, "namespace": self._namespace}


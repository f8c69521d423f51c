"""The event reader's decoding, filtering, dedupe and reconcile logic, without a daemon."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf import any_pb2, timestamp_pb2

from libcontainerd import errdefs, testing
from libcontainerd._api.containerd.api.events import task_pb2 as ev
from libcontainerd._api.containerd.api.services.events.v1 import events_pb2
from libcontainerd._api.containerd.api.services.tasks.v1 import tasks_pb2
from libcontainerd._api.containerd.api.types.task import task_pb2 as task_types
from libcontainerd._typeurl import pack_message
from libcontainerd.queue import KeyedSerialExecutor
from libcontainerd.remote._events import EventStream, ProcessTracker, timestamp_to_datetime, translate
from libcontainerd.types import EventInfo
from libcontainerd.types import EventType as E


class FakeConn:
    """Answers Tasks.Get from a table; everything else is unused by these tests."""

    def __init__(self, table: dict[tuple[str, str], Any]) -> None:
        self.table = table
        self.tasks = SimpleNamespace(Get="Get")

    def call(self, method, request, what="", timeout=None):
        answer = self.table[(request.container_id, request.exec_id)]
        if isinstance(answer, Exception):
            raise answer
        return tasks_pb2.GetResponse(process=answer)


def envelope(message, namespace="ns") -> events_pb2.Envelope:
    return events_pb2.Envelope(namespace=namespace, topic="/tasks/x", event=pack_message(message))


@pytest.fixture
def stream():
    backend = testing.RecordingBackend()
    executor = KeyedSerialExecutor(max_workers=2)
    tracker = ProcessTracker()
    s = EventStream(FakeConn({}), "ns", backend, executor, tracker)
    yield s, backend, tracker
    executor.close(timeout=5)


def test_translate_maps_every_task_event_as_moby_does():
    ts = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5_000)
    cases = [
        (ev.TaskCreate(container_id="c", pid=1), E.CREATE, "c", 1),
        (ev.TaskStart(container_id="c", pid=1), E.START, "c", 1),
        (ev.TaskExit(container_id="c", id="e", pid=2, exit_status=3, exited_at=ts), E.EXIT, "e", 2),
        (ev.TaskOOM(container_id="c"), E.OOM, "c", 0),
        (ev.TaskExecAdded(container_id="c", exec_id="e"), E.EXEC_ADDED, "e", 0),
        (ev.TaskExecStarted(container_id="c", exec_id="e", pid=4), E.EXEC_STARTED, "e", 4),
        (ev.TaskPaused(container_id="c"), E.PAUSED, "c", 0),
        (ev.TaskResumed(container_id="c"), E.RESUMED, "c", 0),
    ]
    for message, kind, process_id, pid in cases:
        event_type, info = translate(message.DESCRIPTOR.full_name, message)
        assert (event_type, info.container_id, info.process_id, info.pid) == (kind, "c", process_id, pid)
    _, exit_info = translate("containerd.events.TaskExit", cases[2][0])
    assert exit_info.exit_code == 3
    assert exit_info.exited_at == timestamp_to_datetime(ts)
    assert exit_info.exited_at.tzinfo is not None and exit_info.exited_at.microsecond == 5
    assert translate("containerd.events.TaskDelete", ev.TaskDelete(container_id="c")) is None


def test_bad_envelopes_are_skipped_and_logged(stream, caplog):
    s, backend, _ = stream
    with caplog.at_level(logging.DEBUG, logger="libcontainerd.remote._events"):
        s._handle(events_pb2.Envelope(namespace="ns", topic="/tasks/none"))
        s._handle(events_pb2.Envelope(namespace="ns", topic="/tasks/bad",
                                      event=any_pb2.Any(type_url="containerd.events.TaskExit", value=b"\xff\xff")))
        s._handle(events_pb2.Envelope(namespace="ns", topic="/tasks/odd",
                                      event=any_pb2.Any(type_url="example.com/Unknown", value=b"")))
        s._handle(envelope(ev.TaskDelete(container_id="c")))
        s._handle(envelope(ev.TaskStart(container_id="c", pid=9), namespace="elsewhere"))
        s._handle(envelope(ev.TaskStart(container_id="c", pid=9)))
    s._executor.close(timeout=5)
    assert [(c, t) for c, t, _ in backend.events] == [("c", E.START)]
    text = caplog.text
    assert "without an event" in text and "skipped" in text and "ignored" in text


def test_an_exit_is_delivered_once(stream):
    s, backend, tracker = stream
    tracker.started("c", "c", 9)
    exit_event = ev.TaskExit(container_id="c", id="c", pid=9, exit_status=1)
    s._handle(envelope(exit_event))
    s._handle(envelope(exit_event))
    s._executor.close(timeout=5)
    assert [t for _, t, _ in backend.events] == [E.EXIT]
    assert tracker.running() == []


def test_reconcile_reports_exits_missed_while_disconnected():
    backend = testing.RecordingBackend()
    executor = KeyedSerialExecutor(max_workers=2)
    tracker = ProcessTracker()
    stopped = task_types.Process(pid=11, status=task_types.STOPPED, exit_status=137)
    running = task_types.Process(pid=12, status=task_types.RUNNING)
    conn = FakeConn({("a", ""): stopped, ("b", ""): running, ("b", "x"): errdefs.NotFound("gone"),
                     ("c", ""): errdefs.Unavailable("down")})
    s = EventStream(conn, "ns", backend, executor, tracker)
    tracker.started("a", "a", 11)
    tracker.started("b", "b", 12)
    tracker.started("b", "x", 13)
    tracker.started("c", "c", 14)
    s._reconcile()
    s._reconcile()  # a second reconnect must not repeat them
    s._handle(envelope(ev.TaskExit(container_id="a", id="a", pid=11, exit_status=137)))  # late real event
    executor.close(timeout=5)
    exits = sorted((c, i.process_id, i.exit_code, i.error is not None) for c, t, i in backend.events if t is E.EXIT)
    assert exits == [("a", "a", 137, False), ("b", "x", 255, True)]
    assert sorted(tracker.running()) == [("b", "b", 12), ("c", "c", 14)]


def test_callbacks_never_run_on_the_reader_thread(stream):
    s, backend, _ = stream
    names: list[str] = []
    backend.process_event = lambda *a: names.append(threading.current_thread().name)  # type: ignore[method-assign]
    s._handle(envelope(ev.TaskStart(container_id="c", pid=1)))
    s._executor.close(timeout=5)
    assert names and names[0] != threading.current_thread().name


def test_reconcile_waits_until_the_new_subscription_is_registered():
    """After a resubscribe, exits are looked up only once our own sync event came back on the stream.

    Asked earlier, an exit published before containerd registered the subscription would be
    missed by both the stream and the lookup.
    """
    backend = testing.RecordingBackend()
    executor = KeyedSerialExecutor(max_workers=1)  # one worker: delivery order is submission order across keys
    tracker = ProcessTracker()
    conn = FakeConn({("a", ""): task_types.Process(pid=11, status=task_types.STOPPED, exit_status=3),
                     ("b", ""): task_types.Process(pid=20, status=task_types.RUNNING)})
    s = EventStream(conn, "ns", backend, executor, tracker)
    tracker.started("a", "a", 11)
    s._reconcile_pending = True  # what a resubscribe sets
    s._handle(envelope(ev.TaskStart(container_id="b", pid=20)))
    sync = events_pb2.Envelope(namespace="ns", topic=s._sync_topic, event=pack_message(ev.TaskStart()))
    s._handle(sync)
    s._handle(sync)  # later sync events change nothing
    executor.close(timeout=5)
    assert [(c, t) for c, t, _ in backend.events] == [("b", E.START), ("a", E.EXIT)]
    assert s._synced.is_set() and not s._reconcile_pending


def test_an_exit_without_a_pid_is_the_exit_of_the_process_believed_running():
    # containerd's TaskExit for a task whose shim died says pid 0: it must not make a second exit
    # of the running pid possible (force_delete's report, a reconnect's reconciliation).
    tracker = ProcessTracker()
    tracker.started("web", "web", 42)
    first = EventInfo("web", "web", pid=0, exit_code=255)
    assert tracker.first_exit("web", "web", 0, first)
    assert not tracker.is_running("web", "web", 42)
    assert tracker.exit_of("web", "web", 42, 0.0) is first
    assert not tracker.first_exit("web", "web", 42, EventInfo("web", "web", pid=42, exit_code=255))

"""The event stream against the real private containerd: order, namespaces, restarts, shutdown."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

import libcontainerd
from libcontainerd import errdefs, oci, stdio, testing
from libcontainerd.types import EventType

from ..helpers import lcd_threads, run_once, wait_until

E = EventType


def _gated_spec(rootfs: str, tmp_path: Path, then: str = "") -> tuple[dict[str, Any], Path]:
    """A spec whose process waits until the test creates ``<gate>/go`` (the gate is its /tmp), then runs ``then``."""
    gate = tmp_path / "gate"
    gate.mkdir()
    script = "while [ ! -e /tmp/go ]; do sleep 0.02; done" + (f"; {then}" if then else "")
    return oci.with_mounts(oci.default_spec(rootfs, ["sh", "-c", script]), [oci.bind_mount(gate, "/tmp")]), gate


def test_ordered_events_of_a_container_with_an_exec(client, recorder, rootfs, tmp_path):
    # The main process ends only once the exec has exited (a gate file in a bind mount), so the
    # order asserted below does not depend on how fast a loaded machine runs the exec.
    s, gate = _gated_spec(rootfs, tmp_path)
    ctr = client.new_container("seq", s)
    task = ctr.start()
    p = task.exec("x1", oci.process_spec(["true"]), attach_stdio=stdio.capture())
    assert p.wait(timeout=20).code == 0
    recorder.wait_for("seq", E.EXIT, "x1")
    (gate / "go").touch()
    exit_info = recorder.wait_for("seq", E.EXIT, "seq")
    p.delete()
    task.delete()
    ctr.delete()
    assert recorder.of("seq") == [
        (E.CREATE, "seq"), (E.START, "seq"), (E.EXEC_ADDED, "x1"), (E.EXEC_STARTED, "x1"),
        (E.EXIT, "x1"), (E.EXIT, "seq"),
    ]
    assert exit_info.exit_code == 0
    assert exit_info.pid == task.pid
    assert exit_info.exited_at is not None and exit_info.exited_at.utcoffset().total_seconds() == 0
    assert all(not name.endswith("reader") for name in recorder.threads), "backend ran on the reader thread"


def test_paused_and_resumed_events(client, recorder, rootfs):
    ctr = client.new_container("pr", oci.default_spec(rootfs, ["sleep", "300"]))
    task = ctr.start()
    task.pause()
    recorder.wait_for("pr", E.PAUSED)
    task.resume()
    recorder.wait_for("pr", E.RESUMED)
    task.force_delete()
    ctr.delete()
    recorder.wait_for("pr", E.EXIT)  # the exit event may still be on its way to the backend
    kinds = [t for t, _ in recorder.of("pr")]
    assert kinds.index(E.PAUSED) < kinds.index(E.RESUMED) < kinds.index(E.EXIT)


def test_oom_event(client, recorder, rootfs, tmp_path):
    # The shim watches for OOM only once its Start returned (containerd's runc shim adds the cgroup
    # to its OOM monitor after starting the process): allocate only after that, or, on a loaded
    # machine, the kill can come first and containerd never publishes a TaskOOM.
    s, gate = _gated_spec(rootfs, tmp_path, then="dd if=/dev/zero of=/dev/null bs=128M count=1")
    s["linux"].setdefault("resources", {})["memory"] = {"limit": 16 << 20, "swap": 16 << 20}
    ctr = client.new_container("oom", s)
    task = ctr.start()
    (gate / "go").touch()
    assert task.wait(timeout=30).code == 137
    recorder.wait_for("oom", E.OOM)
    recorder.wait_for("oom", E.EXIT)
    task.delete()
    ctr.delete()


def test_backend_exceptions_are_logged_and_delivery_goes_on(client, recorder, rootfs, caplog):
    def explode(cid, event_type, info):
        if event_type is E.CREATE:
            raise RuntimeError("backend bug")

    recorder.hook = explode
    with caplog.at_level(logging.ERROR, logger="libcontainerd"):
        run_once(client, recorder, rootfs, "boom")
    assert [t for t, _ in recorder.of("boom")] == [E.START, E.EXIT]
    failures = [r for r in caplog.records if r.exc_info and "backend bug" in str(r.exc_info[1])]
    assert failures, caplog.text
    message = failures[0].getMessage()
    assert "backend failed" in message and "boom" in message and "create" in message
    # A prompt user's log handler can tell which container and namespace it was.
    assert failures[0].name.startswith("libcontainerd")
    assert (failures[0].container_id, failures[0].namespace) == ("boom", client.namespace)


def _unique(prefix: str) -> str:
    """A namespace of this run only: runc keeps its state machine-wide, under /run/containerd/runc/<ns>/<id>."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_events_of_another_namespace_never_arrive(containerd, rootfs, state_dir, namespace, recorder):
    other = testing.RecordingBackend()
    with libcontainerd.new_client(containerd.address, state_dir, namespace + "-one", recorder) as one, \
            libcontainerd.new_client(containerd.address, state_dir + "-two", namespace + "-two", other) as two:
        try:
            run_once(one, recorder, rootfs, "lonely")
            with pytest.raises(libcontainerd.errdefs.NotFound):
                two.load_container("lonely")
            assert other.events == []
        finally:
            testing.remove_containers(one)
            testing.remove_containers(two)
    os.rmdir(state_dir + "-two")


def test_close_is_quick_and_leaves_no_thread(containerd, state_dir, namespace, recorder):
    baseline = lcd_threads()
    c = libcontainerd.new_client(containerd.address, state_dir, namespace, recorder)
    assert "libcontainerd-events-reader" in lcd_threads()
    time.sleep(0.2)  # the stream is idle: close must not wait for a next event
    started = time.monotonic()
    c.close()
    elapsed = time.monotonic() - started
    # Waiting for a next event would hang forever; a few seconds only mean a loaded machine.
    assert elapsed < 5.0, f"close took {elapsed:.2f} s"
    wait_until(lambda: lcd_threads() == baseline, timeout=10)
    assert lcd_threads() == baseline
    c.close()  # idempotent
    assert "closed" in repr(c)


def test_close_from_a_backend_callback(containerd, rootfs, state_dir, namespace):
    rec = testing.RecordingBackend()
    closed = threading.Event()
    c = libcontainerd.new_client(containerd.address, state_dir, namespace, rec)

    def close_on_start(cid, event_type, info):
        if event_type is E.START:
            c.close()
            closed.set()

    rec.hook = close_on_start
    ctr = c.new_container("selfclose", oci.default_spec(rootfs, ["sleep", "300"]))
    try:
        ctr.start()
    except errdefs.Cancelled:
        pass  # containerd 2.x publishes TaskStart before it answers Start: the close may beat the answer
    assert closed.wait(10), "close() from a callback deadlocked"
    assert c.closed
    with libcontainerd.new_client(containerd.address, state_dir, namespace, None) as again:
        testing.remove_containers(again)
    deadline = time.monotonic() + 10
    while any(n.startswith("libcontainerd-events-") for n in lcd_threads()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(n == "libcontainerd-events-reader" for n in lcd_threads())


def test_interpreter_with_an_open_client_exits_promptly(containerd, rootfs, state_dir, namespace):
    code = textwrap.dedent(f"""
        import libcontainerd
        from libcontainerd import oci
        c = libcontainerd.new_client({containerd.address!r}, {state_dir!r}, {namespace!r}, None)
        ctr = c.new_container("lingering", oci.default_spec({rootfs!r}, ["sleep", "300"]))
        ctr.start()
        print("started", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # import, connect, create and start: however long a loaded machine takes
        started = time.monotonic()
        out, err = proc.communicate(timeout=30)
        exit_took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert first + out == "started\n"
    assert "Traceback" not in err and "Exception" not in err
    assert exit_took < 10, f"the interpreter took {exit_took:.1f} s to exit with an open client"
    with libcontainerd.new_client(containerd.address, state_dir, namespace, None) as c:
        assert testing.remove_containers(c) == ["lingering"]


def test_survives_a_containerd_restart_and_reports_missed_exits(rootfs):
    tmp = tempfile.mkdtemp(prefix="lcd-r-")
    daemon = testing.start_daemon(tmp, health_failures=0)
    rec = testing.RecordingBackend()
    state = os.path.join(tmp, "client-state")
    try:
        with libcontainerd.new_client(daemon.address, state, _unique("restart"), rec, timeout=30) as c:
            keeper = c.new_container("keeper", oci.default_spec(rootfs, ["sleep", "300"]))
            keeper_task = keeper.start()
            victim = c.new_container("victim", oci.default_spec(rootfs, ["sleep", "300"]))
            victim_task = victim.start()
            rec.wait_for("victim", E.START)
            old_pid = daemon.pid
            subscriptions = c._events.subscriptions

            os.kill(old_pid, signal.SIGKILL)
            os.kill(victim_task.pid, signal.SIGKILL)  # exits while containerd is down

            deadline = time.monotonic() + 60
            while (daemon.pid == old_pid or c._events.subscriptions == subscriptions) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert daemon.pid != old_pid, "the supervisor did not restart containerd"
            exit_info = rec.wait_for("victim", E.EXIT, timeout=60)
            if daemon.release.reaps_tasks_that_died_while_down:  # the real code is gone for every client
                assert (exit_info.exit_code, bool(exit_info.error)) == (255, True)
            else:
                assert (exit_info.exit_code, exit_info.error) == (137, None)
            assert victim_task.wait(timeout=30).code == exit_info.exit_code

            late = c.new_container("late", oci.default_spec(rootfs, ["true"]))
            late_task = late.start()
            rec.wait_for("late", E.EXIT, timeout=30)
            assert [t for t, _ in rec.of("late")][:2] == [E.CREATE, E.START]

            assert keeper_task.status() is libcontainerd.Status.RUNNING
            assert [t for t, _ in rec.of("victim")].count(E.EXIT) == 1
            assert late_task.delete().code == 0
            assert victim_task.delete().code == exit_info.exit_code  # also where containerd removed the task
            keeper_task.force_delete()
            for ctr in (late, victim, keeper):
                ctr.delete()
            time.sleep(0.5)
            assert [t for t, _ in rec.of("victim")].count(E.EXIT) == 1
    finally:
        daemon.stop()
        testing.cleanup_root(daemon)
        subprocess.run(["rm", "-rf", tmp], check=False)


class _Cancelled(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "cancelled before it was made"


class _LateCall:
    """A Subscribe call that containerd registers only ``delay`` s after it returned (as on a loaded machine)."""

    def __init__(self, real, request, metadata, delay):
        self._args = (real, request, metadata)
        self._delay = delay
        self._cancelled = threading.Event()
        self._call = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._call is None:
            if self._cancelled.wait(self._delay):
                raise _Cancelled()
            real, request, metadata = self._args
            self._call = real(request, metadata=metadata)
            if self._cancelled.is_set():
                self._call.cancel()
        return next(self._call)

    def cancel(self):
        self._cancelled.set()
        if self._call is not None:
            self._call.cancel()


def _short_task_reports_its_exit(c, rec, rootfs, cid, code):
    """A task that lives a moment: its exit reaches the backend once, whatever the stream was doing."""
    ctr = c.new_container(cid, oci.default_spec(rootfs, ["sh", "-c", f"exit {code}"]))
    task = ctr.start()
    assert task.wait(timeout=30).code == code
    assert rec.wait_for(cid, E.EXIT, timeout=30).exit_code == code
    task.delete()
    ctr.delete()
    assert [t for t, _ in rec.of(cid)].count(E.EXIT) == 1


def test_an_exit_before_a_late_resubscription_is_registered_is_not_lost(rootfs):
    """containerd comes back; the new subscription is registered late; a task runs and exits before that."""
    tmp = tempfile.mkdtemp(prefix="lcd-late-")
    daemon = testing.start_daemon(tmp, health_failures=0)
    rec = testing.RecordingBackend()
    try:
        state = os.path.join(tmp, "state")
        with libcontainerd.new_client(daemon.address, state, _unique("late"), rec, timeout=30) as c:
            events = c._session.conn.events
            real = events.Subscribe
            events.Subscribe = lambda request, metadata=None, **_: _LateCall(real, request, metadata, 1.5)
            subscriptions, old_pid = c._events.subscriptions, daemon.pid
            os.kill(old_pid, signal.SIGKILL)
            # The reader's (late) Subscribe call is made at once; the new containerd comes up when
            # the supervisor notices: wait for both.
            assert wait_until(lambda: c._events.subscriptions > subscriptions, timeout=60, interval=0.01)
            assert daemon.wait_for_restarts(1, timeout=60) and daemon.pid != old_pid
            assert c.is_serving(timeout=60)  # this client's channel may still be in its reconnect backoff
            # The reader has made its new Subscribe call; containerd will not hear of it for 1.5 s.
            _short_task_reports_its_exit(c, rec, rootfs, "quick", 7)
    finally:
        daemon.stop()
        testing.cleanup_root(daemon)
        subprocess.run(["rm", "-rf", tmp], check=False)


def test_an_exit_before_a_late_first_subscription_is_registered_is_not_lost(containerd, rootfs, state_dir,
                                                                              namespace, monkeypatch):
    """new_client gives up waiting for a slow subscription after 2 s; what runs meanwhile still reports its exit."""
    from libcontainerd.remote import _rpc

    class LateStub(_rpc.events_pb2_grpc.EventsStub):
        def __init__(self, channel):
            super().__init__(channel)
            real = self.Subscribe
            self.Subscribe = lambda request, metadata=None, **_: _LateCall(real, request, metadata, 3.5)

    monkeypatch.setattr(_rpc.events_pb2_grpc, "EventsStub", LateStub)
    rec = testing.RecordingBackend()
    with libcontainerd.new_client(containerd.address, state_dir, namespace, rec, timeout=30) as c:
        assert not c._events._synced.is_set()  # returned after its 2 s, before containerd registered it
        _short_task_reports_its_exit(c, rec, rootfs, "early", 9)


def test_new_client_returns_with_a_live_subscription(containerd, rootfs, state_dir, namespace):
    """Events of a container made right after new_client are not lost to a late subscription."""
    for attempt in range(5):
        rec = testing.RecordingBackend()
        with libcontainerd.new_client(containerd.address, state_dir, namespace, rec) as c:
            assert c._events._synced.is_set()
            run_once(c, rec, rootfs, f"first-{attempt}")
        assert [t for t, _ in rec.of(f"first-{attempt}")] == [E.CREATE, E.START, E.EXIT]


def test_new_client_to_a_dead_address_returns_quickly(state_dir, namespace):
    started = time.monotonic()
    with libcontainerd.new_client(os.path.join(state_dir, "nothing.sock"), state_dir, namespace,
                                  testing.RecordingBackend()) as c:
        assert not c._events._synced.is_set()
    assert time.monotonic() - started < 5


def test_ctr_events_decodes_the_sync_event_of_every_client(containerd, state_dir, namespace):
    """Every client publishes a sync event into its namespace; `ctr events` (containerd's own decoder, of
    the containerd under test) must decode it instead of warning "cannot unmarshal an event"."""
    testing.require_tools("ctr")
    ctr = subprocess.Popen([str(testing.containerd_tool("ctr")), "--address", containerd.address, "--namespace",
                            namespace, "events"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    readers = [threading.Thread(target=lambda s=s: lines.extend(s), name=f"test-ctr-{n}", daemon=True)
               for n, s in (("out", ctr.stdout), ("err", ctr.stderr))]
    for r in readers:
        r.start()
    try:
        # ctr's subscription may register after a client's sync: connect clients until ctr shows one.
        def a_client_synced() -> bool:
            with libcontainerd.new_client(containerd.address, state_dir, namespace, None):
                pass
            return any("/libcontainerd/sync/" in line or "unmarshal" in line for line in lines)

        assert wait_until(a_client_synced, timeout=30)
    finally:
        ctr.terminate()
        ctr.wait(timeout=30)
        for r in readers:
            r.join(timeout=30)
    assert not [line for line in lines if "unmarshal" in line], lines
    assert [line for line in lines if "/libcontainerd/sync/" in line and line.rstrip().endswith("{}")], lines

"""Blocking calls and events across containerd restarts, on every containerd of the matrix.

A service's threads sit in ``wait()`` for hours while containerd is upgraded and restarted under
them; its shims and containers live on. These tests kill the private daemon again and again
(the supervisor restarts it) while containers with known exit codes start and end.

containerd 1.6 keeps the exit of a task that died while it was down; 1.7 and later remove such a
task when they start, so its real code is gone for every client: the SDK then reports code 255
with ``info.error`` saying why (API.md). The tests assert the real code where the release keeps it.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import uuid
from collections.abc import Iterator

import pytest

import libcontainerd
from libcontainerd import errdefs, oci, stdio, supervisor, testing
from libcontainerd.types import EventType, ExitStatus

RESTARTS = 20


@pytest.fixture
def own_daemon() -> Iterator[supervisor.Daemon]:
    with testing.PrivateContainerd("lcd-storm-", health_failures=0) as daemon:
        yield daemon


def _restart(daemon: supervisor.Daemon) -> None:
    count, old = daemon.restarts, daemon.pid
    daemon.kill(signal.SIGKILL)
    assert daemon.wait_for_restarts(count + 1, timeout=60) and daemon.pid != old, "containerd did not come back"


def _check_exit(release: supervisor.ContainerdRelease, cid: str, expected: int, got: ExitStatus,
                rec: testing.RecordingBackend) -> None:
    """The exit wait() returned is the one the backend got, once; real unless the release lost it."""
    infos = [i for c, t, i in rec.events if c == cid and t is EventType.EXIT]
    assert len(infos) == 1, f"{cid}: {len(infos)} EXIT events"
    info = infos[0]
    assert info.exit_code == got.code
    if got.code != expected:
        assert release.reaps_tasks_that_died_while_down, f"{cid}: code {got.code}, not {expected}, on {release}"
        assert got.code == 255 and info.error, f"{cid}: a lost exit must be 255 with a reason, got {info}"


def test_waits_ride_a_storm_of_restarts_and_every_exit_arrives_once(own_daemon, rootfs):
    """20 SIGKILLs of containerd while containers with known codes end: every wait() returns, every
    EXIT reaches the backend once, and no call made after containerd is back fails."""
    daemon, rec = own_daemon, testing.RecordingBackend()
    rnd = random.Random(1234)
    state = os.path.join(os.path.dirname(daemon.root_dir), "client-state")
    ns = f"storm-{uuid.uuid4().hex[:8]}"
    results: dict[str, object] = {}
    expected: dict[str, int] = {}
    tasks: dict[str, libcontainerd.Task] = {}
    waiters: list[threading.Thread] = []

    def waiter(task: libcontainerd.Task) -> None:
        try:
            results[task.id] = task.wait(timeout=300)
        except BaseException as exc:  # recorded and asserted below
            results[task.id] = exc

    def launch(c: libcontainerd.Client, cid: str, seconds: float, code: int) -> None:
        ctr = c.new_container(cid, oci.default_spec(rootfs, ["sh", "-c", f"sleep {seconds}; exit {code}"]))
        tasks[cid] = ctr.start()
        expected[cid] = code
        thread = threading.Thread(target=waiter, args=(tasks[cid],), name=f"wait-{cid}")
        thread.start()
        waiters.append(thread)

    with libcontainerd.new_client(daemon.address, state, ns, rec, timeout=60) as c:
        for i in range(8):  # long-lived: they end somewhere in the storm
            launch(c, f"long{i}", round(1 + 2.5 * i, 1), 10 + i)
        for k in range(RESTARTS):
            _restart(daemon)
            # containerd serves again: a call made now must not fail on this client's stale channel.
            assert c.version().version
            launch(c, f"short{k}", round(rnd.uniform(0.05, 1.5), 2), 100 + k)
            threading.Event().wait(rnd.uniform(0.1, 0.8))
        for thread in waiters:
            thread.join(120)
        assert not [t.name for t in waiters if t.is_alive()], "wait() calls still blocked"
        failed = {cid: r for cid, r in results.items() if not isinstance(r, ExitStatus)}
        assert not failed, f"wait() raised: {failed}"
        for cid in expected:
            rec.wait_for(cid, EventType.EXIT, timeout=60)
        for cid, code in expected.items():
            status = results[cid]
            assert isinstance(status, ExitStatus)
            _check_exit(daemon.release, cid, code, status, rec)
            # delete() returns what wait() returned, also for a task containerd removed meanwhile
            assert tasks[cid].delete() == status
            tasks[cid].container.delete()
        lost = sorted(cid for cid, code in expected.items() if results[cid].code != code)  # type: ignore[union-attr]
        if not daemon.release.reaps_tasks_that_died_while_down:
            assert not lost
        print(f"containerd {daemon.release}: {len(expected)} containers, {RESTARTS} restarts, "
              f"exit codes lost by containerd: {len(lost)}")


def test_a_wait_in_flight_returns_the_exit_after_a_restart(own_daemon, rootfs):
    """A wait() in flight when containerd is SIGKILLed returns the exit, not ``Unavailable``."""
    daemon, rec = own_daemon, testing.RecordingBackend()
    state = os.path.join(os.path.dirname(daemon.root_dir), "client-state")
    with libcontainerd.new_client(daemon.address, state, f"inflight-{uuid.uuid4().hex[:8]}", rec, timeout=60) as c:
        ctr = c.new_container("w", oci.default_spec(rootfs, ["sh", "-c", "read x; exit 3"]))
        feed, gate = os.pipe()
        with os.fdopen(feed, "rb") as stdin:
            task = ctr.start(with_stdin=True, attach_stdio=stdio.attach(stdin=stdin))
            box: list[object] = []
            thread = threading.Thread(target=lambda: box.append(_wait_or_error(task, 120)))
            thread.start()
            rec.wait_for("w", EventType.START)
            _restart(daemon)
            assert c.version().version  # no stale-connection failure once containerd serves
            os.close(gate)  # EOF on the process's stdin: it exits now, after the restart, with its real code
            thread.join(120)
            assert box and isinstance(box[0], ExitStatus) and box[0].code == 3, box
            assert task.delete().code == 3
        assert rec.wait_for("w", EventType.EXIT).exit_code == 3
        ctr.delete()


def _wait_or_error(task: libcontainerd.Task, timeout: float) -> object:
    try:
        return task.wait(timeout=timeout)
    except errdefs.LibcontainerdError as exc:
        return exc


def test_a_call_while_containerd_is_down_still_fails_fast(own_daemon, rootfs):
    daemon = own_daemon
    state = os.path.join(os.path.dirname(daemon.root_dir), "client-state")
    with libcontainerd.new_client(daemon.address, state, f"down-{uuid.uuid4().hex[:8]}", None, timeout=60) as c:
        assert c.version().version
        daemon.stop()
        with pytest.raises(errdefs.Unavailable):
            c.version()
        with pytest.raises(errdefs.Unavailable):
            c.load_container("nope")


def test_is_serving_waits_for_a_containerd_that_was_just_killed(own_daemon):
    """is_serving(timeout) right after containerd died waits for the restarted one, as its docstring says.

    The first call goes out on the connection that containerd's death is just breaking and fails with
    UNAVAILABLE ("Stream removed", "Connection reset"), which gRPC's wait_for_ready does not retry.
    """
    daemon = own_daemon
    state = os.path.join(os.path.dirname(daemon.root_dir), "client-state")
    with libcontainerd.new_client(daemon.address, state, f"srv-{uuid.uuid4().hex[:8]}", None, timeout=60) as c:
        for _ in range(3):
            assert c.version().version
            count = daemon.restarts
            daemon.kill(signal.SIGKILL)
            assert c.is_serving(timeout=60), "is_serving gave up while containerd was being restarted"
            assert daemon.wait_for_restarts(count + 1, timeout=60)

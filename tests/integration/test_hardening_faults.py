"""Faults injected into a real containerd of this module's own: the client must survive each one.

Each test breaks containerd in one way -- SIGKILL during ``start``, during ``exec``, while a task streams
stdout, while idle; SIGSTOP so calls hang; its socket removed; a shim killed under a running task -- and
then checks, with the same client object: it serves again, events flow, a whole lifecycle works, the
state dir holds only bundles of live containers, and after ``close()`` no libcontainerd thread is left.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator

import pytest

import libcontainerd
from libcontainerd import _procfs, errdefs, oci, stdio, testing
from libcontainerd.remote import _checkpoint, _events
from libcontainerd.types import EventType as E
from libcontainerd.types import ExitStatus, Status

from ..helpers import (
    PrivateDaemon,
    assert_state_dir_matches,
    lifecycle_works,
    reap_orphan_shim,
    run_in_thread,
    shims,
    spec,
    wait_for_threads,
    wait_until,
)

#: Shims that containerd itself lost track of when it was killed mid-start (see the test).
ORPHANED_SHIMS: list[int] = []


@pytest.fixture(scope="module")
def daemon() -> Iterator[PrivateDaemon]:
    d = PrivateDaemon()
    try:
        yield d
    finally:
        d.close()


class Harness:
    def __init__(self, daemon: PrivateDaemon, state_dir: str, namespace: str, timeout: float = 20.0) -> None:
        self.daemon = daemon
        self.recorder = testing.RecordingBackend()
        self.baseline = threading.enumerate()
        self.client = libcontainerd.new_client(daemon.address, state_dir, namespace, self.recorder, timeout=timeout)

    def recovered(self, rootfs: str, cid: str = "after") -> None:
        """The same client serves, streams events and runs a lifecycle; the state dir is consistent."""
        assert self.client.is_serving(timeout=60)
        lifecycle_works(self.client, self.recorder, rootfs, cid)
        assert_state_dir_matches(self.client)


@pytest.fixture
def h(daemon: PrivateDaemon, state_dir: str, namespace: str) -> Iterator[Harness]:
    harness = Harness(daemon, state_dir, namespace)
    try:
        yield harness
    finally:
        daemon.thaw()
        c = harness.client
        assert c.is_serving(timeout=60)
        testing.remove_containers(c)
        c.close()
        assert wait_until(lambda: not shims(daemon.daemon, namespace), timeout=20), \
            f"shims outlived their containers: {shims(daemon.daemon, namespace)}"
        left = wait_for_threads(harness.baseline)
        assert not left, f"threads left after close(): {left}"
        assert os.listdir(state_dir) == [], f"state dir not empty: {os.listdir(state_dir)}"


def _wait_for_fifos(bundle: str, process_id: str) -> None:
    assert wait_until(lambda: os.path.exists(os.path.join(bundle, f"{process_id}-stdout")), timeout=10)


def test_containerd_killed_during_start(daemon, h, rootfs):
    """Create hangs on a frozen daemon, which is then SIGKILLed: start fails typed, releases its FIFOs."""
    c = h.client
    ctr = c.new_container("k-start", spec(rootfs, "echo", "again"))
    bundle = os.path.join(c.state_dir, "k-start")
    daemon.freeze()
    try:
        t, box = run_in_thread(ctr.start, attach_stdio=stdio.capture())
        _wait_for_fifos(bundle, "k-start")
        time.sleep(0.2)  # let the Create request reach the frozen daemon's socket
    finally:
        daemon.kill()
    t.join(30)
    assert not t.is_alive(), "start() hung after containerd died"
    assert isinstance(box.get("error"), (errdefs.Unavailable, errdefs.Unknown)), box
    assert os.listdir(bundle) == [], "the failed start left FIFOs behind"
    assert c.is_serving(timeout=60)
    with pytest.raises(errdefs.NotFound):
        ctr.task()
    out = stdio.capture()
    task = ctr.start(attach_stdio=out)
    assert task.wait(timeout=30).code == 0
    assert out.wait(timeout=30).stdout == b"again\n"
    h.recorder.wait_for("k-start", E.EXIT)
    task.delete()
    ctr.delete()
    h.recovered(rootfs)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.4])
def test_containerd_killed_at_any_point_of_start(daemon, h, rootfs, delay):
    """SIGKILL at a random moment of start(): whatever the outcome, the client can finish or clean up."""
    c = h.client
    ctr = c.new_container("k-any", spec(rootfs, "sleep", "300"))
    t, box = run_in_thread(ctr.start, attach_stdio=stdio.capture())
    time.sleep(delay)
    daemon.kill()
    t.join(60)
    assert not t.is_alive(), "start() hung after containerd died"
    if "error" in box:
        assert isinstance(box["error"], errdefs.LibcontainerdError), box
    assert c.is_serving(timeout=60)
    task = box.get("result")  # the started task holds the stdio: delete through it
    if task is None:
        try:
            task = ctr.task()
        except errdefs.NotFound:
            assert not [n for n in os.listdir(os.path.join(c.state_dir, "k-any")) if "-std" in n]
    if task is not None:
        task.force_delete()
    ctr.delete()
    # containerd killed after it spawned the shim but before it recorded the task forgets that shim for good
    # (it is not in its state after the restart): containerd's leak, not the client's. Count and reap it.
    if not wait_until(lambda: not shims(daemon.daemon, c.namespace, "k-any"), timeout=10):
        ORPHANED_SHIMS.extend(shims(daemon.daemon, c.namespace, "k-any"))
        for pid in shims(daemon.daemon, c.namespace, "k-any"):
            reap_orphan_shim(pid, c.namespace, "k-any", daemon.daemon.runc_root)
    h.recovered(rootfs)


def test_containerd_killed_during_exec(daemon, h, rootfs):
    c = h.client
    ctr = c.new_container("k-exec", spec(rootfs, "sleep", "300"))
    task = ctr.start()
    bundle = ctr.bundle_dir
    daemon.freeze()
    try:
        t, box = run_in_thread(task.exec, "ex1", oci.process_spec(["echo", "x"]), attach_stdio=stdio.capture())
        _wait_for_fifos(bundle, "ex1")
        time.sleep(0.2)
    finally:
        daemon.kill()
    t.join(60)
    assert not t.is_alive(), "exec() hung after containerd died"
    assert isinstance(box.get("error"), (errdefs.Unavailable, errdefs.Unknown)), box
    assert [n for n in os.listdir(bundle) if n.startswith("ex1-")] == [], "the failed exec left FIFOs behind"
    assert c.is_serving(timeout=60)
    assert task.status() is Status.RUNNING, "the task did not survive containerd's death"
    out = stdio.capture()
    proc = task.exec("ex1", oci.process_spec(["echo", "second try"]), attach_stdio=out)
    assert proc.wait(timeout=30).code == 0
    assert out.wait(timeout=30).stdout == b"second try\n"
    h.recorder.wait_for("k-exec", E.EXIT, process_id="ex1")
    proc.delete()
    task.kill(signal.SIGKILL)
    assert task.wait(timeout=30).code == 137
    h.recorder.wait_for("k-exec", E.EXIT, process_id="k-exec")
    task.delete()
    ctr.delete()
    h.recovered(rootfs)


def test_containerd_killed_while_streaming_stdout(daemon, h, rootfs):
    """Output keeps flowing while containerd is dead; the exit is reported once it is back."""
    c = h.client
    sink = testing.CountingSink()
    ctr = c.new_container("k-stream", spec(rootfs, "sh", "-c", "while true; do echo tick; usleep 2000; done"))
    task = ctr.start(attach_stdio=stdio.attach(stdout=sink))
    assert wait_until(lambda: sink.count > 100, timeout=20)
    restarts = daemon.daemon.restarts
    os.kill(daemon.pid, signal.SIGKILL)
    before = sink.count
    assert wait_until(lambda: sink.count > before + 100, timeout=20), "stdout stopped with containerd"
    assert daemon.daemon.wait_for_restarts(restarts + 1, timeout=60)
    assert c.is_serving(timeout=60)
    during = sink.count
    assert wait_until(lambda: sink.count > during + 100, timeout=20)
    task.kill(signal.SIGKILL)
    assert task.wait(timeout=30).code == 137
    assert task.io.wait(timeout=30) is task.io
    assert h.recorder.wait_for("k-stream", E.EXIT, timeout=30).exit_code == 137
    task.delete()
    ctr.delete()
    assert [t for t, _ in h.recorder.of("k-stream")].count(E.EXIT) == 1
    h.recovered(rootfs)


def test_containerd_killed_while_idle(daemon, h, rootfs):
    c = h.client
    ctr = c.new_container("k-idle", spec(rootfs, "sleep", "300"))
    task = ctr.start()
    h.recorder.wait_for("k-idle", E.START)
    for _ in range(2):  # twice in a row: the second restart is made with the supervisor's backoff
        daemon.kill()
    assert c.is_serving(timeout=60)
    assert task.status() is Status.RUNNING
    task.kill("KILL")
    assert task.wait(timeout=30).code == 137
    assert h.recorder.wait_for("k-idle", E.EXIT, timeout=30).exit_code == 137
    task.delete()
    ctr.delete()
    h.recovered(rootfs)


def test_frozen_containerd_gives_deadline_then_works_again(daemon, state_dir, namespace, rootfs):
    baseline = threading.enumerate()
    rec = testing.RecordingBackend()
    # A generous default for the work around the freeze (a loaded machine can take seconds to
    # create a task); the short deadline only while containerd is frozen.
    c = libcontainerd.new_client(daemon.address, state_dir, namespace, rec, timeout=60)
    try:
        ctr = c.new_container("frozen", spec(rootfs, "sleep", "300"))
        task = ctr.start()
        rec.wait_for("frozen", E.START)
        daemon.freeze()
        c.timeout = 1.5
        try:
            asked = time.monotonic()
            with pytest.raises(errdefs.Deadline):
                c.version()
            assert time.monotonic() - asked < 30, "the call kept the client's old 60 s deadline"
            with pytest.raises(errdefs.Deadline):
                task.status()
            with pytest.raises(errdefs.Deadline):
                task.wait(timeout=1.0)
            with pytest.raises(errdefs.Deadline):
                c.list_containers()
            with pytest.raises(errdefs.Deadline):
                c.new_container("ghost", spec(rootfs, "true"))
            assert not os.path.exists(os.path.join(state_dir, "ghost")), "a timed-out create left its bundle"
            with pytest.raises(errdefs.Deadline):
                task.exec("ghost-exec", {"args": ["true"], "cwd": "/"}, attach_stdio=stdio.capture())
            assert [n for n in os.listdir(ctr.bundle_dir) if n.startswith("ghost-exec")] == []
            assert c.is_serving(timeout=1.0) is False
        finally:
            daemon.thaw()
            c.timeout = 60
        assert c.is_serving(timeout=30)
        assert c.version().version
        assert task.status() is Status.RUNNING
        # The create sent to the frozen daemon may have been done after the thaw: it is an ordinary container.
        ids = {x.id for x in c.list_containers()}
        assert ids <= {"frozen", "ghost"}
        task.kill(signal.SIGKILL)
        assert task.wait(timeout=30).code == 137
        rec.wait_for("frozen", E.EXIT)
        testing.remove_containers(c)
        assert os.listdir(state_dir) == []
        lifecycle_works(c, rec, rootfs, "thawed")
    finally:
        daemon.thaw()
        testing.remove_containers(c)
        c.close()
    assert wait_for_threads(baseline) == []


def test_socket_gone_before_connecting_then_recreated(daemon, state_dir, namespace, rootfs):
    """No socket: Unavailable (nothing made); the socket comes back: the same client recovers."""
    baseline = threading.enumerate()
    rec = testing.RecordingBackend()
    moved = daemon.address + ".moved"
    os.rename(daemon.address, moved)
    restored = False
    try:
        c = libcontainerd.new_client(daemon.address, state_dir, namespace, rec, timeout=5)
        try:
            assert c.is_serving(timeout=1) is False
            with pytest.raises(errdefs.Unavailable):
                c.version()
            with pytest.raises(errdefs.Unavailable):
                c.new_container("nosock", spec(rootfs, "true"))
            assert os.listdir(state_dir) == []
            os.rename(moved, daemon.address)
            restored = True
            c.timeout = 60  # 5 s bounds the calls without a socket; a create under load may take longer
            assert c.is_serving(timeout=30)
            assert wait_until(lambda: c._events.subscriptions >= 1, timeout=30)
            lifecycle_works(c, rec, rootfs, "sock-back")
        finally:
            testing.remove_containers(c) if restored else None
            c.close()
    finally:
        if not restored:
            os.rename(moved, daemon.address)
    assert wait_for_threads(baseline) == []


def test_socket_removed_with_daemon_down_then_restarted(daemon, h, rootfs):
    """containerd stops and its socket is removed: calls are Unavailable; after a restart all works again."""
    c = h.client
    ctr = c.new_container("s-down", spec(rootfs, "sleep", "300"))
    task = ctr.start()
    h.recorder.wait_for("s-down", E.START)
    daemon.daemon.stop()
    if os.path.exists(daemon.address):
        os.unlink(daemon.address)
    try:
        with pytest.raises(errdefs.Unavailable):
            c.version()
        with pytest.raises(errdefs.Unavailable):
            task.status()
        with pytest.raises(errdefs.Unavailable):
            c.new_container("s-none", spec(rootfs, "true"))
        assert sorted(os.listdir(c.state_dir)) == ["s-down"]
        os.kill(task.pid, signal.SIGKILL)  # exits while nobody listens
    finally:
        daemon.restart()
    assert c.is_serving(timeout=60)
    info = h.recorder.wait_for("s-down", E.EXIT, timeout=60)
    if daemon.daemon.release.reaps_tasks_that_died_while_down:  # the real code is gone for every client
        assert (info.exit_code, bool(info.error)) == (255, True)
    else:
        assert (info.exit_code, info.error) == (137, None)
    status = task.wait(timeout=30)
    assert status.code == info.exit_code
    assert task.delete() == status
    ctr.delete()
    h.recovered(rootfs)


def test_shim_killed_under_a_running_task(daemon, h, rootfs, namespace):
    """containerd cleans up after a dead shim: the exit reaches the backend, wait() ends, nothing leaks."""
    c = h.client
    fds = testing.open_fds()
    out = stdio.capture()
    ctr = c.new_container("shimless", spec(rootfs, "sh", "-c", "echo up; exec sleep 300"))
    task = ctr.start(attach_stdio=out)
    h.recorder.wait_for("shimless", E.START)
    # START can come before the shell wrote, or before the shim copied it to our FIFO.
    assert wait_until(lambda: out.stdout == b"up\n", timeout=30), out.stdout
    shim = daemon.shim_pid(namespace, "shimless")
    os.kill(shim, signal.SIGKILL)
    info = h.recorder.wait_for("shimless", E.EXIT, timeout=60)
    assert info.exit_code == 137
    assert task.wait(timeout=60).code == 137
    assert out.wait(timeout=30).stdout == b"up\n"
    assert wait_until(lambda: _procfs.state(task.pid) is None, timeout=30), "the container outlived its shim"
    # containerd deleted the task when it cleaned up after the shim: delete() returns the exit wait() gave
    assert task.delete().code == 137
    ctr.delete()
    assert not os.path.exists(os.path.join(c.state_dir, "shimless"))
    wait_until(lambda: testing.open_fds() == fds, timeout=10)
    assert testing.open_fds() == fds, "the task's FIFO descriptors leaked"
    h.recovered(rootfs)


def _sigkill_pending(pid: int) -> bool:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        fields = dict(line.split(":", 1) for line in f)
    return any(int(fields[k], 16) & (1 << (signal.SIGKILL - 1)) for k in ("SigPnd", "ShdPnd"))


def test_force_delete_goes_on_when_the_shim_dies_during_its_wait(daemon, h, rootfs, namespace):
    """As the Go client's kill-and-delete: whatever Wait returned, Delete follows. containerd removed the
    task with its dead shim, so delete() returns the exit the backend got, exactly once (containerd
    reports 255 with pid 0 for it, or the SDK 255 with the reason), rather than NotFound."""
    c = h.client
    ctr = c.new_container("held", spec(rootfs, "sleep", "300"))
    task = ctr.start()
    # runc thaws the task's cgroup after `kill --all`, but not a frozen child cgroup of it: the
    # SIGKILL stays pending there, and force_delete() waits for an exit that does not come.
    held = f"/sys/fs/cgroup/freezer/{namespace}/held/frozen"
    os.mkdir(held)
    try:
        with open(os.path.join(held, "cgroup.procs"), "w", encoding="ascii") as f:
            f.write(str(task.pid))
        with open(os.path.join(held, "freezer.state"), "w", encoding="ascii") as f:
            f.write("FROZEN")
        shim = daemon.shim_pid(namespace, "held")
        thread, box = run_in_thread(task.force_delete)
        assert wait_until(lambda: _sigkill_pending(task.pid), timeout=30), "force_delete() sent no SIGKILL"
        os.kill(shim, signal.SIGKILL)
        thread.join(60)
        assert not thread.is_alive()
        status = box.get("result")
        assert isinstance(status, ExitStatus) and status.code in (137, 255), box
        exits = [i for cid, t, i in h.recorder.events if cid == "held" and t is E.EXIT]
        assert [i.exit_code for i in exits] == [status.code], exits  # containerd's own (pid 0) or ours
        with pytest.raises(errdefs.NotFound):
            ctr.task()
    finally:
        if os.path.isdir(held):  # containerd's clean-up after the dead shim may have removed it
            with open(os.path.join(held, "freezer.state"), "w", encoding="ascii") as f:
                f.write("THAWED")
        assert wait_until(lambda: not os.path.exists(f"/proc/{task.pid}"), timeout=30)
        if os.path.isdir(held):
            os.rmdir(held)
    ctr.delete()
    h.recovered(rootfs)


def _down_records(caplog, namespace: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "has not served namespace " + namespace in r.getMessage()]


@pytest.mark.parametrize("interval", [3600.0, 0.0])
def test_waiting_for_containerd_warns_how_long_it_has_been_down(daemon, h, namespace, caplog, monkeypatch, interval):
    """One record per failed attempt: a warning (with how long containerd has been down), rate-limited."""
    monkeypatch.setattr(_events, "DOWN_WARNING_INTERVAL", interval)
    caplog.set_level(logging.DEBUG, logger="libcontainerd")
    daemon.daemon.stop()
    try:
        assert wait_until(lambda: len(_down_records(caplog, namespace)) >= 3, timeout=60)
    finally:
        daemon.restart()
    records = _down_records(caplog, namespace)[:3]
    levels = [r.levelno for r in records]
    if interval:
        assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    else:
        assert levels == [logging.WARNING] * 3
    down = [float(re.search(r"for ([0-9.]+) s", r.getMessage()).group(1)) for r in records]
    assert down == sorted(down) and down[-1] > 0
    assert all(getattr(r, "namespace", None) == namespace for r in records)
    assert h.client.is_serving(timeout=60)


def test_checkpoint_clean_up_warnings_name_ref_digest_and_container(daemon, h, state_dir, namespace, tmp_path,
                                                                    caplog):
    (tmp_path / "cp").mkdir()
    (tmp_path / "cp" / "inventory.img").write_bytes(b"x" * 1000)
    impatient = libcontainerd.new_client(daemon.address, state_dir, namespace, None, timeout=1)
    try:
        blob = _checkpoint.upload_checkpoint_dir(impatient._session, str(tmp_path / "cp"), "warned")
        daemon.freeze()
        try:
            blob.delete()
            _checkpoint._delete_lease(impatient._session, "some-lease", "warned")
        finally:
            daemon.thaw()
        content, lease = [r for r in caplog.records if r.levelno == logging.WARNING and "warned" in r.getMessage()]
        assert blob.descriptor.digest in content.getMessage() and blob.ref in content.getMessage()
        assert "some-lease" in lease.getMessage()
        for record in (content, lease):
            assert (record.container_id, record.namespace) == ("warned", namespace)
        blob.delete()
    finally:
        impatient.close()

"""Unit tests of libcontainerd.queue.KeyedSerialExecutor: order, exclusion, parallelism, close."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libcontainerd import errdefs
from libcontainerd.queue import ExecutorClosedError, KeyedSerialExecutor

WAIT = 10.0  # generous bound for Event waits; a hang fails the test instead of blocking the run


def _worker_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name + "-")]


@pytest.fixture
def executor(request: pytest.FixtureRequest) -> Iterator[KeyedSerialExecutor]:
    name = f"libcontainerd-test-{request.node.name}"
    ex = KeyedSerialExecutor(max_workers=4, name=name)
    yield ex
    ex.close(timeout=WAIT, drain=False)
    assert _worker_threads(name) == []


class _Tracker:
    """Records per-key order and fails on two concurrent callbacks of one key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.seen: dict[str, list[int]] = collections.defaultdict(list)
        self.overlaps: list[str] = []

    def __call__(self, key: str, n: int) -> None:
        with self.lock:
            if key in self.running:
                self.overlaps.append(key)
            self.running.add(key)
        # Yield the GIL so that a second worker would get a chance to overlap.
        threading.Event().wait(0)
        with self.lock:
            self.seen[key].append(n)
            self.running.discard(key)


def test_order_per_key_and_no_overlap(executor: KeyedSerialExecutor) -> None:
    tracker = _Tracker()
    keys = [f"ctr-{i}" for i in range(50)]
    for n in range(1000):
        key = keys[(n * 7) % 50]
        executor.submit(key, tracker, key, n)
    executor.close(timeout=WAIT)
    assert tracker.overlaps == []
    assert sum(len(v) for v in tracker.seen.values()) == 1000
    for key in keys:
        expected = [n for n in range(1000) if keys[(n * 7) % 50] == key]
        assert tracker.seen[key] == expected
    assert executor.pending == 0


def test_blocked_key_does_not_stop_other_keys(executor: KeyedSerialExecutor) -> None:
    release_a = threading.Event()
    a_started = threading.Event()
    b_ran = threading.Event()
    a_second = threading.Event()

    def block_a() -> None:
        a_started.set()
        assert release_a.wait(WAIT)

    executor.submit("a", block_a)
    executor.submit("a", a_second.set)
    assert a_started.wait(WAIT)
    executor.submit("b", b_ran.set)
    assert b_ran.wait(WAIT), "key b waited for blocked key a"
    assert not a_second.is_set()
    assert executor.pending == 1
    release_a.set()
    assert a_second.wait(WAIT)


def test_keys_run_in_parallel_up_to_max_workers() -> None:
    ex = KeyedSerialExecutor(max_workers=3, name="libcontainerd-test-parallel")
    try:
        barrier = threading.Barrier(3, timeout=WAIT)
        for key in ("a", "b", "c"):
            ex.submit(key, barrier.wait)
        # All three callbacks must be running at once for the barrier to open.
        ex.close(timeout=WAIT)
        assert not barrier.broken
    finally:
        ex.close(timeout=WAIT, drain=False)
    assert ex.workers == 0


def test_busy_key_does_not_starve_others_on_one_worker() -> None:
    # With one worker, a key that keeps resubmitting itself must still let key b through.
    ex = KeyedSerialExecutor(max_workers=1, name="libcontainerd-test-fair")
    b_queued = threading.Event()
    b_ran = threading.Event()
    rounds = collections.Counter[str]()

    def spin() -> None:
        # Start spinning only once b is queued: how long the test thread takes to get there
        # depends on the scheduler, not on the executor's fairness.
        assert b_queued.wait(WAIT)
        rounds["a"] += 1
        if not b_ran.is_set() and rounds["a"] < 10_000:
            ex.submit("a", spin)

    try:
        ex.submit("a", spin)
        ex.submit("b", b_ran.set)
        b_queued.set()
        assert b_ran.wait(WAIT)
        ex.close(timeout=WAIT)
        # Round-robin over keys: b runs right after a's first or second turn, never after thousands.
        assert rounds["a"] <= 3, f"key b only ran after {rounds['a']} turns of key a"
    finally:
        ex.close(timeout=WAIT, drain=False)


def test_workers_are_bounded_and_lazy() -> None:
    name = "libcontainerd-test-bounded"
    ex = KeyedSerialExecutor(max_workers=2, name=name)
    assert ex.workers == 0
    assert _worker_threads(name) == []
    release = threading.Event()
    try:
        for i in range(20):
            ex.submit(f"k{i}", release.wait, WAIT)
        assert ex.workers == 2
        assert len(_worker_threads(name)) == 2
        # each worker takes one key as soon as it is scheduled; until then more are pending
        deadline = time.monotonic() + WAIT
        while ex.pending != 18 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ex.pending == 18
        assert ex.workers == 2
    finally:
        release.set()
        ex.close(timeout=WAIT)
    assert ex.workers == 0
    assert _worker_threads(name) == []


def test_idle_workers_exit() -> None:
    name = "libcontainerd-test-idle"
    ex = KeyedSerialExecutor(max_workers=2, name=name, idle_timeout=0.05)
    try:
        done = threading.Event()
        ex.submit("a", done.set)
        assert done.wait(WAIT)
        for t in _worker_threads(name):
            t.join(WAIT)
        assert ex.workers == 0
        # A new submit after the pool went idle starts a worker again.
        again = threading.Event()
        ex.submit("a", again.set)
        assert again.wait(WAIT)
    finally:
        ex.close(timeout=WAIT)
    assert _worker_threads(name) == []


def test_exception_is_logged_and_next_callback_runs(
    executor: KeyedSerialExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise ValueError("backend exploded")

    after = threading.Event()
    with caplog.at_level(logging.ERROR, logger="libcontainerd.queue"):
        executor.submit("ctr-9", boom, context={"topic": "/tasks/exit"})
        executor.submit("ctr-9", after.set)
        assert after.wait(WAIT)
    records = [r for r in caplog.records if r.name == "libcontainerd.queue"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "'ctr-9'" in message
    assert "/tasks/exit" in message
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ValueError)


def test_on_error_hook_gets_key_exception_and_context(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, BaseException, object]] = []
    ex = KeyedSerialExecutor(name="libcontainerd-test-onerror", on_error=lambda *a: calls.append(a))
    err = RuntimeError("nope")

    def boom() -> None:
        raise err

    with caplog.at_level(logging.ERROR, logger="libcontainerd.queue"):
        ex.submit("k", boom, context="exit of k")
        ex.close(timeout=WAIT)
    assert calls == [("k", err, "exit of k")]


def _occupy(ex: KeyedSerialExecutor, key: str = "a") -> threading.Event:
    """Submit to ``key`` a callback that holds its worker until the returned gate is set; return once it runs."""
    gate, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        assert gate.wait(WAIT)

    ex.submit(key, hold)
    assert started.wait(WAIT)  # running, not pending
    return gate


def test_close_drains_queued_work() -> None:
    ex = KeyedSerialExecutor(max_workers=2, name="libcontainerd-test-drain")
    seen: list[int] = []
    gate = _occupy(ex)
    for i in range(100):
        ex.submit("a", seen.append, i)
    assert ex.pending == 100
    gate.set()
    ex.close(timeout=WAIT)
    assert seen == list(range(100))
    assert ex.pending == 0
    assert ex.workers == 0


def test_close_without_drain_abandons_queued_work() -> None:
    name = "libcontainerd-test-abandon"
    ex = KeyedSerialExecutor(max_workers=1, name=name)
    seen: list[int] = []
    gate = _occupy(ex)
    for i in range(100):
        ex.submit("a", seen.append, i)
        ex.submit(f"other-{i}", seen.append, i)
    assert ex.pending == 200
    # The only worker is held by _occupy, so nothing else can have run before the queue is dropped.
    with pytest.raises(errdefs.Deadline):
        ex.close(timeout=0.01, drain=False)
    assert ex.pending == 0
    gate.set()
    ex.close(timeout=WAIT)
    assert seen == []
    assert _worker_threads(name) == []


def test_close_times_out_with_deadline_then_second_close_joins() -> None:
    name = "libcontainerd-test-timeout"
    ex = KeyedSerialExecutor(max_workers=1, name=name)
    gate = _occupy(ex)
    with pytest.raises(errdefs.Deadline, match="still running"):
        ex.close(timeout=0.01)
    assert ex.closed
    gate.set()
    ex.close(timeout=WAIT)
    assert _worker_threads(name) == []


def test_close_from_inside_a_callback_does_not_deadlock() -> None:
    name = "libcontainerd-test-inner-close"
    ex = KeyedSerialExecutor(max_workers=2, name=name)
    queued = threading.Event()
    closed_inside = threading.Event()
    seen: list[str] = []

    def close_me() -> None:
        # Close only once the second callback is queued: otherwise the worker may close the
        # executor before the test's second submit, which then (rightly) raises.
        assert queued.wait(WAIT)
        ex.close(timeout=WAIT)
        closed_inside.set()

    ex.submit("a", close_me)
    ex.submit("a", seen.append, "after-close")  # queued before close: drained by the same worker
    queued.set()
    assert closed_inside.wait(WAIT)
    with pytest.raises(ExecutorClosedError):
        ex.submit("a", seen.append, "too late")
    # The outer close joins the worker that called close() on itself.
    ex.close(timeout=WAIT)
    assert seen == ["after-close"]
    assert _worker_threads(name) == []


def test_submit_after_close_raises() -> None:
    ex = KeyedSerialExecutor(name="libcontainerd-test-closed")
    ex.close()
    with pytest.raises(ExecutorClosedError, match="closed") as info:
        ex.submit("x", lambda: None)
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, errdefs.LibcontainerdError)
    ex.close()  # idempotent


def test_submit_from_inside_a_callback(executor: KeyedSerialExecutor) -> None:
    seen: list[str] = []
    done = threading.Event()

    def outer() -> None:
        seen.append("outer")
        executor.submit("k", seen.append, "inner")
        executor.submit("k", done.set)

    executor.submit("k", outer)
    assert done.wait(WAIT)
    assert seen == ["outer", "inner"]


def test_invalid_arguments() -> None:
    with pytest.raises(errdefs.InvalidParameter, match="max_workers"):
        KeyedSerialExecutor(max_workers=0)
    with pytest.raises(errdefs.InvalidParameter, match="idle_timeout"):
        KeyedSerialExecutor(idle_timeout=0)


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=200),
    max_workers=st.integers(min_value=1, max_value=6),
)
def test_property_per_key_order_and_exclusion(keys: list[str], max_workers: int) -> None:
    name = "libcontainerd-test-property"
    ex = KeyedSerialExecutor(max_workers=max_workers, name=name)
    tracker = _Tracker()
    try:
        for n, key in enumerate(keys):
            ex.submit(key, tracker, key, n)
    finally:
        ex.close(timeout=WAIT)
    assert tracker.overlaps == []
    for key in set(keys):
        assert tracker.seen[key] == [n for n, k in enumerate(keys) if k == key]
    assert _worker_threads(name) == []


def test_failed_thread_start_leaves_nothing_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    ex = KeyedSerialExecutor(name="libcontainerd-test-nothread")

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError, match="can't start"):
            ex.submit("a", lambda: None)
    assert (ex.pending, ex.workers) == (0, 0)
    done = threading.Event()
    ex.submit("a", done.set)
    assert done.wait(WAIT)
    ex.close(timeout=WAIT)

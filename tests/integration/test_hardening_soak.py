"""Leaks and concurrency: many lifecycles and execs through one client, and 32 threads sharing one.

Marked ``soak``. The counts come from the environment: by default (CI) a shortened run -- 150
container lifecycles, 300 execs, 15 s of 32-thread concurrency -- and with ``LIBCONTAINERD_SOAK=full``
the issue's figures: 1,000 lifecycles, 2,000 execs, 60 s. ``LIBCONTAINERD_SOAK_SCALE=<float>``
scales the full figures instead. Open fds, libcontainerd threads and RSS are sampled through the run
and must come back to their baseline (taken after a warm-up; RSS within a few MB). With
``LIBCONTAINERD_SOAK_REPORT=<path>`` the figures are appended there as JSON lines.
"""

from __future__ import annotations

import faulthandler
import gc
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

import libcontainerd
from libcontainerd import oci, stdio, testing
from libcontainerd.types import EventInfo, EventType

from ..helpers import echo_lifecycle, lcd_threads, rss_kb, spec

pytestmark = pytest.mark.soak

E = EventType
FULL = {"lifecycles": 1000, "execs": 2000, "concurrency_s": 60.0}
SHORT = {"lifecycles": 150, "execs": 300, "concurrency_s": 15.0}
WORKERS = 4
CONCURRENT_THREADS = 32
RSS_SLACK_KB = 8 * 1024


def scale() -> dict[str, float]:
    factor = os.environ.get("LIBCONTAINERD_SOAK_SCALE")
    if factor:
        return {k: v * float(factor) for k, v in FULL.items()}
    return dict(FULL if os.environ.get("LIBCONTAINERD_SOAK") == "full" else SHORT)


def report(record_property: Callable[[str, Any], None], name: str, figures: dict[str, Any]) -> None:
    for key, value in figures.items():
        record_property(f"{name}.{key}", value)
    path = os.environ.get("LIBCONTAINERD_SOAK_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": name, **figures}) + "\n")


class OrderChecker:
    """A backend that checks each process's event order and lets a worker wait for its exit."""

    ORDERS = {"task": [E.CREATE, E.START, E.EXIT], "exec": [E.EXEC_ADDED, E.EXEC_STARTED, E.EXIT]}

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: dict[tuple[str, str], list[EventType]] = {}
        self.other: list[tuple[str, EventType, EventInfo]] = []
        self.delivered = 0

    def process_event(self, container_id: str, event_type: EventType, info: EventInfo) -> None:
        with self.cond:
            self.delivered += 1
            if event_type in (E.PAUSED, E.RESUMED, E.OOM):
                self.other.append((container_id, event_type, info))
            self.seen.setdefault((container_id, info.process_id), []).append(event_type)
            self.cond.notify_all()

    def finish(self, container_id: str, process_id: str, kind: str, timeout: float = 60.0) -> None:
        """Wait for the process's EXIT, check the whole sequence, and forget it (to keep memory flat)."""
        key = (container_id, process_id)
        with self.cond:
            if not self.cond.wait_for(lambda: E.EXIT in self.seen.get(key, ()), timeout):
                raise AssertionError(f"no exit event for {key}: {self.seen.get(key)}")
            got = self.seen.pop(key)
        assert got == self.ORDERS[kind], f"events of {key} out of order: {got}"


class Sampler:
    def __init__(self) -> None:
        self.samples: list[dict[str, int]] = []

    def take(self, done: int) -> dict[str, int]:
        gc.collect()
        sample = {"done": done, "fds": testing.open_fds(), "threads": threading.active_count(),
                  "lcd_threads": len(lcd_threads()), "rss_kb": rss_kb()}
        self.samples.append(sample)
        return sample


def run_workers(count: int, target: Callable[[int], None], name: str, timeout: float) -> list[BaseException]:
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), name=f"{name}-{i}", daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        faulthandler.dump_traceback(file=sys.stderr)
        raise AssertionError(f"workers did not finish (deadlock?): {stuck}")
    return errors


@pytest.fixture
def soak_client(containerd: Any, state_dir: str, namespace: str) -> Iterator[tuple[libcontainerd.Client, OrderChecker]]:
    checker = OrderChecker()
    client = libcontainerd.new_client(containerd.address, state_dir, namespace, checker, timeout=60)
    try:
        yield client, checker
    finally:
        testing.remove_containers(client)
        client.close()


def lifecycle(client: libcontainerd.Client, checker: OrderChecker, rootfs: str, cid: str) -> None:
    echo_lifecycle(client, rootfs, cid, cid, timeout=60)
    checker.finish(cid, cid, "task")


def exec_once(task: libcontainerd.Task, checker: OrderChecker, eid: str) -> None:
    out = stdio.capture()
    proc = task.exec(eid, oci.process_spec(["echo", eid]), attach_stdio=out)
    assert proc.wait(timeout=60).code == 0
    assert out.wait(timeout=60).stdout == f"{eid}\n".encode()
    assert proc.delete().code == 0
    checker.finish(task.id, eid, "exec")


def check_baseline(base: dict[str, int], end: dict[str, int], base_threads: list[str]) -> None:
    assert end["fds"] == base["fds"], f"file descriptors leaked: {base['fds']} -> {end['fds']}"
    assert lcd_threads() == base_threads, f"threads leaked: {base_threads} -> {lcd_threads()}"
    assert end["rss_kb"] - base["rss_kb"] <= RSS_SLACK_KB, f"RSS grew by {end['rss_kb'] - base['rss_kb']} kB"


def test_container_lifecycles_leak_nothing(soak_client, rootfs, record_property):
    client, checker = soak_client
    total = int(scale()["lifecycles"])
    counter = itertools.count()
    lock = threading.Lock()
    sampler = Sampler()
    every = max(1, total // 10)

    def worker(prefix: str, n: int) -> Callable[[int], None]:
        def run(_: int) -> None:
            while True:
                with lock:
                    i = next(counter)
                if i >= n:
                    return
                lifecycle(client, checker, rootfs, f"{prefix}-{i}")
                if (i + 1) % every == 0:
                    with lock:
                        sampler.take(i + 1)
        return run

    assert not run_workers(WORKERS, worker("warm", 2 * WORKERS * 3), "soak-warm", 300)
    counter = itertools.count()
    base = sampler.take(0)
    base_threads = lcd_threads()
    sampler.samples.clear()
    started = time.monotonic()
    errors = run_workers(WORKERS, worker("life", total), "soak-life", 60 + total * 3.0)
    elapsed = time.monotonic() - started
    assert not errors, errors[:5]
    assert os.listdir(client.state_dir) == []
    end = sampler.take(total)
    figures = {"lifecycles": total, "workers": WORKERS, "seconds": round(elapsed, 1), "base": base, "end": end,
               "max_fds": max(s["fds"] for s in sampler.samples),
               "max_rss_kb": max(s["rss_kb"] for s in sampler.samples), "events": checker.delivered}
    report(record_property, "lifecycles", figures)
    check_baseline(base, end, base_threads)


def test_execs_leak_nothing(soak_client, rootfs, record_property):
    client, checker = soak_client
    total = int(scale()["execs"])
    tasks = []
    for i in range(WORKERS):
        ctr = client.new_container(f"host-{i}", spec(rootfs, "sleep", "3600"))
        tasks.append(ctr.start())
    sampler = Sampler()
    every = max(1, total // 10)
    done = itertools.count(1)
    lock = threading.Lock()

    def worker(prefix: str, per_worker: int) -> Callable[[int], None]:
        def run(w: int) -> None:
            for i in range(per_worker):
                exec_once(tasks[w], checker, f"{prefix}-{w}-{i}")
                with lock:
                    n = next(done)
                    if n % every == 0:
                        sampler.take(n)
        return run

    assert not run_workers(WORKERS, worker("warm", 5), "soak-exec-warm", 300)
    done = itertools.count(1)
    base = sampler.take(0)
    base_threads = lcd_threads()
    sampler.samples.clear()
    started = time.monotonic()
    errors = run_workers(WORKERS, worker("ex", total // WORKERS), "soak-exec", 60 + total * 2.0)
    elapsed = time.monotonic() - started
    assert not errors, errors[:5]
    end = sampler.take(total)
    figures = {"execs": total // WORKERS * WORKERS, "workers": WORKERS, "seconds": round(elapsed, 1), "base": base,
               "end": end, "max_fds": max(s["fds"] for s in sampler.samples),
               "max_rss_kb": max(s["rss_kb"] for s in sampler.samples)}
    for task in tasks:
        assert sorted(os.listdir(task.container.bundle_dir)) == [], "exec FIFOs left in the bundle"
    report(record_property, "execs", figures)
    check_baseline(base, end, base_threads)
    for task in tasks:
        task.force_delete()
        task.container.delete()


def test_32_threads_share_one_client(soak_client, rootfs, record_property):
    """Lifecycles, execs, stats and listings at once: no deadlock, no unexpected error, events in order."""
    client, checker = soak_client
    seconds = scale()["concurrency_s"]
    hosts = []
    for i in range(4):
        ctr = client.new_container(f"shared-{i}", spec(rootfs, "sleep", "3600"))
        hosts.append(ctr.start())
    stop = threading.Event()
    counts: dict[str, int] = {"lifecycle": 0, "exec": 0, "stats": 0, "status": 0, "list": 0}
    lock = threading.Lock()
    unique = itertools.count()

    def bump(kind: str) -> None:
        with lock:
            counts[kind] += 1

    def run(i: int) -> None:
        role = i % 4
        while not stop.is_set():
            n = next(unique)
            if role == 0:
                lifecycle(client, checker, rootfs, f"c{i}-{n}")
                bump("lifecycle")
            elif role == 1:
                exec_once(hosts[i % len(hosts)], checker, f"e{i}-{n}")
                bump("exec")
            elif role == 2:
                stats = hosts[n % len(hosts)].stats()
                assert stats.metrics.pids.current >= 1
                bump("stats")
            else:
                assert hosts[n % len(hosts)].status() is libcontainerd.Status.RUNNING
                bump("status")
                if n % 5 == 0:
                    assert {f"shared-{k}" for k in range(4)} <= {c.id for c in client.list_containers()}
                    bump("list")

    base_threads = lcd_threads()
    timer = threading.Timer(seconds, stop.set)
    timer.name = "soak-timer"
    timer.start()
    started = time.monotonic()
    try:
        errors = run_workers(CONCURRENT_THREADS, run, "soak-conc", seconds + 180)
    finally:
        stop.set()
        timer.cancel()
        timer.join()
    elapsed = time.monotonic() - started
    assert not errors, errors[:5]
    assert not checker.other, checker.other[:5]
    leftover = {k: v for k, v in checker.seen.items() if not (k[0] == k[1] and k[0].startswith("shared-"))}
    assert not leftover, f"events of finished processes not checked: {list(leftover)[:5]}"
    for task in hosts:
        task.force_delete()
        task.container.delete()
    checker.finish("shared-0", "shared-0", "task")
    report(record_property, "concurrency", {"threads": CONCURRENT_THREADS, "seconds": round(elapsed, 1), **counts})
    assert counts["lifecycle"] and counts["exec"] and counts["stats"] and counts["status"]
    assert lcd_threads() == base_threads

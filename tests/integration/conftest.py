"""Fixtures for tests that drive containers: a recording backend and a client that cleans up."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

import libcontainerd
from libcontainerd import _procfs, testing
from libcontainerd.types import EventInfo, EventType


class Recorder:
    """A backend that records every event and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, EventType, EventInfo]] = []
        self.cond = threading.Condition()
        self.threads: set[str] = set()
        self.hook: Optional[Callable[[str, EventType, EventInfo], None]] = None

    def process_event(self, container_id: str, event_type: EventType, info: EventInfo) -> None:
        self.threads.add(threading.current_thread().name)
        if self.hook is not None:
            self.hook(container_id, event_type, info)
        with self.cond:
            self.events.append((container_id, event_type, info))
            self.cond.notify_all()

    def of(self, container_id: str) -> list[tuple[EventType, str]]:
        with self.cond:
            return [(t, i.process_id) for c, t, i in self.events if c == container_id]

    def wait_for(self, container_id: str, event_type: EventType, process_id: Optional[str] = None,
                 timeout: float = 20.0) -> EventInfo:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for c, t, i in self.events:
                    if c == container_id and t is event_type and (process_id is None or i.process_id == process_id):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = self.of(container_id)
                    raise AssertionError(f"no {event_type} for {container_id}/{process_id}; got {seen}")
                self.cond.wait(left)



@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(containerd: Any, state_dir: str, namespace: str, recorder: Recorder) -> Iterator[libcontainerd.Client]:
    c = libcontainerd.new_client(containerd.address, state_dir, namespace, recorder, timeout=60)
    try:
        yield c
    finally:
        leftovers = [] if c.closed else testing.remove_containers(c)
        c.close()
    assert not leftovers, f"test left containers behind: {leftovers}"


def fd_count() -> int:
    return len(_procfs.fds())


def lcd_threads() -> list[str]:
    """Names of libcontainerd's threads, without the event pool's idle-expiring workers."""
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith("libcontainerd") and not re.fullmatch(r"libcontainerd-events-\d+", t.name))

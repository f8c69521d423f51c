"""Fixtures for tests that drive containers: a recording backend and a client that cleans up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import libcontainerd
from libcontainerd import testing


@pytest.fixture
def recorder() -> testing.RecordingBackend:
    return testing.RecordingBackend()


@pytest.fixture
def client(containerd: Any, state_dir: str, namespace: str,
           recorder: testing.RecordingBackend) -> Iterator[libcontainerd.Client]:
    c = libcontainerd.new_client(containerd.address, state_dir, namespace, recorder, timeout=60)
    try:
        yield c
    finally:
        leftovers = [] if c.closed else testing.remove_containers(c)
        c.close()
    assert not leftovers, f"test left containers behind: {leftovers}"

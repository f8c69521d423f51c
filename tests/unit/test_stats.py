"""Task.stats decodes cgroup v1 and v2 metrics (v2 built by hand: this machine runs cgroup v1)."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest
from google.protobuf import any_pb2, timestamp_pb2

from libcontainerd import errdefs
from libcontainerd._api.cgroups.stats.v1 import metrics_pb2 as v1
from libcontainerd._api.cgroups.v2.stats import metrics_pb2 as v2
from libcontainerd._api.containerd.api.services.tasks.v1 import tasks_pb2
from libcontainerd._api.containerd.api.types import metrics_pb2
from libcontainerd._typeurl import pack_message
from libcontainerd.remote._container import Container
from libcontainerd.remote._process import Task
from libcontainerd.remote._session import Session
from libcontainerd.types import Stats


def task_answering(data: any_pb2.Any, with_metric: bool = True) -> Task:
    def call(method, request, what="", **kw):
        assert list(request.filters) == ["id==web"]
        metrics = [metrics_pb2.Metric(timestamp=timestamp_pb2.Timestamp(seconds=1_700_000_000), id="web",
                                      data=data)] if with_metric else []
        return tasks_pb2.MetricsResponse(metrics=metrics)

    # The one fake: a connection answering Metrics with what a cgroup v2 host (or a bad shim) would send.
    conn = SimpleNamespace(call=call, tasks=SimpleNamespace(Metrics="Metrics"))
    session = Session(conn, "ns", "/nonexistent")  # type: ignore[arg-type]
    container = Container(session, "web", spec={}, labels={}, runtime="io.containerd.runc.v2")
    return Task(session, container, pid=1)


def test_v2_metrics_decode():
    m = v2.Metrics(memory=v2.MemoryStat(usage=5 << 20, usage_limit=64 << 20), pids=v2.PidsStat(current=3))
    stats = task_answering(pack_message(m)).stats()
    assert stats.metrics.memory.usage == 5 << 20
    assert stats.metrics.memory.usage_limit == 64 << 20
    assert stats.read.year == 2023 and stats.read.tzinfo is not None
    assert "io.containerd.cgroups.v2.Metrics" in repr(stats)


def test_v1_metrics_decode():
    m = v1.Metrics(memory=v1.MemoryStat(usage=v1.MemoryEntry(usage=7)), pids=v1.PidsStat(current=1))
    assert task_answering(pack_message(m)).stats().metrics.memory.usage.usage == 7


def test_unknown_metrics_type_is_a_clear_error():
    with pytest.raises(errdefs.NotImplemented, match=r"unknown metrics type 'example\.com/Metrics'"):
        task_answering(any_pb2.Any(type_url="example.com/Metrics", value=b"")).stats()


def test_no_metrics_is_not_found():
    with pytest.raises(errdefs.NotFound, match="no metrics"):
        task_answering(any_pb2.Any(), with_metric=False).stats()


def _stats(metrics) -> Stats:
    return Stats(read=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc), metrics=metrics)


def test_v1_and_v2_give_the_same_numbers():
    one = _stats(v1.Metrics(memory=v1.MemoryStat(usage=v1.MemoryEntry(usage=5 << 20, limit=64 << 20)),
                            cpu=v1.CPUStat(usage=v1.CPUUsage(total=1_500_000)),
                            pids=v1.PidsStat(current=3, limit=100)))
    two = _stats(v2.Metrics(memory=v2.MemoryStat(usage=5 << 20, usage_limit=64 << 20),
                            cpu=v2.CPUStat(usage_usec=1_500), pids=v2.PidsStat(current=3, limit=100)))
    for stats in (one, two):
        assert (stats.memory_bytes, stats.memory_limit_bytes, stats.cpu_ns, stats.pids, stats.pids_limit) == (
            5 << 20, 64 << 20, 1_500_000, 3, 100)


@pytest.mark.parametrize("limit", [0, 0x7FFFFFFFFFFFF000, 2**63 - 1])  # unset; v1's "none", page-rounded or not
def test_no_limit_is_none(limit):
    v1_stats = _stats(v1.Metrics(memory=v1.MemoryStat(usage=v1.MemoryEntry(usage=1, limit=limit))))
    v2_stats = _stats(v2.Metrics(memory=v2.MemoryStat(usage=1, usage_limit=limit)))
    assert v1_stats.memory_limit_bytes is None and v2_stats.memory_limit_bytes is None
    assert v1_stats.pids_limit is None and v2_stats.pids_limit is None

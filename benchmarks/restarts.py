"""The restart storm: containerd SIGKILLed again and again under a client, with and without the SDK.

A private daemon of its own (the shared one of the run is never killed). Each round: a short
container starts; containerd is killed; the supervisor restarts it. Then, once containerd serves:
how long until a call succeeds, and whether the first call made failed, for the SDK client and for
a raw stub on a plain channel (gRPC's defaults, what a hand-written client gets). Meanwhile every
container's ``wait()`` must return and its EXIT reach the backend exactly once.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from typing import Callable

import grpc
from cases import Env, Result, median_ms, spec
from google.protobuf import empty_pb2

import libcontainerd
from libcontainerd import testing
from libcontainerd._api.containerd.api.services.version.v1 import version_pb2_grpc
from libcontainerd.types import EventInfo, EventType, ExitStatus


class _ExitCounter:
    def __init__(self) -> None:
        self.exits: Counter[str] = Counter()

    def process_event(self, container_id: str, event_type: EventType, info: EventInfo) -> None:
        if event_type is EventType.EXIT:
            self.exits[container_id] += 1


def _until_ok(call: Callable[[], object]) -> tuple[float, bool]:
    """Seconds until ``call`` succeeds (retrying at once), and whether its first try failed."""
    t0, first_failed = time.perf_counter(), False
    while True:
        try:
            call()
            return time.perf_counter() - t0, first_failed
        except (grpc.RpcError, libcontainerd.errdefs.LibcontainerdError):
            first_failed = True
            if time.perf_counter() - t0 > 30:
                raise
            time.sleep(0.01)


def bench_restarts(env: Env) -> list[Result]:
    rounds = env.iterations(20, 5)
    tmp = tempfile.mkdtemp(prefix="lcd-bench-storm-")
    daemon = testing.start_daemon(tmp, health_failures=0)
    counter = _ExitCounter()
    ns = f"bench-storm-{uuid.uuid4().hex[:6]}"
    sdk_s: list[float] = []
    raw_s: list[float] = []
    sdk_failed = raw_failed = 0
    waits: dict[str, object] = {}
    threads: list[threading.Thread] = []
    try:
        channel = grpc.insecure_channel("unix://" + daemon.address)
        raw = version_pb2_grpc.VersionStub(channel)  # type: ignore[no-untyped-call]
        with libcontainerd.new_client(daemon.address, os.path.join(tmp, "state"), ns, counter, timeout=60) as c:
            raw.Version(empty_pb2.Empty(), timeout=10)
            for k in range(rounds):
                ctr = c.new_container(f"r{k}", spec(env, "sh", "-c", f"sleep 0.{k % 10}; exit {k + 1}"))
                task = ctr.start()

                def wait(task: libcontainerd.Task = task) -> None:
                    try:
                        waits[task.id] = task.wait(timeout=300)
                    except libcontainerd.errdefs.LibcontainerdError as exc:
                        waits[task.id] = exc

                threads.append(threading.Thread(target=wait, name=f"bench-wait-{k}"))
                threads[-1].start()
                count = daemon.restarts
                daemon.kill(signal.SIGKILL)
                if not daemon.wait_for_restarts(count + 1, timeout=60):
                    raise RuntimeError("containerd did not come back")
                first = [("sdk", lambda: c.version()),
                         ("raw", lambda: raw.Version(empty_pb2.Empty(), timeout=10))]
                for name, call in first if k % 2 == 0 else first[::-1]:
                    took, failed = _until_ok(call)
                    if name == "sdk":
                        sdk_s.append(took)
                        sdk_failed += failed
                    else:
                        raw_s.append(took)
                        raw_failed += failed
            for thread in threads:
                thread.join(120)
            returned = sum(isinstance(w, ExitStatus) for w in waits.values())
            deadline = time.monotonic() + 60
            while sum(counter.exits.values()) < rounds and time.monotonic() < deadline:
                time.sleep(0.05)
            once = sum(1 for k in range(rounds) if counter.exits[f"r{k}"] == 1)
            lost = sum(1 for k in range(rounds)
                       if isinstance(waits.get(f"r{k}"), ExitStatus) and waits[f"r{k}"].code != k + 1)  # type: ignore[union-attr]
            testing.remove_containers(c)
        channel.close()
    finally:
        testing.cleanup_root(daemon)
        shutil.rmtree(tmp, ignore_errors=True)
    note = f"containerd {daemon.release}; {lost} exit codes lost by containerd (255)"
    return [
        Result("restarts", "first call after containerd is back: time to success", "ms", median_ms(sdk_s),
               "raw stub, retried until it succeeds", median_ms(raw_s), n=rounds),
        Result("restarts", "first calls that failed after containerd was back", "calls", float(sdk_failed),
               "raw stub", float(raw_failed), "0", sdk_failed == 0, n=rounds),
        Result("restarts", "wait() calls that returned across the storm", "waits", float(returned),
               target=f"= {rounds}", verdict=returned == rounds, better="higher", n=rounds, note=note),
        Result("restarts", "containers whose EXIT reached the backend exactly once", "containers", float(once),
               target=f"= {rounds}", verdict=once == rounds, better="higher", n=rounds),
    ]

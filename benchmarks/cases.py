"""The benchmark cases: each runs the SDK and its references side by side and returns result rows.

Variants of one case are interleaved (one iteration of each in turn, after a warm-up) so that
drift of a noisy machine hits them alike; what counts is the ratio measured in the same run.
Every case cleans up what it made (containers, tasks, clients, threads) even when it fails.
Targets are checked, never asserted: a row says PASS or MISS and the run goes on.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable

import attrs
import grpc
from refs import Ctr, GoBench, RawClient, check, docker_archive

import libcontainerd
from libcontainerd import oci, stdio, testing
from libcontainerd._api.containerd.api.events import task_pb2 as task_events
from libcontainerd._api.containerd.api.services.events.v1 import events_pb2, events_pb2_grpc
from libcontainerd.queue import KeyedSerialExecutor
from libcontainerd.remote._events import BACKEND_TOPICS
from libcontainerd.types import EventInfo, EventType


@attrs.frozen
class Result:
    """One row of the report. ``ratio`` is SDK / reference; ``better`` says which way is good."""

    bench: str
    metric: str
    unit: str
    sdk: float
    reference: str = ""
    ref_value: float | None = None
    target: str = ""
    verdict: bool | None = None
    better: str = "lower"
    n: int = 0
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ref_value is None or not self.ref_value:
            return None
        return self.sdk / self.ref_value

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["ratio"] = self.ratio
        return d


@attrs.define
class Env:
    """What every case gets: the private daemon's socket, a rootfs, a scratch dir, the run size."""

    address: str
    rootfs: str
    work: str
    quick: bool
    criu: str | None = None  # a CRIU that passes `criu check`, first on the daemon's PATH
    gobench: str | None = None
    scale_sizes: tuple[int, ...] = ()  # container counts of scale_stdio; () = its defaults

    def namespace(self, name: str) -> str:
        return f"bench-{name}-{uuid.uuid4().hex[:6]}"

    def iterations(self, full: int, quick: int) -> int:
        return quick if self.quick else full


class NullBackend:
    def process_event(self, container_id: str, event_type: EventType, info: EventInfo) -> None:
        pass


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000.0


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(
    variants: dict[str, Callable[[int], Any]],
    iterations: int,
    warmup: int = 1,
    cpu: dict[str, list[float]] | None = None,
    settle: dict[str, Callable[[int], Any]] | None = None,
) -> dict[str, list[float]]:
    """Run one iteration of every variant in turn; return each variant's timings (seconds).

    The order rotates every round, so that no variant always runs right after the same other one
    (whose after-effects, e.g. containerd's asynchronous clean-up of a ctr client, would hit it alone).
    With ``cpu``, each variant's CPU time in this process (all threads; children not counted) goes
    there too: unlike wall time, it hardly moves when other work loads the machine. A variant's
    ``settle`` runs after its wall time is taken and before its CPU time is: it waits for the work
    the variant set off on other threads (its events reaching a backend), so that this CPU is
    charged to the variant and not to whichever runs next.
    """
    out: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    settle = settle or {}
    for i in range(warmup + iterations):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            fn = variants[name]
            c0 = time.process_time()
            t = timed(lambda fn=fn, i=i: fn(i))  # type: ignore[misc]
            if name in settle:
                settle[name](i)
            if i >= warmup:
                out[name].append(t)
                if cpu is not None:
                    cpu.setdefault(name, []).append(time.process_time() - c0)
    return out


class GoRuns:
    """containerd's Go client as one more interleaved variant: a gobench run of ``every`` iterations
    every ``every`` rounds, so that it meets the same drift as the others; its value is the median of
    the runs' medians. Without gobench (or when it fails) the row says the reference is missing.
    """

    def __init__(self, env: Env, mode: str, spec: dict[str, Any], every: int, warmup: int = 1) -> None:
        self.go = GoBench(env.gobench, env.address, spec, env.work) if env.gobench else None
        self.mode, self.every, self.warmup = mode, every, warmup
        self.medians: list[float] = []
        self.error = ""

    def variants(self) -> dict[str, Callable[[int], Any]]:
        return {"go": self.step} if self.go is not None else {}

    def step(self, i: int) -> None:
        if self.go is None or self.error or i < self.warmup or (i - self.warmup) % self.every:
            return
        try:
            self.medians.append(self.go.median_ms(self.mode, self.every))
        except Exception as exc:  # a reference that breaks must not take the SDK's rows with it
            self.error = str(exc)

    def result(self, bench: str, metric: str, sdk_ms: float, n: int) -> Result:
        value: float | None = None
        if self.go is None:
            note = "missing: gobench not built (see docs/benchmarks.rst)"
        elif not self.medians:
            note = f"missing: {self.error}"
        else:
            value = statistics.median(self.medians)
            note = f"containerd's Go client, same spec; median of {len(self.medians)} runs of {self.every}"
        return Result(bench, metric, "ms", sdk_ms, "Go client (gobench)", value, n=n, note=note)


@contextmanager
def sdk_client(env: Env, name: str, backend: Any = None, **kw: Any) -> Iterator[libcontainerd.Client]:
    ns = env.namespace(name)
    state = os.path.join(env.work, "state-" + ns)
    client = libcontainerd.new_client(env.address, state, ns, backend or NullBackend(), timeout=120, **kw)
    try:
        yield client
    finally:
        testing.remove_containers(client)
        client.close()


def spec(env: Env, *args: str) -> dict[str, Any]:
    return oci.default_spec(env.rootfs, list(args))


# -- 1. lifecycle ------------------------------------------------------------------------------


def bench_lifecycle(env: Env) -> list[Result]:
    n = env.iterations(30, 5)
    clock = ExitClock()
    with sdk_client(env, "life", backend=clock) as client:
        # The references work in a namespace of their own: the SDK's event stream (its reader, and
        # containerd's publishing to it) is part of the SDK's cost, not of theirs.
        ref_ns = env.namespace("life-ref")
        raw = RawClient(env.address, ref_ns, os.path.join(env.work, "raw-" + ref_ns))
        # The floor of any client that learns exits from containerd: the raw stubs plus one bare
        # thread that reads the SDK's subscription (same topics) and decodes the exits.
        bare_ns = env.namespace("life-bare")
        bare = RawClient(env.address, bare_ns, os.path.join(env.work, "raw-" + bare_ns))
        sub = RawSubscriber(env.address, bare_ns, SDK_TOPICS)
        ctr = Ctr(env.address, ref_ns, env.work)
        s = spec(env, "true")
        config = ctr.write_spec("life", s)

        def sdk(i: int) -> None:
            c = client.new_container(f"sdk-{i}", s)
            t = c.start()
            t.wait()
            t.delete()
            c.delete()

        def stubs(i: int) -> None:
            raw.lifecycle(f"raw-{i}", s)

        def stubs_read(i: int) -> None:
            bare.lifecycle(f"bare-{i}", s)

        def ctr_run(i: int) -> None:
            check(ctr.run_rm(f"ctr-{i}", config), "ctr run --rm")

        go = GoRuns(env, "lifecycle", s, every=5)
        cpu: dict[str, list[float]] = {}
        try:
            times = interleave({"sdk": sdk, "raw": stubs, "raw_read": stubs_read, "ctr": ctr_run, **go.variants()},
                               n, cpu=cpu, settle={"sdk": lambda i: clock.wait(f"sdk-{i}"),
                                                   "raw_read": lambda i: sub.clock.wait(f"bare-{i}")})
        finally:
            sub.close()
            raw.close()
            bare.close()
    sdk_ms, raw_ms, ctr_ms = median_ms(times["sdk"]), median_ms(times["raw"]), median_ms(times["ctr"])
    cpu_note = "CPU of this process, all threads, until the exit reached the backend (SDK) or the bare reader"
    return [
        Result("lifecycle", "create>start>wait>delete `true`", "ms", sdk_ms, "raw stubs", raw_ms,
               "<= 1.05x", sdk_ms <= raw_ms * 1.05, n=n),
        go.result("lifecycle", "create>start>wait>delete `true`", sdk_ms, n),
        Result("lifecycle", "client CPU per lifecycle", "ms", median_ms(cpu["sdk"]), "raw stubs",
               median_ms(cpu["raw"]), "<= 1.15x", median_ms(cpu["sdk"]) <= median_ms(cpu["raw"]) * 1.15, n=n,
               note=cpu_note),
        Result("lifecycle", "client CPU per lifecycle", "ms", median_ms(cpu["sdk"]), "raw stubs + bare reader",
               median_ms(cpu["raw_read"]), n=n,
               note="the raw stubs while a bare thread reads their events (the SDK's topics): gRPC's floor"),
        Result("lifecycle", "create>start>wait>delete `true`", "ms", sdk_ms, "ctr run --rm", ctr_ms,
               "< 1.00x", sdk_ms < ctr_ms, n=n, note="ctr: Go process start + lease RPCs included"),
    ]


# -- 2. exec latency ---------------------------------------------------------------------------


def bench_exec(env: Env) -> list[Result]:
    n = env.iterations(100, 5)  # ~17 ms each: enough for a median that can tell 5% apart
    clock = ExitClock()
    with sdk_client(env, "exec", backend=clock) as client:
        task = client.new_container("sleeper", spec(env, "sleep", "3600")).start()
        ref_ns = env.namespace("exec-ref")  # see bench_lifecycle: the references get no event stream
        raw = RawClient(env.address, ref_ns, os.path.join(env.work, "raw-" + ref_ns))
        # The same stubs in the SDK's namespace: containerd publishes their events to the SDK's
        # stream, which this process then reads. SDK / this = the cost of the SDK's own wrappers.
        raw_streamed = RawClient(env.address, client.namespace, os.path.join(env.work, "raw-streamed"))
        bare_ns = env.namespace("exec-bare")  # see bench_lifecycle: gRPC's floor
        bare = RawClient(env.address, bare_ns, os.path.join(env.work, "raw-" + bare_ns))
        sub = RawSubscriber(env.address, bare_ns, SDK_TOPICS)
        for ref in (raw, bare):
            ref.create_container("sleeper", spec(env, "sleep", "3600"))
            ref.start_task("sleeper")
        ctr = Ctr(env.address, ref_ns, env.work)
        pspec = oci.process_spec(["true"])

        def sdk(i: int) -> None:
            p = task.exec(f"sdk-{i}", pspec)
            p.wait()
            p.delete()

        def sdk_io(i: int) -> None:
            out = stdio.capture()
            p = task.exec(f"sdkio-{i}", pspec, attach_stdio=out)
            p.wait()
            p.delete()

        def stubs(i: int) -> None:
            raw.exec("sleeper", f"raw-{i}", pspec)

        def stubs_streamed(i: int) -> None:
            raw_streamed.exec("sleeper", f"raw-streamed-{i}", pspec)

        def stubs_read(i: int) -> None:
            bare.exec("sleeper", f"bare-{i}", pspec)

        def ctr_exec(i: int) -> None:
            check(ctr.exec("sleeper", f"ctr-{i}", "true"), "ctr task exec")

        go = GoRuns(env, "exec", spec(env, "true"), every=10)
        cpu: dict[str, list[float]] = {}
        try:
            times = interleave(
                {"sdk": sdk, "raw": stubs, "raw_streamed": stubs_streamed, "raw_read": stubs_read, "ctr": ctr_exec,
                 "sdk_io": sdk_io, **go.variants()}, n, cpu=cpu,
                settle={"sdk": lambda i: clock.wait_process("sleeper", f"sdk-{i}"),
                        "raw_streamed": lambda i: clock.wait_process("sleeper", f"raw-streamed-{i}"),
                        "raw_read": lambda i: sub.clock.wait_process("sleeper", f"bare-{i}"),
                        "sdk_io": lambda i: clock.wait_process("sleeper", f"sdkio-{i}")})
        finally:
            sub.close()
            raw.kill_and_delete("sleeper")
            bare.kill_and_delete("sleeper")
            raw.close()
            bare.close()
            raw_streamed.close()
    sdk_ms, raw_ms, streamed_ms = median_ms(times["sdk"]), median_ms(times["raw"]), median_ms(times["raw_streamed"])
    ctr_ms, io_ms = median_ms(times["ctr"]), median_ms(times["sdk_io"])
    sdk_cpu, raw_cpu = median_ms(cpu["sdk"]), median_ms(cpu["raw"])
    return [
        Result("exec", "exec `true`>wait>delete", "ms", sdk_ms, "raw stubs", raw_ms,
               "<= 1.05x", sdk_ms <= raw_ms * 1.05, n=n),
        Result("exec", "exec `true`>wait>delete", "ms", sdk_ms, "raw stubs + event stream", streamed_ms, n=n,
               note="the same stubs while this process reads their events: what the SDK's wrappers add"),
        go.result("exec", "exec `true`>wait>delete", sdk_ms, n),
        Result("exec", "client CPU per exec", "ms", sdk_cpu, "raw stubs", raw_cpu, "<= 1.15x",
               sdk_cpu <= raw_cpu * 1.15, n=n,
               note="CPU of this process, all threads, until the exit reached the backend (SDK) or the bare reader"),
        Result("exec", "client CPU per exec", "ms", sdk_cpu, "raw stubs + bare reader", median_ms(cpu["raw_read"]),
               n=n, note="the raw stubs while a bare thread reads their events (the SDK's topics): gRPC's floor"),
        Result("exec", "client CPU per exec", "ms", sdk_cpu, "raw stubs + event stream",
               median_ms(cpu["raw_streamed"]), n=n),
        Result("exec", "exec `true` with FIFO stdio", "ms", io_ms, "ctr task exec", ctr_ms, n=n,
               note="both with FIFO stdio; ctr includes its Go process start"),
    ]


# -- 3. stdout throughput ----------------------------------------------------------------------


def bench_stdout(env: Env) -> list[Result]:
    mib = 128 if env.quick else 1024
    n = env.iterations(4, 1)
    dd = ["dd", "if=/dev/zero", "bs=1048576", f"count={mib}"]
    with sdk_client(env, "stdout") as client:
        ctr = Ctr(env.address, client.namespace, env.work)
        s = spec(env, *dd)
        config = ctr.write_spec("stdout", s)

        def sdk(i: int) -> None:
            sink = testing.CountingSink()
            c = client.new_container(f"sdk-{i}", s)
            t = c.start(attach_stdio=stdio.attach(stdout=sink))  # type: ignore[arg-type]
            t.wait()
            t.io.wait()
            t.delete()
            c.delete()
            assert sink.count == mib << 20, sink.count

        def ctr_run(i: int) -> None:
            proc = ctr.run_rm(f"ctr-{i}", config, null_io=False, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert proc.stdout is not None
            buf = bytearray(1 << 20)
            count = 0
            with proc.stdout:
                while True:
                    k = proc.stdout.readinto(buf)  # type: ignore[attr-defined]
                    if not k:
                        break
                    count += k
            if proc.wait(timeout=120) != 0:
                raise RuntimeError(f"ctr run for stdout failed with rc {proc.returncode}")
            assert count == mib << 20, count

        times = interleave({"sdk": sdk, "ctr": ctr_run}, n, warmup=0 if not env.quick else 1)
    sdk_rate = mib / statistics.median(times["sdk"])
    ctr_rate = mib / statistics.median(times["ctr"])
    return [Result("stdout", f"{mib} MiB stdout via stdio.attach", "MiB/s", sdk_rate, "ctr run | pipe", ctr_rate,
                   ">= 1.00x", sdk_rate >= ctr_rate, better="higher", n=n)]


# -- 4. events ---------------------------------------------------------------------------------


class ExitClock:
    """A backend that notes when each EXIT arrives (wall clock, to compare with exited_at).

    ``exits`` is keyed by container id (the latest exit of any of its processes), ``processes``
    by (container id, process id).
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.exits: dict[str, tuple[float, float]] = {}
        self.processes: dict[tuple[str, str], tuple[float, float]] = {}

    def process_event(self, container_id: str, event_type: EventType, info: EventInfo) -> None:
        if event_type is not EventType.EXIT:
            return
        exited = info.exited_at.timestamp() if info.exited_at is not None else float("nan")
        self.note(container_id, info.process_id, exited)

    def note(self, container_id: str, process_id: str, exited: float) -> None:
        now = time.time()
        with self.cond:
            self.exits[container_id] = self.processes[(container_id, process_id)] = (now, exited)
            self.cond.notify_all()

    def wait(self, cid: str, timeout: float = 30.0) -> tuple[float, float]:
        with self.cond:
            if not self.cond.wait_for(lambda: cid in self.exits, timeout):
                raise TimeoutError(f"no exit event for {cid}")
            return self.exits[cid]

    def wait_process(self, cid: str, process_id: str, timeout: float = 30.0) -> tuple[float, float]:
        key = (cid, process_id)
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.processes, timeout):
                raise TimeoutError(f"no exit event for {process_id} of {cid}")
            return self.processes[key]


#: A raw subscription to every task topic (what moby's libcontainerd asks containerd for).
ALL_TASK_TOPICS = ("namespace=={ns},topic~=|^/tasks/|",)
#: The SDK's own subscription: the topics a backend gets, one filter each (``EventStream.filters``).
SDK_TOPICS = tuple(f'namespace=={{ns}},topic=="{topic}"' for topic in BACKEND_TOPICS)


class RawSubscriber:
    """The same event subscription made with the raw stubs: when each TaskExit arrives, undecorated.

    The least any client that learns exits from containerd's stream must do: one thread reads
    the stream and decodes the exits; nothing is handed on.
    """

    def __init__(self, address: str, namespace: str, filters: Sequence[str] = ALL_TASK_TOPICS) -> None:
        self.channel = grpc.insecure_channel("unix://" + address)
        stub = events_pb2_grpc.EventsStub(self.channel)  # type: ignore[no-untyped-call]
        req = events_pb2.SubscribeRequest(filters=[f.format(ns=namespace) for f in filters])
        self.call = stub.Subscribe(req, metadata=(("containerd-namespace", namespace),))
        self.clock = ExitClock()
        self.thread = threading.Thread(target=self._run, name="bench-raw-subscriber", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for env in self.call:
                if env.event.type_url.endswith("TaskExit"):
                    ev = task_events.TaskExit()
                    ev.ParseFromString(env.event.value)
                    self.clock.note(ev.container_id, ev.id, ev.exited_at.ToNanoseconds() / 1e9)
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(10)
        self.channel.close()


def bench_events(env: Env) -> list[Result]:
    n = env.iterations(60, 10)
    clock = ExitClock()
    results = []
    with sdk_client(env, "events", backend=clock) as client:
        sub = RawSubscriber(env.address, client.namespace)
        try:
            time.sleep(0.2)  # the raw subscription is live (no event to wait for)
            s = spec(env, "true")
            sdk_lat, raw_lat = [], []
            for i in range(n + 1):
                cid = f"ev-{i}"
                c = client.new_container(cid, s)
                t = c.start()
                got, exited = clock.wait(cid)
                raw_got, raw_exited = sub.clock.wait(cid)
                t.delete()
                c.delete()
                if i:  # the first is a warm-up
                    sdk_lat.append(got - exited)
                    raw_lat.append(raw_got - raw_exited)
        finally:
            sub.close()
    p50, p99 = percentile(sdk_lat, 0.5) * 1e3, percentile(sdk_lat, 0.99) * 1e3
    r50, r99 = percentile(raw_lat, 0.5) * 1e3, percentile(raw_lat, 0.99) * 1e3
    results.append(Result("events", "exit -> backend call, p50", "ms", p50, "raw Subscribe, p50", r50,
                          "p50 < 2 ms", p50 < 2.0, n=n, note="from TaskExit.exited_at (shim clock)"))
    results.append(Result("events", "exit -> backend call, p99", "ms", p99, "raw Subscribe, p99", r99, n=n))
    results.extend(_executor_throughput(env))
    return results


def _executor_throughput(env: Env) -> list[Result]:
    total = 50_000 if env.quick else 200_000
    reps = env.iterations(5, 2)

    def keyed(keys: int) -> float:
        ex = KeyedSerialExecutor(max_workers=4, name="bench-executor")
        seen = [0]

        def cb() -> None:
            seen[0] += 1

        t0 = time.perf_counter()
        try:
            for i in range(total):
                ex.submit(f"c{i % keys}", cb)
        finally:
            ex.close()
        elapsed = time.perf_counter() - t0
        assert seen[0] == total
        return total / elapsed

    def pool() -> float:
        seen = [0]

        def cb() -> None:
            seen[0] += 1

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
            for _ in range(total):
                ex.submit(cb)
        return total / (time.perf_counter() - t0)

    many: list[float] = []
    one: list[float] = []
    ref: list[float] = []
    for _ in range(reps):
        many.append(keyed(100))
        one.append(keyed(1))
        ref.append(pool())
    k100, k1, tp = statistics.median(many), statistics.median(one), statistics.median(ref)
    return [
        Result("events", "executor, 100 keys", "ev/s", k100, "ThreadPoolExecutor(4)", tp, ">= 100000/s",
               k100 >= 100_000, better="higher", n=reps, note=f"{total} no-op callbacks, 4 workers"),
        Result("events", "executor, 1 key", "ev/s", k1, "ThreadPoolExecutor(4)", tp, ">= 100000/s",
               k1 >= 100_000, better="higher", n=reps),
    ]


# -- 5. concurrent execs -----------------------------------------------------------------------


def _together(count: int, fn: Callable[[int], Any], timeout: float) -> tuple[float, list[BaseException]]:
    """Run fn(0..count-1) on threads released at once; the wall time until all ended, and errors."""
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        try:
            fn(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), name=f"bench-worker-{i}", daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    deadline = t0 + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        errors.append(TimeoutError(f"{sum(t.is_alive() for t in threads)} of {count} still running after {timeout} s"))
    return elapsed, errors


def bench_concurrent_exec(env: Env) -> list[Result]:
    count = 30
    reps = env.iterations(3, 1)
    pspec = oci.process_spec(["true"])
    results: dict[bool, list[float]] = {True: [], False: []}
    errors: dict[bool, list[str]] = {True: [], False: []}
    with sdk_client(env, "cexec-on", serialize_exec_starts=True) as on, \
            sdk_client(env, "cexec-off", serialize_exec_starts=False) as off:
        tasks = {
            True: on.new_container("sleeper", spec(env, "sleep", "3600")).start(),
            False: off.new_container("sleeper", spec(env, "sleep", "3600")).start(),
        }
        for rep in range(reps + 1):
            for serialize in (True, False):
                task = tasks[serialize]

                def one(i: int, task: Any = task, rep: int = rep) -> None:
                    p = task.exec(f"e{rep}-{i}", pspec)
                    p.wait(timeout=60)
                    p.delete()

                elapsed, errs = _together(count, one, timeout=90)
                if errs:
                    errors[serialize].append(f"{len(errs)} failed: {errs[0]}")
                if rep:
                    results[serialize].append(elapsed)
    rows = []
    med = {k: statistics.median(v) * 1e3 if v else float("nan") for k, v in results.items()}
    note_on = "; ".join(errors[True]) or "starts serialized per task (default)"
    note_off = "; ".join(errors[False]) or "concurrent starts (containerd/containerd#8557 before 1.6.22)"
    rows.append(Result("concurrent-exec", f"{count} execs at once, serialized", "ms", med[True], "not serialized",
                       med[False], n=reps, note=note_on))
    rows.append(Result("concurrent-exec", f"{count} execs at once, not serialized", "ms", med[False], n=reps,
                       note=note_off))
    return rows


# -- 6. scale ----------------------------------------------------------------------------------


def bench_scale(env: Env) -> list[Result]:
    sizes = (1, 10, 50)
    reps = env.iterations(3, 1)
    totals: dict[tuple[str, int], list[float]] = {}
    failures: list[str] = []
    with sdk_client(env, "scale") as client:
        raw = RawClient(env.address, client.namespace, os.path.join(env.work, "raw-" + client.namespace))
        s = spec(env, "true")
        try:
            for rep in range(reps + 1):
                for size in sizes:
                    def sdk(i: int, rep: int = rep, size: int = size) -> None:
                        c = client.new_container(f"s{rep}-{size}-{i}", s)
                        t = c.start()
                        t.wait()
                        t.delete()
                        c.delete()

                    def stubs(i: int, rep: int = rep, size: int = size) -> None:
                        raw.lifecycle(f"r{rep}-{size}-{i}", s)

                    pairs = [("sdk", sdk), ("raw", stubs)]
                    for name, fn in pairs if rep % 2 else pairs[::-1]:  # alternate who goes first
                        elapsed, errs = _together(size, fn, timeout=180)
                        if errs:
                            failures.append(f"{name} x{size}: {errs[0]}")
                        if rep:
                            totals.setdefault((name, size), []).append(elapsed)
        finally:
            raw.close()
    med = {k: statistics.median(v) * 1e3 for k, v in totals.items()}
    rows = []
    for size in sizes:
        per = med[("sdk", size)] / size
        target, verdict = "", None
        if size > 1:
            prev = sizes[sizes.index(size) - 1]
            growth = med[("sdk", size)] / med[("sdk", prev)]
            # Linear growth: N times the work takes at most N times as long (10% slack for noise).
            target = f"x{size // prev} work: <= {size / prev * 1.1:.1f}x time"
            verdict = growth <= size / prev * 1.1
            note = f"{growth:.2f}x the time of {prev}; {per:.1f} ms per container"
        else:
            note = f"{per:.1f} ms per container"
        if failures:
            note += "; FAILURES: " + "; ".join(failures[:2])
        rows.append(Result("scale", f"{size} lifecycles at once", "ms", med[("sdk", size)], "raw stubs, same",
                           med[("raw", size)], target, verdict, n=reps, note=note))
    return rows


# -- 7. import time and memory -----------------------------------------------------------------

_IMPORT_SNIPPET = """
import sys, time
t0 = time.perf_counter()
{stmt}
print(time.perf_counter() - t0)
"""

_RSS_SNIPPET = """
import os, sys, time, threading
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
before = rss()
mode, address = sys.argv[1], sys.argv[2]
if mode == "sdk":
    import libcontainerd
    class B:
        def process_event(self, *a): pass
    c = libcontainerd.new_client(address, sys.argv[3], "bench-idle", B())
    c.version()
else:
    import grpc
    from libcontainerd._api.containerd.api.services.tasks.v1 import tasks_pb2_grpc
    from libcontainerd._api.containerd.api.services.containers.v1 import containers_pb2_grpc
    from libcontainerd._api.containerd.api.services.events.v1 import events_pb2, events_pb2_grpc
    from libcontainerd._api.containerd.api.services.version.v1 import version_pb2_grpc
    from google.protobuf import empty_pb2
    ch = grpc.insecure_channel("unix://" + address)
    tasks_pb2_grpc.TasksStub(ch); containers_pb2_grpc.ContainersStub(ch)
    version_pb2_grpc.VersionStub(ch).Version(empty_pb2.Empty())
    sub = events_pb2_grpc.EventsStub(ch).Subscribe(events_pb2.SubscribeRequest(filters=["namespace==bench-idle"]),
                                                   metadata=(("containerd-namespace", "bench-idle"),))
time.sleep(1.0)
print(rss() - before, rss(), threading.active_count(), flush=True)  # os._exit skips the flush
os._exit(0)
"""


def _python(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False)
    if out.returncode:
        raise RuntimeError(f"subprocess failed: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def bench_startup(env: Env) -> list[Result]:
    reps = env.iterations(10, 3)
    stmts = {
        "lcd": "import libcontainerd",
        "lcd_full": "import libcontainerd; libcontainerd.new_client",
        "grpc": "import grpc",
        "stubs": "import grpc; import libcontainerd._api.containerd.api.services.tasks.v1.tasks_pb2_grpc",
    }
    times: dict[str, list[float]] = {k: [] for k in stmts}
    for _ in range(reps):
        for k, stmt in stmts.items():
            times[k].append(float(_python(_IMPORT_SNIPPET.format(stmt=stmt))))
    med = {k: median_ms(v) for k, v in times.items()}
    state = os.path.join(env.work, "idle-state")
    sdk_rss = _python(_RSS_SNIPPET, "sdk", env.address, state).split()
    raw_rss = _python(_RSS_SNIPPET, "raw", env.address, state).split()
    return [
        Result("startup", "import libcontainerd", "ms", med["lcd"], "import grpc", med["grpc"], n=reps,
               note="lazy: remote/grpc load on first use"),
        Result("startup", "import + load new_client", "ms", med["lcd_full"], "import grpc + tasks stub",
               med["stubs"], n=reps),
        Result("startup", "idle client RSS growth", "MiB", int(sdk_rss[0]) / 1024, "channel+stubs+Subscribe",
               int(raw_rss[0]) / 1024, n=1, note=f"threads: SDK {sdk_rss[2]}, raw {raw_rss[2]}"),
    ]


# -- 8. checkpoint and restore ------------------------------------------------------------------


def bench_checkpoint(env: Env) -> list[Result]:
    """CRIU dump and restore of a running `sleep`: the SDK (a directory) vs ctr (a checkpoint image).

    ``ctr containers checkpoint`` works only on a container made from an image, so ctr's runs
    on the same rootfs imported as one; ``ctr containers restore --live`` makes the container
    and its task from the image, and the SDK's restore is timed the same way: a new container,
    then ``start(checkpoint_dir=...)``. The kill and delete in between are not timed.
    """
    if not env.criu:
        raise RuntimeError("no CRIU passes `criu check` here (scripts/build-criu builds one)")
    n = env.iterations(10, 3)
    args = ["sleep", "3600"]
    with sdk_client(env, "checkpoint") as client:
        ctr = Ctr(env.address, env.namespace("checkpoint-ref"), env.work)
        image = "docker.io/library/lcd-bench-busybox:latest"
        archive = os.path.join(env.work, "busybox-image.tar")
        docker_archive(env.rootfs, archive, image)
        check(ctr.run("images", "import", archive), "ctr images import")
        s = spec(env, *args)

        def sdk(i: int) -> tuple[float, float]:
            task = client.new_container(f"sdk-{i}", s).start()
            target = os.path.join(env.work, f"checkpoint-sdk-{i}")
            dump = timed(lambda: task.create_checkpoint(target))
            task.force_delete()
            task.container.delete()
            restored: list[Any] = []
            restore = timed(lambda: restored.append(client.new_container(f"sdk-{i}", s).start(checkpoint_dir=target)))
            restored[0].force_delete()
            restored[0].container.delete()
            shutil.rmtree(target)
            return dump, restore

        def ctr_cr(i: int) -> tuple[float, float]:
            cid, ref = f"ctr-{i}", f"docker.io/library/lcd-bench-checkpoint:{i}"
            check(ctr.run_image(image, cid, *args), "ctr run -d")
            dump = timed(lambda: check(ctr.run("containers", "checkpoint", "--task", cid, ref), "ctr c checkpoint"))
            check(ctr.run("tasks", "rm", "--force", cid), "ctr t rm -f")
            check(ctr.run("containers", "rm", cid), "ctr c rm")
            restore = timed(lambda: check(ctr.run("containers", "restore", "--live", cid, ref), "ctr c restore"))
            check(ctr.run("tasks", "rm", "--force", cid), "ctr t rm -f")
            check(ctr.run("containers", "rm", cid), "ctr c rm")
            check(ctr.run("images", "rm", "--sync", ref), "ctr i rm")
            return dump, restore

        times: dict[str, list[tuple[float, float]]] = {"sdk": [], "ctr": []}
        variants = {"sdk": sdk, "ctr": ctr_cr}
        for i in range(1 + n):  # one warm-up round; the order alternates, as in interleave()
            for name in (["sdk", "ctr"] if i % 2 else ["ctr", "sdk"]):
                result = variants[name](i)
                if i:
                    times[name].append(result)
        check(ctr.run("images", "rm", "--sync", image), "ctr i rm")
    dump = {k: median_ms([d for d, _ in v]) for k, v in times.items()}
    restore = {k: median_ms([r for _, r in v]) for k, v in times.items()}
    return [
        Result("checkpoint", "checkpoint a running `sleep`", "ms", dump["sdk"], "ctr c checkpoint --task",
               dump["ctr"], n=n, note="SDK: pause, dump, image, extracted into a directory, image deleted; "
                                      "ctr: pause, dump, image kept (+ its Go process start)"),
        Result("checkpoint", "restore it as a new container", "ms", restore["sdk"], "ctr c restore --live",
               restore["ctr"], n=n, note="SDK: new_container + directory tarred into content + restore; "
                                        "ctr: container from the image (+ an overlay snapshot) + restore"),
    ]


BENCHMARKS: dict[str, Callable[[Env], list[Result]]] = {
    "lifecycle": bench_lifecycle,
    "exec": bench_exec,
    "stdout": bench_stdout,
    "events": bench_events,
    "concurrent-exec": bench_concurrent_exec,
    "scale": bench_scale,
    "startup": bench_startup,
    "checkpoint": bench_checkpoint,
}


def _register_image_benchmarks() -> None:
    # image_cases imports this module's helpers, so it is loaded once they exist.
    from image_cases import bench_image_lifecycle, bench_import, bench_pull

    BENCHMARKS.update({"pull": bench_pull, "import": bench_import, "image-lifecycle": bench_image_lifecycle})


_register_image_benchmarks()

"""Scale: one client holding N running containers with stdio, against the raw stubs doing the same work.

For each N (100 and 500; ``--quick``: 10 and 30; ``--scale-sizes`` overrides): N containers running
``sh -c 'echo up; sleep 1000'``, each started with ``stdio.capture()``, are started from a pool of
threads and held until every one has printed ``up``; then the client's threads, fds and RSS above
its baseline (taken while it already holds one such container, so that the stdio loop's fixed
share is not spread over N) are divided by N; with all of them running, short ``true`` containers measure
exit -> backend latency (the SDK's backend and a raw Subscribe on the same namespace, as in the
``events`` case); then one exec into each; then a second client re-attaches (``attach_task`` with
``stdio.capture()``) to all N and is closed, timed, with what it left behind counted; and all are
stopped (SIGKILL, wait, delete). The raw
stubs (``refs.RawClient``) do the same phases in a namespace of their own, without stdio (a bare
stub has no FIFO copying; that difference is part of what the SDK costs). Wall time and this
process's CPU per phase are reported per container. Targets are issue 12's; they are checked,
never asserted. Everything is removed even when a phase fails.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from typing import Any, Callable

from cases import Env, ExitClock, NullBackend, RawSubscriber, Result, percentile, spec
from refs import RawClient

import libcontainerd
from libcontainerd import _procfs, oci, stdio, testing

POOL = 16  # threads that start/exec/stop the containers, as a service's worker pool would
HELD = ("sh", "-c", "echo up; sleep 1000")
PHASES = ("start", "exec", "stop")


def _rss_kib() -> int:
    return int(_procfs.status()["VmRSS"].split()[0])


def _usage() -> tuple[int, int, int]:
    """Threads, fds and RSS (KiB) of this process now."""
    return threading.active_count(), testing.open_fds(), _rss_kib()


def _each(n: int, fn: Callable[[int], Any]) -> tuple[float, float]:
    """Run ``fn(0..n-1)`` on a pool of POOL threads, joined before returning; (wall s, CPU s).

    The first error is raised after every call has finished, so that clean-up sees a settled state.
    """
    c0, t0 = time.process_time(), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(POOL, thread_name_prefix="bench-scale") as pool:
        futures = [pool.submit(fn, i) for i in range(n)]
        concurrent.futures.wait(futures)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    for f in futures:
        f.result()
    return wall, cpu


def _until(what: str, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _exit_latency(env: Env, start_one: Callable[[str], None], clock: ExitClock, namespace: str,
                  probes: int) -> tuple[list[float], list[float]]:
    """exit -> backend (SDK) and exit -> raw Subscribe latencies of ``probes`` short containers, s."""
    sub = RawSubscriber(env.address, namespace)
    sdk_lat, raw_lat = [], []
    try:
        time.sleep(0.2)  # the raw subscription is live (no event to wait for)
        for i in range(probes + 1):
            cid = f"probe-{i}"
            start_one(cid)
            got, exited = clock.wait(cid, timeout=60)
            raw_got, raw_exited = sub.clock.wait(cid, timeout=60)
            if i:  # the first is a warm-up
                sdk_lat.append(got - exited)
                raw_lat.append(raw_got - raw_exited)
    finally:
        sub.close()
    return sdk_lat, raw_lat


class _Run:
    """One N: per-phase (wall, CPU) in seconds, the per-container usage, and (SDK run only) the exit
    latencies of the SDK's backend and of a raw subscriber on the same namespace."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.times: dict[str, tuple[float, float]] = {}
        self.per: tuple[float, float, float] = (0.0, 0.0, 0.0)  # threads, fds, RSS KiB per container
        self.threads_total = 0  # threads the client (or raw stubs) started, without this harness's own
        self.latency: tuple[list[float], list[float]] = ([], [])
        self.close: tuple[float, int, int] = (0.0, 0, 0)  # close() with N attached: wall s, fds and threads left


def _sdk(env: Env, n: int, probes: int) -> _Run:
    run = _Run(n)
    clock = ExitClock()
    ns = env.namespace("scale-stdio")
    harness = threading.active_count()  # main, and the supervisor's threads of the daemon this run started
    client = libcontainerd.new_client(env.address, os.path.join(env.work, "state-" + ns), ns, clock, timeout=120)
    held: list[tuple[libcontainerd.Container, libcontainerd.Task, stdio.Capture]] = []
    lock = threading.Lock()
    s = spec(env, *HELD)
    true = spec(env, "true")
    try:
        client.version()  # the connection and the event stream are up before the baseline
        # One container held before the baseline: the stdio loop (its thread, epoll fd and wake-up
        # pipe) and the delivery pool then exist already, so what is divided by N is what each
        # further container costs, not the loop's fixed share (which the totals row counts).
        anchor = stdio.capture()
        client.new_container("anchor", s).start(attach_stdio=anchor)
        _until("'up' from the anchor container", lambda: anchor.stdout == b"up\n")
        base = _usage()

        def start(i: int) -> None:
            out = stdio.capture()
            ctr = client.new_container(f"c{i}", s)
            task = ctr.start(attach_stdio=out)
            with lock:
                held.append((ctr, task, out))

        run.times["start"] = _each(n, start)
        _until("'up' from every container", lambda: all(out.stdout == b"up\n" for _, _, out in held))
        now = _usage()
        run.threads_total = now[0] - harness
        run.per = ((now[0] - base[0]) / n, (now[1] - base[1]) / n, (now[2] - base[2]) / n)

        def probe(cid: str) -> None:
            ctr = client.new_container(cid, true)
            task = ctr.start()
            task.wait()
            task.delete()
            ctr.delete()

        run.latency = _exit_latency(env, probe, clock, ns, probes)
        pspec = oci.process_spec(["true"])

        def exec_one(i: int) -> None:
            p = held[i][1].exec("x", pspec)
            p.wait()
            p.delete()

        run.times["exec"] = _each(n, exec_one)
        run.close = _close_attached(env, client, n)

        def stop(i: int) -> None:
            ctr, task, out = held[i]
            task.kill("SIGKILL")
            task.wait()
            task.delete()
            out.wait(30)
            ctr.delete()

        run.times["stop"] = _each(n, stop)
    finally:
        testing.remove_containers(client)
        client.close()
    return run


def _close_attached(env: Env, client: libcontainerd.Client, n: int) -> tuple[float, int, int]:
    """A second client attaches to all N running tasks with stdio; its close() is timed (wall s), and what
    it leaves behind is counted (fds and threads that were not there before it; the first client's
    idle workers may end meanwhile, which is not the second's doing)."""
    fds, threads = _procfs.fds(), threading.enumerate()
    other = libcontainerd.new_client(env.address, client.state_dir, client.namespace, NullBackend(), timeout=120)
    try:
        _each(n, lambda i: other.load_container(f"c{i}").attach_task(stdio.capture()))
    finally:
        t0 = time.perf_counter()
        other.close()
        wall = time.perf_counter() - t0
    return wall, len(_new_fds(fds)), len(testing.leftover_threads(threads, prefix=""))


def _new_fds(before: set[int]) -> list[str]:
    """What the descriptors opened since ``before`` point at, without the one that lists them."""
    targets = []
    for fd in sorted(_procfs.fds() - before):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the lister's own, closed by now
            continue
        if not target.startswith("/proc/"):
            targets.append(target)
    return targets


def _raw(env: Env, n: int) -> _Run:
    run = _Run(n)
    ns = env.namespace("scale-raw")
    harness = threading.active_count()
    raw = RawClient(env.address, ns, os.path.join(env.work, "raw-" + ns))
    s = spec(env, *HELD)
    try:
        base = _usage()

        def start(i: int) -> None:
            raw.create_container(f"c{i}", s)
            raw.start_task(f"c{i}")

        run.times["start"] = _each(n, start)
        now = _usage()
        run.threads_total = now[0] - harness
        run.per = ((now[0] - base[0]) / n, (now[1] - base[1]) / n, (now[2] - base[2]) / n)
        pspec = oci.process_spec(["true"])
        run.times["exec"] = _each(n, lambda i: raw.exec(f"c{i}", "x", pspec))
        run.times["stop"] = _each(n, lambda i: raw.kill_and_delete(f"c{i}"))
    finally:
        raw.close()
        # whatever a failed phase left: the SDK's force-delete works on any namespace
        with libcontainerd.new_client(env.address, raw.state_dir, ns, NullBackend(), timeout=120) as cleaner:
            testing.remove_containers(cleaner)
    return run


def sizes(env: Env) -> tuple[int, ...]:
    return env.scale_sizes or ((10, 30) if env.quick else (100, 500))


def bench_scale_stdio(env: Env) -> list[Result]:
    ns_ = sizes(env)
    probes = 20 if not env.quick else 5
    runs = [(_sdk(env, n, probes), _raw(env, n)) for n in ns_]
    rows: list[Result] = []
    b = "scale-stdio"
    for sdk, raw in runs:
        n = sdk.n
        rows.append(Result(b, f"{n} held: threads the client started", "threads", float(sdk.threads_total),
                           "raw stubs, no stdio", float(raw.threads_total), "<= 8, same at every N",
                           sdk.threads_total <= 8, n=n))
        for k, (metric, unit, target, limit) in enumerate((
                ("threads per running container", "threads", "", None),
                ("fds per running container (stdout+stderr)", "fds", "<= 2", 2.0),
                ("RSS per running container", "KiB", "<= 40 KiB", 40.0))):
            rows.append(Result(b, f"{n} held: {metric}", unit, sdk.per[k], "raw stubs, no stdio", raw.per[k],
                               target, None if limit is None else sdk.per[k] <= limit, n=n))
        for phase in PHASES:
            (wall, cpu), (rwall, rcpu) = sdk.times[phase], raw.times[phase]
            rows.append(Result(b, f"{n}: {phase}, wall per container", "ms", wall / n * 1e3, "raw stubs, same",
                               rwall / n * 1e3, n=n, note=f"{wall:.1f} s for all {n} (raw {rwall:.1f} s)"))
            if phase != "start":  # start's CPU includes the SDK's stdio set-up, which the raw stub has not
                verdict: bool | None = cpu / rcpu <= 1.15 if rcpu else None
                target = "<= 1.15x raw"
            else:
                verdict, target = None, ""
            rows.append(Result(b, f"{n}: {phase}, client CPU per container", "ms", cpu / n * 1e3, "raw stubs, same",
                               rcpu / n * 1e3, target, verdict, n=n))
        wall, fds_left, threads_left = sdk.close
        rows.append(Result(b, f"{n} held: close() of a client with {n} attached", "s", wall, target="<= 2 s",
                           verdict=wall <= 2.0 and not fds_left and not threads_left, n=n,
                           note=f"left behind: {fds_left} fds, {threads_left} threads"))
        sdk_lat, raw_lat = sdk.latency
        p50, p99 = percentile(sdk_lat, 0.5) * 1e3, percentile(sdk_lat, 0.99) * 1e3
        r50, r99 = percentile(raw_lat, 0.5) * 1e3, percentile(raw_lat, 0.99) * 1e3
        rows.append(Result(b, f"{n} held: exit -> backend, p50", "ms", p50, "raw Subscribe, p50", r50,
                           n=len(sdk_lat), note="short containers started one by one while all N run"))
        rows.append(Result(b, f"{n} held: exit -> backend, p99", "ms", p99, "raw Subscribe, p99", r99,
                           "<= 10 ms", p99 <= 10.0, n=len(sdk_lat)))
    (small, _), (large, _) = runs[0], runs[-1]
    if large.n != small.n:
        growth = []
        for phase in PHASES:
            a, z = small.times[phase][0] / small.n, large.times[phase][0] / large.n
            growth.append(f"{phase} wall {a * 1e3:.1f} -> {z * 1e3:.1f} ms ({z / a:.2f}x)")
        for k, what in enumerate(("threads", "fds", "RSS KiB")):
            growth.append(f"{what} {small.per[k]:.2f} -> {large.per[k]:.2f}")
        per_small = sum(small.times[p][0] for p in PHASES) / small.n
        per_large = sum(large.times[p][0] for p in PHASES) / large.n
        rows.append(Result(b, f"cost per container, {large.n} vs {small.n}: start+exec+stop wall", "x",
                           per_large / per_small, target="1.00x (flat)", n=large.n,
                           note="per container, " + "; ".join(growth)))
    return rows

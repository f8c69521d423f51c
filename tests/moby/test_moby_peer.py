"""dockerd 28 and the SDK on one containerd: the SDK sees what dockerd runs, as dockerd itself sees it.

dockerd's containers live in containerd's namespace ``moby``. An SDK client there lists them, loads
them with dockerd's spec and bundle label, finds their running task, and receives the task events
that dockerd's own libcontainerd receives (read from dockerd's debug log), with the exit code that
``docker wait``, ``docker inspect`` and ``docker events`` report. Once dockerd has handled an exit it
deletes containerd's task and container (docker keeps its own record until ``docker rm``), and the
SDK sees them gone. The other way round, a signal sent through the SDK ends dockerd's container with
the code dockerd then reports.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import libcontainerd
from libcontainerd import errdefs, testing
from libcontainerd.types import EventType, Status

from .conftest import Dockerd, docker_events, wait_until

BUNDLE_LABEL = "com.docker/engine.bundle.path"
LIFECYCLE = [EventType.CREATE, EventType.START, EventType.EXIT]


def _gone_from_containerd(client: libcontainerd.Client, container_id: str) -> bool:
    try:
        client.load_container(container_id)
    except errdefs.NotFound:
        return container_id not in [c.id for c in client.list_containers()]
    return False


def _run_gated(dockerd: Dockerd, image: str, gate: Path, script: str) -> str:
    """``docker run -d`` a busybox sh script that sees the host dir ``gate`` as /gate; the full container id."""
    gate.mkdir()
    return dockerd.docker("run", "-d", "--network", "none", "-v", f"{gate}:/gate", image, "sh", "-c", script)


def test_the_sdk_sees_dockerds_container_and_the_task_events_dockerd_gets(
    dockerd: Dockerd, image: str, moby_client: libcontainerd.Client, recorder: testing.RecordingBackend, tmp_path: Path
) -> None:
    since, mark = time.time(), dockerd.log_offset()
    script = "until [ -e /gate/go ]; do sleep 0.05; done; exit 7"
    cid = _run_gated(dockerd, image, tmp_path / "gate", script)

    created = recorder.wait_for(cid, EventType.CREATE)
    started = recorder.wait_for(cid, EventType.START)
    pid = int(dockerd.docker("inspect", "--format", "{{.State.Pid}}", cid))
    assert created.pid == started.pid == pid
    assert cid in [c.id for c in moby_client.list_containers()]
    ctr = moby_client.load_container(cid)
    assert ctr.labels[BUNDLE_LABEL] == os.path.join(dockerd.exec_root, "containerd", cid)
    assert ctr.spec["process"]["args"] == ["sh", "-c", script]
    assert ctr.runtime == "io.containerd.runc.v2"
    task = ctr.task()
    assert (task.pid, task.status()) == (pid, Status.RUNNING)

    (tmp_path / "gate" / "go").touch()
    assert dockerd.docker("wait", cid) == "7"
    exited = recorder.wait_for(cid, EventType.EXIT)
    assert (exited.process_id, exited.pid, exited.exit_code) == (cid, pid, 7)
    assert exited.exited_at is not None
    assert recorder.of(cid) == [(t, cid) for t in LIFECYCLE]
    assert dockerd.task_events_since(mark) == LIFECYCLE
    assert dockerd.docker("inspect", "--format", "{{.State.ExitCode}}", cid) == "7"
    events = docker_events(dockerd, cid, since, "die")
    assert [e["Action"] for e in events] == ["create", "start", "die"]
    assert events[-1]["Actor"]["Attributes"]["exitCode"] == "7"

    # dockerd deletes containerd's task and container once it has handled the exit; docker keeps its
    # own record of the container until `docker rm`.
    wait_until(lambda: _gone_from_containerd(moby_client, cid), f"dockerd to delete {cid} from containerd")
    assert dockerd.docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.State}}") == f"{cid} exited"
    dockerd.docker("rm", cid)
    assert dockerd.docker("ps", "-aq", "--no-trunc") == ""
    assert _gone_from_containerd(moby_client, cid)
    assert recorder.of(cid) == [(t, cid) for t in LIFECYCLE]


def test_docker_rm_force_is_an_exit_137_for_the_sdk_and_then_the_container_is_gone(
    dockerd: Dockerd, image: str, moby_client: libcontainerd.Client, recorder: testing.RecordingBackend
) -> None:
    since, mark = time.time(), dockerd.log_offset()
    cid = dockerd.docker("run", "-d", "--network", "none", image, "sleep", "1000")
    started = recorder.wait_for(cid, EventType.START)
    assert moby_client.load_container(cid).task().status() is Status.RUNNING

    dockerd.docker("rm", "--force", cid)
    exited = recorder.wait_for(cid, EventType.EXIT)
    assert (exited.pid, exited.exit_code) == (started.pid, 137)
    wait_until(lambda: _gone_from_containerd(moby_client, cid), f"{cid} to be gone from containerd")
    assert dockerd.docker("ps", "-aq", "--no-trunc") == ""
    assert recorder.of(cid) == [(t, cid) for t in LIFECYCLE]
    assert dockerd.task_events_since(mark) == LIFECYCLE
    events = docker_events(dockerd, cid, since, "destroy")
    assert [e["Action"] for e in events] == ["create", "start", "kill", "die", "destroy"]
    assert events[3]["Actor"]["Attributes"]["exitCode"] == "137"


def test_a_signal_sent_through_the_sdk_ends_dockerds_container_with_the_code_dockerd_reports(
    dockerd: Dockerd, image: str, moby_client: libcontainerd.Client, recorder: testing.RecordingBackend, tmp_path: Path
) -> None:
    mark = dockerd.log_offset()
    # sh as pid 1 ignores SIGTERM unless it traps it; /gate/ready says the trap is set.
    script = "trap 'exit 3' TERM; touch /gate/ready; while :; do sleep 0.05; done"
    cid = _run_gated(dockerd, image, tmp_path / "gate", script)
    wait_until((tmp_path / "gate" / "ready").exists, "the container to trap SIGTERM")

    moby_client.load_container(cid).task().kill(signal.SIGTERM)
    assert dockerd.docker("wait", cid) == "3"
    assert recorder.wait_for(cid, EventType.EXIT).exit_code == 3
    assert dockerd.docker("inspect", "--format", "{{.State.ExitCode}} {{.State.Status}}", cid) == "3 exited"
    assert recorder.of(cid) == [(t, cid) for t in LIFECYCLE]
    assert dockerd.task_events_since(mark) == LIFECYCLE
    dockerd.docker("rm", cid)
    wait_until(lambda: _gone_from_containerd(moby_client, cid), f"{cid} to be gone from containerd")


def test_docker_exec_reaches_the_sdk_as_the_exec_events_dockerd_gets(
    dockerd: Dockerd, image: str, moby_client: libcontainerd.Client, recorder: testing.RecordingBackend
) -> None:
    since, mark = time.time(), dockerd.log_offset()
    cid = dockerd.docker("run", "-d", "--network", "none", image, "sleep", "1000")
    recorder.wait_for(cid, EventType.START)

    assert dockerd.run("exec", cid, "sh", "-c", "exit 5", check=False).returncode == 5
    events = docker_events(dockerd, cid, since, "exec_die")
    exec_id = events[-1]["Actor"]["Attributes"]["execID"]
    assert events[-1]["Actor"]["Attributes"]["exitCode"] == "5"
    exited = recorder.wait_for(cid, EventType.EXIT, exec_id)
    assert exited.exit_code == 5
    assert exited.pid == recorder.wait_for(cid, EventType.EXEC_STARTED, exec_id).pid
    assert recorder.of(cid) == [(EventType.CREATE, cid), (EventType.START, cid), (EventType.EXEC_ADDED, exec_id),
                                (EventType.EXEC_STARTED, exec_id), (EventType.EXIT, exec_id)]
    assert moby_client.load_container(cid).task().status() is Status.RUNNING

    dockerd.docker("rm", "--force", cid)
    assert recorder.wait_for(cid, EventType.EXIT, cid).exit_code == 137
    assert dockerd.task_events_since(mark) == [t for t, _ in recorder.of(cid)]
    wait_until(lambda: _gone_from_containerd(moby_client, cid), f"{cid} to be gone from containerd")

"""The references the SDK is measured against: the raw generated stubs and Debian's ``ctr``.

``RawClient`` makes exactly the RPCs that ``libcontainerd.remote`` makes for the same work
(read from ``remote/_client.py``, ``_container.py`` and ``_process.py``), with nothing around
them: no validation, no error mapping, no tracker, no event stream. ``Ctr`` runs the ``ctr``
binary against the same socket, namespace, rootfs and runtime (a spec file, no image, no
snapshot) -- except for checkpoints: ``ctr containers checkpoint`` refuses a container not
made from an image, so :func:`docker_archive` packs the same rootfs as an image for ctr to
import. ``GoBench`` runs containerd's own Go client (``gobench``, built from
``benchmarks/gobench``) doing the same work with the same spec; it measures its own iterations
and prints their median. Nothing else here measures time; the cases in ``cases.py`` do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2

from libcontainerd import testing
from libcontainerd._api.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from libcontainerd._api.containerd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from libcontainerd._api.containerd.runtime.v2.runc.options import oci_pb2 as runc_options

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
BUNDLE_LABEL = "com.docker/engine.bundle.path"
SHIM = "io.containerd.runc.v2"


class RawClient:
    """One gRPC channel and the two stubs a lifecycle needs; calls carry the namespace header."""

    def __init__(self, address: str, namespace: str, state_dir: str) -> None:
        self.channel = grpc.insecure_channel("unix://" + address)
        self.containers = containers_pb2_grpc.ContainersStub(self.channel)  # type: ignore[no-untyped-call]
        self.tasks = tasks_pb2_grpc.TasksStub(self.channel)  # type: ignore[no-untyped-call]
        self.md = (("containerd-namespace", namespace),)
        self.state_dir = state_dir
        os.makedirs(state_dir, exist_ok=True)

    def close(self) -> None:
        self.channel.close()

    def create_container(self, cid: str, spec: Mapping[str, Any]) -> None:
        """``Client.new_container``: bundle dir, then Containers.Create with the bundle label."""
        bundle = os.path.join(self.state_dir, cid)
        os.mkdir(bundle, 0o755)
        any_spec = any_pb2.Any(type_url=SPEC_URL, value=json.dumps(spec).encode())
        container = containers_pb2.Container(
            id=cid, labels={BUNDLE_LABEL: bundle}, runtime=containers_pb2.Container.Runtime(name=SHIM), spec=any_spec
        )
        self.containers.Create(containers_pb2.CreateContainerRequest(container=container), metadata=self.md)

    def start_task(self, cid: str) -> int:
        """``Container.start`` without stdio: Tasks.Create with runc options (io_uid/io_gid), Tasks.Start."""
        options = runc_options.Options(io_uid=0, io_gid=0)
        opts = any_pb2.Any(type_url=RUNC_OPTIONS_URL, value=options.SerializeToString())
        resp = self.tasks.Create(tasks_pb2.CreateTaskRequest(container_id=cid, options=opts), metadata=self.md)
        self.tasks.Start(tasks_pb2.StartRequest(container_id=cid), metadata=self.md)
        return int(resp.pid)

    def wait(self, cid: str, exec_id: str = "") -> int:
        resp = self.tasks.Wait(tasks_pb2.WaitRequest(container_id=cid, exec_id=exec_id), metadata=self.md)
        return int(resp.exit_status)

    def delete_task(self, cid: str) -> int:
        resp = self.tasks.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=self.md)
        return int(resp.exit_status)

    def delete_container(self, cid: str) -> None:
        """``Container.delete``: Tasks.Get (refuse while a task exists, as Go's client does), Containers.Delete."""
        try:
            self.tasks.Get(tasks_pb2.GetRequest(container_id=cid), metadata=self.md)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            raise RuntimeError(f"container {cid} still has a task")
        self.containers.Delete(containers_pb2.DeleteContainerRequest(id=cid), metadata=self.md)
        shutil.rmtree(os.path.join(self.state_dir, cid), ignore_errors=True)

    def kill_and_delete(self, cid: str) -> None:
        """SIGKILL the task, wait for it, delete it and the container (clean-up, not measured)."""
        waiter = self.tasks.Wait.future(tasks_pb2.WaitRequest(container_id=cid), metadata=self.md)
        self.tasks.Kill(tasks_pb2.KillRequest(container_id=cid, signal=9, all=True), metadata=self.md)
        waiter.result(timeout=30)
        self.delete_task(cid)
        self.delete_container(cid)

    def lifecycle(self, cid: str, spec: Mapping[str, Any]) -> int:
        """create -> start -> wait -> delete, as ``new_container``/``start``/``wait``/``delete``/``delete``."""
        self.create_container(cid, spec)
        self.start_task(cid)
        code = self.wait(cid)
        self.delete_task(cid)
        self.delete_container(cid)
        return code

    def exec(self, cid: str, exec_id: str, process: Mapping[str, Any]) -> int:
        """``Task.exec`` without stdio, then ``wait`` and ``delete``: Exec, Wait (sent before Start, as
        the SDK and containerd's Go client do), Start, the Wait's answer, DeleteProcess."""
        any_spec = any_pb2.Any(type_url=PROCESS_URL, value=json.dumps(process).encode())
        request = tasks_pb2.ExecProcessRequest(container_id=cid, exec_id=exec_id, spec=any_spec)
        self.tasks.Exec(request, metadata=self.md)
        waiter = self.tasks.Wait.future(tasks_pb2.WaitRequest(container_id=cid, exec_id=exec_id), metadata=self.md)
        self.tasks.Start(tasks_pb2.StartRequest(container_id=cid, exec_id=exec_id), metadata=self.md)
        code = int(waiter.result().exit_status)
        self.tasks.DeleteProcess(tasks_pb2.DeleteProcessRequest(container_id=cid, exec_id=exec_id), metadata=self.md)
        return code


class Ctr:
    """Debian's ``ctr`` on the private daemon; FIFOs go to a private dir, never /run/containerd."""

    def __init__(self, address: str, namespace: str, work_dir: str, binary: str | None = None) -> None:
        found = binary or testing.containerd_tool("ctr")
        if found is None:
            raise FileNotFoundError("ctr is not installed (apt-get install containerd)")
        self.binary = found
        self.base = [found, "--address", address, "--namespace", namespace]
        self.work_dir = work_dir
        self.fifo_dir = os.path.join(work_dir, "ctr-fifo")
        os.makedirs(self.fifo_dir, exist_ok=True)

    def write_spec(self, name: str, spec: Mapping[str, Any]) -> str:
        path = os.path.join(self.work_dir, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        return path

    def run_rm(self, cid: str, config: str, *, null_io: bool = True, **popen: Any) -> subprocess.Popen[bytes]:
        """``ctr run --rm [--null-io] --config <spec> <id>`` (the spec's root.path is the rootfs)."""
        argv = [*self.base, "run", "--rm", "--fifo-dir", self.fifo_dir, "--config", config, cid]
        if null_io:
            argv.insert(argv.index("--rm") + 1, "--null-io")
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("stdout", subprocess.DEVNULL)
        popen.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(argv, **popen)

    def exec(self, cid: str, exec_id: str, *args: str) -> subprocess.Popen[bytes]:
        """``ctr task exec --exec-id <id> <container> <args>`` (ctr always gives an exec FIFO stdio)."""
        argv = [*self.base, "task", "exec", "--fifo-dir", self.fifo_dir, "--exec-id", exec_id, cid, *args]
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


    def run(self, *args: str) -> subprocess.Popen[bytes]:
        """``ctr <args>`` on this daemon and namespace (for ``check``)."""
        return subprocess.Popen([*self.base, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    def run_image(self, image: str, cid: str, *args: str) -> subprocess.Popen[bytes]:
        """``ctr run -d --null-io <image> <id> <args>``: a detached container of an imported image."""
        return self.run("run", "-d", "--null-io", "--fifo-dir", self.fifo_dir, image, cid, *args)


def docker_archive(rootfs: str, path: str, name: str) -> None:
    """Write ``rootfs`` as a one-layer image in docker-archive format, for ``ctr images import``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    layer = buf.getvalue()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}})
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [name], "Layers": ["layer.tar"]}])
    with tarfile.open(path, "w") as tar:
        for member, data in (("layer.tar", layer), ("config.json", config.encode()),
                             ("manifest.json", manifest.encode())):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def check(proc: subprocess.Popen[bytes], what: str, timeout: float = 120.0) -> None:
    """Wait for a ctr process; raise with its stderr when it failed."""
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed with rc {proc.returncode}: {(err or b'').decode(errors='replace').strip()}")


#: Where ``gobench`` is looked for when no path is given: built into the checkout's cache.
GOBENCH_DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "gobench")


def find_gobench(path: str | None) -> str | None:
    """The gobench binary to use: ``path`` if given ('' = none), else the checkout's .cache/gobench if built."""
    if path is not None:
        return path or None
    return GOBENCH_DEFAULT if os.access(GOBENCH_DEFAULT, os.X_OK) else None


class GoBench:
    """containerd's Go client in its own process: ``gobench -mode lifecycle|exec -n N`` on our socket.

    It works in its own namespace (``gobench``) with the spec it is given (the SDK's, so both run
    the same runtime spec) and prints the median of its N iterations, which is what ``median_ms``
    returns. Process start, connection and (for exec) the sleeper container are outside its timing.
    """

    def __init__(self, binary: str, address: str, spec: Mapping[str, Any], work_dir: str) -> None:
        self.binary = binary
        self.address = address
        self.spec_path = os.path.join(work_dir, "gobench-spec.json")
        with open(self.spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)

    def median_ms(self, mode: str, n: int, timeout: float = 300.0) -> float:
        argv = [self.binary, "-a", self.address, "-spec", self.spec_path, "-mode", mode, "-n", str(n)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        found = re.search(r"median_ms=([0-9.]+)", out.stdout)
        if out.returncode != 0 or found is None:
            raise RuntimeError(f"gobench -mode {mode} failed with rc {out.returncode}: {out.stderr.strip()[-300:]}")
        return float(found.group(1))

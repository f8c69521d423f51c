"""Containers: creation with a bundle dir, loading, task start and attach, deletion.

A :class:`Container` caches what containerd said about it when it was created or loaded
(labels, spec, runtime) and, like moby, does not ask again: starting a task costs the
Create and Start calls and nothing more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

import attrs

from .. import errdefs
from .._api.containerd.api.services.tasks.v1 import tasks_pb2
from .._api.containerd.api.types import descriptor_pb2
from .._api.containerd.api.types.task import task_pb2 as task_types
from .._api.containerd.runtime.v2.runc.options import oci_pb2 as runc_options
from .._typeurl import pack_message
from . import _bundle
from ._process import Stdio, StdioCallback, Task, stdin_closer

if TYPE_CHECKING:
    from ._client import Client

log = logging.getLogger("libcontainerd")

RUNC_OPTIONS = "containerd.runc.v1.Options"


@attrs.frozen
class ContainerRootfs:
    """The image snapshot a container runs on, as its container record names it."""

    image: str
    snapshotter: str
    key: str


class Container:
    """A containerd container of one client's namespace.

    >>> ctr = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"]))  # doctest: +SKIP
    >>> task = ctr.start()  # doctest: +SKIP
    """

    def __init__(
        self,
        client: Client,
        container_id: str,
        *,
        spec: Mapping[str, Any],
        labels: Mapping[str, str],
        runtime: str,
        runtime_options: Optional[Any] = None,
        snapshot: Optional[ContainerRootfs] = None,
    ) -> None:
        self._client = client
        self.snapshot = snapshot
        self.id = container_id
        self.spec = spec
        self.labels = dict(labels)
        self.runtime = runtime
        self._runtime_options = runtime_options  # google.protobuf.Any or None

    @property
    def bundle_dir(self) -> str:
        """The bundle directory (from the ``com.docker/engine.bundle.path`` label)."""
        path = self.labels.get(_bundle.BUNDLE_LABEL)
        if not path:
            raise errdefs.InvalidParameter(f"container {self.id} has no bundle label {_bundle.BUNDLE_LABEL!r}")
        return path

    def _what(self) -> str:
        return f"container {self.id}"

    def _task_options(self) -> Optional[Any]:
        """runc options for the task: the container's, with io_uid/io_gid of the process user."""
        if self._runtime_options is not None and self._runtime_options.type_url.endswith(RUNC_OPTIONS):
            opts = runc_options.Options()
            opts.ParseFromString(self._runtime_options.value)
        elif "runc" in self.runtime:
            opts = runc_options.Options()
        else:
            return self._runtime_options
        uid, gid = _bundle.process_host_user(self.spec)
        opts.io_uid, opts.io_gid = uid, gid
        return pack_message(opts)

    def start(
        self,
        checkpoint_dir: Optional[str] = None,
        with_stdin: bool = False,
        attach_stdio: Optional[StdioCallback] = None,
    ) -> Task:
        """Create and start the container's task.

        Args:
            checkpoint_dir: restore from a CRIU checkpoint directory instead of a fresh start.
            with_stdin: make a stdin FIFO (needed by a callback that feeds stdin).
            attach_stdio: ``(DirectIO) -> IO`` callback such as ``stdio.capture()``; ``None``
                gives the process no stdio (``/dev/null``).

        Raises:
            errdefs.Conflict: the container has a task already.
            errdefs.InvalidParameter: a missing or unreadable checkpoint dir.

        >>> out = stdio.capture()  # doctest: +SKIP
        >>> task = ctr.start(attach_stdio=out)  # doctest: +SKIP
        """
        client = self._client
        checkpoint: Optional[descriptor_pb2.Descriptor] = None
        uploaded = None
        if checkpoint_dir is not None:
            from ._checkpoint import upload_checkpoint_dir

            uploaded = upload_checkpoint_dir(client, checkpoint_dir, self.id)
            checkpoint = uploaded.descriptor
        try:
            return self._start(checkpoint, with_stdin, attach_stdio)
        finally:
            if uploaded is not None:
                uploaded.delete()

    def _start(
        self, checkpoint: Optional[descriptor_pb2.Descriptor], with_stdin: bool, attach_stdio: Optional[StdioCallback]
    ) -> Task:
        client = self._client
        terminal = bool((self.spec.get("process") or {}).get("terminal", False))
        options = self._task_options()
        stdio: Optional[Stdio] = None
        if attach_stdio is not None:
            stdio = Stdio.open(self.bundle_dir, self.id, with_stdin=with_stdin, terminal=terminal,
                               attach_stdio=attach_stdio, close_stdin=stdin_closer(client._conn, self.id, ""))
        stdin, stdout, stderr = stdio.paths() if stdio else ("", "", "")
        request = tasks_pb2.CreateTaskRequest(
            container_id=self.id, stdin=stdin, stdout=stdout, stderr=stderr, terminal=terminal,
            checkpoint=checkpoint, options=options,
        )
        try:
            if self.snapshot is not None:
                from . import _unpack

                request.rootfs.extend(_unpack.mounts(client._conn, self.snapshot.snapshotter, self.snapshot.key,
                                                     f"container {self.id}"))
            resp = client._conn.call(client._conn.tasks.Create, request, f"task {self.id}")
        except BaseException:
            if stdio is not None:
                stdio.release(drain=False)
            raise
        task = Task(self, int(resp.pid), stdio)
        if stdio is not None:
            stdio.connected()
        try:
            client._conn.call(client._conn.tasks.Start, tasks_pb2.StartRequest(container_id=self.id), f"task {self.id}")
        except BaseException:
            try:
                task._delete_after_failed_start()
            except errdefs.LibcontainerdError as exc:
                log.error("failed to delete task %s after its start failed: %s", self.id, exc,
                          extra={"container_id": self.id, "namespace": client.namespace})
                task._release()
            raise
        client._tracker.started(self.id, self.id, task.pid)
        return task

    def attach_task(self, attach_stdio: StdioCallback) -> Task:
        """Re-open the running task's FIFOs (e.g. after this service restarted).

        The FIFOs are those the task was started with in ``<bundle dir>``; a task started
        without ``attach_stdio`` has none to re-open.

        Raises:
            errdefs.NotFound: the container has no task (or the task has no FIFOs).

        >>> task = client.load_container("web").attach_task(stdio.attach(stdout=sys.stdout.buffer))  # doctest: +SKIP
        """
        proc = self._get_task()
        terminal = bool((self.spec.get("process") or {}).get("terminal", False))
        stdio = Stdio.open(self.bundle_dir, self.id, with_stdin=False, terminal=terminal, attach_stdio=attach_stdio,
                           close_stdin=stdin_closer(self._client._conn, self.id, ""), existing=True)
        stdio.connected()
        self._track(proc)
        return Task(self, int(proc.pid), stdio)

    def task(self) -> Task:
        """The container's existing task, without stdio.

        Raises:
            errdefs.NotFound: the container has no task.

        >>> ctr.task().pid  # doctest: +SKIP
        4242
        """
        proc = self._get_task()
        self._track(proc)
        return Task(self, int(proc.pid))

    def _get_task(self) -> Any:
        client = self._client
        resp = client._conn.call(client._conn.tasks.Get, tasks_pb2.GetRequest(container_id=self.id),
                                 f"task {self.id}")
        return resp.process

    def _track(self, proc: Any) -> None:
        if proc.status in (task_types.RUNNING, task_types.PAUSED, task_types.PAUSING, task_types.CREATED):
            self._client._tracker.started(self.id, self.id, int(proc.pid))

    def delete(self) -> None:
        """Delete the container and remove its bundle dir (kept when ``LIBCONTAINERD_NOCLEAN=1``).

        Raises:
            errdefs.NotFound: no such container.
            errdefs.Conflict: it still has a task.

        >>> task.delete(); ctr.delete()  # doctest: +SKIP
        """
        from .._api.containerd.api.services.containers.v1 import containers_pb2

        client = self._client
        bundle = self.labels.get(_bundle.BUNDLE_LABEL, "")
        # containerd itself would delete the container under a live task and orphan the shim;
        # containerd's Go client refuses client-side, and so do we.
        try:
            proc = self._get_task()
        except errdefs.NotFound:
            pass
        else:
            status = task_types.Status.Name(proc.status).lower()
            raise errdefs.Conflict(f"container {self.id} still has a task ({status}): delete the task first")
        client._conn.call(client._conn.containers.Delete, containers_pb2.DeleteContainerRequest(id=self.id),
                          self._what())
        if self.snapshot is not None:
            from . import _unpack

            _unpack.remove(client._conn, self.snapshot.snapshotter, self.snapshot.key)
        client._tracker.forget(self.id)
        client._forget_container(self.id)
        if os.environ.get("LIBCONTAINERD_NOCLEAN") != "1":
            _bundle.remove(bundle, self.id)

    def __repr__(self) -> str:
        return f"<Container id={self.id!r} namespace={self._client.namespace!r}>"

"""Containers: creation with a bundle dir, loading, task start and attach, deletion.

A :class:`Container` caches what containerd said about it when it was created or loaded
(labels, spec, runtime) and, like moby, does not ask again: starting a task costs the
Create and Start calls and nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .. import errdefs
from .._api.containerd.api.services.containers.v1 import containers_pb2
from .._api.containerd.api.services.tasks.v1 import tasks_pb2
from .._api.containerd.api.types import descriptor_pb2
from .._api.containerd.api.types.task import task_pb2 as task_types
from .._api.containerd.runtime.v2.runc.options import oci_pb2 as runc_options
from .._typeurl import pack_message, unpack_json
from ..cio import FifoSet
from . import _bundle
from ._process import Stdio, StdioCallback, Task, start_task, stdin_closer

if TYPE_CHECKING:
    from ._session import Session

RUNC_OPTIONS = "containerd.runc.v1.Options"


def _copy(labels: Mapping[str, str]) -> dict[str, str]:
    return dict(labels)


@attrs.frozen
class ContainerRootfs:
    """The image snapshot a container runs on, as its container record names it."""

    image: str
    snapshotter: str
    key: str


@attrs.define(eq=False, repr=False)
class Container:
    """A containerd container of one client's namespace.

    Attributes:
        id: the container id.
        spec: its OCI runtime spec (a dict).
        labels: its containerd labels.
        runtime: its runtime (shim) name.
        runtime_options: its runtime options as containerd stores them (a ``google.protobuf.Any``, or ``None``).

    >>> ctr = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"]))
    >>> task = ctr.start()
    >>> task.status()
    <Status.RUNNING: 'running'>
    """

    _session: Session
    id: str
    spec: Mapping[str, Any] = attrs.field(kw_only=True)
    labels: dict[str, str] = attrs.field(kw_only=True, converter=_copy)
    runtime: str = attrs.field(kw_only=True)
    runtime_options: Any | None = attrs.field(kw_only=True, default=None)
    #: the image snapshot it runs on (``new_container(image=...)``), or None for a bundle rootfs
    snapshot: ContainerRootfs | None = attrs.field(kw_only=True, default=None)

    @classmethod
    def from_record(cls, session: Session, record: containers_pb2.Container) -> Container:
        """The handle of a container as containerd's record describes it."""
        return cls(
            session, record.id,
            spec=unpack_json(record.spec) if record.HasField("spec") else {},
            labels=record.labels,
            runtime=record.runtime.name,
            runtime_options=record.runtime.options if record.runtime.HasField("options") else None,
            snapshot=(ContainerRootfs(record.image, record.snapshotter, record.snapshot_key)
                      if record.snapshot_key else None),
        )

    @property
    def bundle_dir(self) -> str:
        """The bundle directory (from the ``com.docker/engine.bundle.path`` label)."""
        path = self.labels.get(_bundle.BUNDLE_LABEL)
        if not path:
            raise errdefs.InvalidParameter(f"container {self.id} has no bundle label {_bundle.BUNDLE_LABEL!r}")
        return path

    def _log_extra(self) -> dict[str, str]:
        """Log record attributes that let a handler filter by container and namespace."""
        return self._session.log_extra(self.id)

    def _task_options(self) -> Any | None:
        """runc options for the task: the container's, with io_uid/io_gid of the process user."""
        if not uses_runc_options(self):
            return self.runtime_options
        opts = runc_options.Options()
        if self.runtime_options is not None and self.runtime_options.type_url.endswith(RUNC_OPTIONS):
            opts.ParseFromString(self.runtime_options.value)
        uid, gid = _bundle.process_host_user(self.spec)
        opts.io_uid, opts.io_gid = uid, gid
        return pack_message(opts)

    def start(
        self,
        checkpoint_dir: str | None = None,
        with_stdin: bool = False,
        attach_stdio: StdioCallback | None = None,
        *,
        log_file: str | None = None,
    ) -> Task:
        """Create and start the container's task.

        Args:
            checkpoint_dir: restore from a CRIU checkpoint directory instead of a fresh start.
            with_stdin: make a stdin FIFO (needed by a callback that feeds stdin).
            attach_stdio: ``(DirectIO) -> IO`` callback such as ``stdio.capture()``; ``None``
                gives the process no stdio (``/dev/null``).
            log_file: an absolute path: the shim appends the process's stdout and stderr (its
                terminal, with one) to this file itself, as with containerd's Go ``cio.LogFile``, so
                the output is kept whether or not any client is there; the file and its directory
                are made if missing. Not with ``attach_stdio``. With ``with_stdin``, stdin is a FIFO
                in the bundle dir that nothing opens now: :meth:`attach_task` opens it later. Works
                on containerd 1.6, 1.7 and 2.x; with a terminal, 1.6's shim may drop what the
                process writes in its last moments.

        Raises:
            errdefs.Conflict: the container has a task already.
            errdefs.InvalidParameter: a missing or unreadable checkpoint dir; a ``log_file`` that is
                not an absolute path, or comes with ``attach_stdio``.

        >>> ctr = client.new_container("hello", oci.default_spec(rootfs, ["echo", "hi"]))
        >>> out = stdio.capture()
        >>> task = ctr.start(attach_stdio=out)
        >>> task.wait().code, out.wait().stdout
        (0, b'hi\\n')
        >>> ctr2 = client.new_container("logged", oci.default_spec(rootfs, ["echo", "hi"]))
        >>> ctr2.start(log_file="/tmp/logged.log").wait().code  # doctest: +SKIP
        0
        """
        if log_file is not None:
            if not isinstance(log_file, str) or not os.path.isabs(log_file) or "\0" in log_file:
                raise errdefs.InvalidParameter(f"container {self.id}: log_file {log_file!r} is not an absolute path")
            if attach_stdio is not None:
                raise errdefs.InvalidParameter(
                    f"container {self.id}: log_file and attach_stdio exclude each other (the output goes to one)")
        checkpoint: descriptor_pb2.Descriptor | None = None
        uploaded = None
        if checkpoint_dir is not None:
            from ._checkpoint import upload_checkpoint_dir

            uploaded = upload_checkpoint_dir(self._session, checkpoint_dir, self.id)
            checkpoint = uploaded.descriptor
        try:
            if log_file is not None:
                return self._start_logged(checkpoint, with_stdin, log_file)
            return self._start(checkpoint, with_stdin, attach_stdio)
        finally:
            if uploaded is not None:
                uploaded.delete()

    def _start(
        self, checkpoint: descriptor_pb2.Descriptor | None, with_stdin: bool, attach_stdio: StdioCallback | None
    ) -> Task:
        terminal = bool((self.spec.get("process") or {}).get("terminal", False))
        options = self._task_options()
        stdio: Stdio | None = None
        if attach_stdio is not None:
            stdio = Stdio.open(self.bundle_dir, self.id, with_stdin=with_stdin, terminal=terminal,
                               attach_stdio=attach_stdio, close_stdin=stdin_closer(self._session, self.id, ""),
                               log_extra=self._log_extra(), io_loop=self._session.io_loop)
        stdin, stdout, stderr = stdio.paths() if stdio else ("", "", "")
        request = tasks_pb2.CreateTaskRequest(
            container_id=self.id, stdin=stdin, stdout=stdout, stderr=stderr, terminal=terminal,
            checkpoint=checkpoint, options=options,
        )
        if self.snapshot is not None:
            from . import _unpack

            try:
                request.rootfs.extend(_unpack.mounts(self._session.conn, self.snapshot.snapshotter,
                                                     self.snapshot.key, f"container {self.id}"))
            except BaseException:
                if stdio is not None:
                    stdio.release(drain=False)
                raise
        return start_task(self._session, self, request, stdio)

    def _start_logged(self, checkpoint: descriptor_pb2.Descriptor | None, with_stdin: bool, log_file: str) -> Task:
        """The task's output into ``log_file``, which the shim appends to; stdin a FIFO or none."""
        terminal = bool((self.spec.get("process") or {}).get("terminal", False))
        fifos = None
        if with_stdin:
            fifos = FifoSet.create(self.bundle_dir, self.id, with_stdin=True, terminal=terminal, with_output=False)
        # A plain path, as the Go client's cio.LogFile gives it: the shim appends to a file that is not a
        # FIFO, with or without a terminal (a file:// URI, cio.LogURI's, fails with a terminal: the
        # shims' console copy takes the URI for a path). So the file is made here.
        try:
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
            with open(log_file, "ab"):
                pass
        except OSError as exc:
            if fifos is not None:
                fifos.remove()
            raise errdefs.System(f"container {self.id}: cannot make log file {log_file}: {exc.strerror or exc}") \
                from exc
        request = tasks_pb2.CreateTaskRequest(
            container_id=self.id, stdin=(fifos.stdin or "") if fifos else "", stdout=log_file, stderr=log_file,
            terminal=terminal, checkpoint=checkpoint, options=self._task_options(),
        )
        try:
            if self.snapshot is not None:
                from . import _unpack

                request.rootfs.extend(_unpack.mounts(self._session.conn, self.snapshot.snapshotter,
                                                     self.snapshot.key, f"container {self.id}"))
            return start_task(self._session, self, request, None)
        except BaseException:
            if fifos is not None:
                fifos.remove()
            raise

    def attach_task(self, attach_stdio: StdioCallback) -> Task:
        """Re-open the running task's FIFOs (e.g. after this service restarted).

        The FIFOs are those the task was started with in ``<bundle dir>``. A task started
        without ``attach_stdio`` has none to re-open: it is returned without IO (``io`` is
        None) and ``attach_stdio`` is not called, as moby's client returns it with empty IO.

        Raises:
            errdefs.NotFound: the container has no task, or the FIFOs it was started with are gone.

        >>> ctr = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"]))
        >>> first = ctr.start(attach_stdio=stdio.capture())
        >>> task = client.load_container("web").attach_task(stdio.capture())  # e.g. after a restart
        >>> task.pid == first.pid
        True
        """
        proc = self._get_task()
        if not (proc.stdin or proc.stdout or proc.stderr):
            self._track(proc)
            return Task(self._session, self, int(proc.pid))
        terminal = bool((self.spec.get("process") or {}).get("terminal", False))
        stdio = Stdio.open(self.bundle_dir, self.id, with_stdin=False, terminal=terminal, attach_stdio=attach_stdio,
                           close_stdin=stdin_closer(self._session, self.id, ""), existing=True,
                           log_extra=self._log_extra(), io_loop=self._session.io_loop)
        stdio.connected()
        self._track(proc)
        return Task(self._session, self, int(proc.pid), stdio)

    def task(self) -> Task:
        """The container's existing task, without stdio.

        Raises:
            errdefs.NotFound: the container has no task.

        >>> ctr = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"]))
        >>> ctr.start().pid == ctr.task().pid
        True
        """
        proc = self._get_task()
        self._track(proc)
        return Task(self._session, self, int(proc.pid))

    def _get_task(self) -> Any:
        conn = self._session.conn
        return conn.call(conn.tasks.Get, tasks_pb2.GetRequest(container_id=self.id), f"task {self.id}").process

    def _track(self, proc: Any) -> None:
        if proc.status in (task_types.RUNNING, task_types.PAUSED, task_types.PAUSING, task_types.CREATED):
            self._session.tracker.started(self.id, self.id, int(proc.pid))

    def delete(self) -> None:
        """Delete the container and remove its bundle dir (kept when ``LIBCONTAINERD_NOCLEAN=1``).

        Raises:
            errdefs.NotFound: no such container.
            errdefs.Conflict: it still has a task.

        >>> ctr = client.new_container("hello", oci.default_spec(rootfs, ["true"]))
        >>> task = ctr.start()
        >>> task.wait().code
        0
        >>> task.delete().code
        0
        >>> ctr.delete()
        """
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
        conn = self._session.conn
        conn.call(conn.containers.Delete, containers_pb2.DeleteContainerRequest(id=self.id), f"container {self.id}")
        if self.snapshot is not None:
            from . import _unpack

            _unpack.remove(conn, self.snapshot.snapshotter, self.snapshot.key)
        self._session.forget_container(self.id)
        if os.environ.get("LIBCONTAINERD_NOCLEAN") != "1":
            _bundle.remove(bundle, self.id, self._session.namespace)

    def __repr__(self) -> str:
        return f"<Container id={self.id!r} namespace={self._session.namespace!r}>"


def uses_runc_options(container: Container) -> bool:
    """Whether the container's tasks take runc's ``Options`` (and its checkpoints runc's ``CheckpointOptions``).

    The SDK gives every runc task runc options (for ``io_uid``/``io_gid``), so a runc runtime uses
    them even when the container was created without any.
    """
    options = container.runtime_options
    if options is not None and options.type_url.endswith(RUNC_OPTIONS):
        return True
    return "runc" in container.runtime


"""Tasks and exec'd processes: their RPCs, their stdio, and their clean-up.

A :class:`Task` is a container's main process, a :class:`Process` one started with
:meth:`Task.exec`. Both hold the IO object that the caller's ``attach_stdio`` callback
returned and the FIFO set behind it, and release both when the process is deleted.
Stdin is closed towards containerd (``CloseIO``) only once the process exists, as in
moby: :class:`Stdio` lets the DirectIO know when the create (task) or start (exec) call
has returned.
"""

from __future__ import annotations

import logging
import signal as _signal
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

import attrs

from .. import _validation as valid
from .. import errdefs
from .._api.containerd.api.services.tasks.v1 import tasks_pb2
from .._api.containerd.api.types.task import task_pb2 as task_types
from .._ioloop import LoopOwner
from .._typeurl import PROCESS_URL, RESOURCES_URL, pack_json, unpack
from ..cio import DirectIO, FifoSet
from ..types import ExitStatus, Stats, Status, Summary
from ._events import timestamp_to_datetime

if TYPE_CHECKING:
    from ._container import Container
    from ._rpc import Pending
    from ._session import Session

log = logging.getLogger(__name__)

StdioCallback = Callable[[DirectIO], Any]

_STATUS = {
    task_types.UNKNOWN: Status.UNKNOWN,
    task_types.CREATED: Status.CREATED,
    task_types.RUNNING: Status.RUNNING,
    task_types.STOPPED: Status.STOPPED,
    task_types.PAUSED: Status.PAUSED,
    task_types.PAUSING: Status.PAUSING,
}

#: How long delete() lets the stdio pumps drain after the process stopped.
IO_DRAIN_TIMEOUT = 5.0
#: moby deletes an exec whose start failed with a fresh deadline of this many seconds.
EXEC_CLEANUP_TIMEOUT = 45.0
#: How long wait() waits for the exit event of a process whose shim died under it.
SHIM_EXIT_GRACE = 10.0
#: How often force_delete() tries Delete again while containerd cleans up after a dead shim.
_RETRY_SLICE = 0.25
#: While containerd is away, how often wait() looks whether it serves again (the exit event ends it sooner).
_OUTAGE_SLICE = 0.5
#: How long force_delete() waits for the task to stop after SIGKILL.
FORCE_DELETE_WAIT = 10.0


class Stdio:
    """One process's stdio: its FIFO set, our opened ends, and the caller's IO object.

    Closing the DirectIO's stdin closes the FIFO at once and sends ``CloseIO`` once the
    process exists, i.e. once :meth:`connected` is called after the create (task) or
    start (exec) call returned -- moby's ``stdinCloseSync``.
    """

    def __init__(self, fifos: FifoSet, dio: DirectIO, rio: Any, log_extra: Mapping[str, str] | None = None) -> None:
        self.fifos = fifos
        self.dio = dio
        self.rio = rio
        self._log_extra = dict(log_extra or {})
        self._released = False
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        directory: str,
        process_id: str,
        *,
        with_stdin: bool,
        terminal: bool,
        attach_stdio: StdioCallback,
        close_stdin: Callable[[], None],
        existing: bool = False,
        log_extra: Mapping[str, str] | None = None,
        io_loop: LoopOwner | None = None,
    ) -> Stdio:
        """Make (or, with ``existing``, find) the FIFOs, open them, and call the callback.

        ``log_extra`` (container id and namespace) goes on this object's log records.
        """
        if existing:
            fifos = FifoSet.existing(directory, process_id, terminal=terminal)
        else:
            fifos = FifoSet.create(directory, process_id, with_stdin=with_stdin, terminal=terminal)
        try:
            dio = DirectIO.open(fifos, on_stdin_close=close_stdin, io_loop=io_loop)
            try:
                rio = attach_stdio(dio)
            except BaseException:
                dio.close()
                raise
        except BaseException:
            if not existing:
                fifos.remove()
            raise
        return cls(fifos, dio, dio if rio is None else rio, log_extra)

    def paths(self) -> tuple[str, str, str]:
        stdin, stdout, stderr, _ = self.fifos.to_paths()
        return stdin, stdout, stderr

    def connected(self) -> None:
        self.dio.connected()

    def close_stdin(self) -> bool:
        """Close our stdin end (which sends CloseIO); False if there is none open."""
        stdin = self.dio.stdin
        if stdin is None or stdin.closed:
            return False
        stdin.close()
        return True

    def release(self, drain: bool = True) -> None:
        """Let the pumps drain (bounded), stop them, close everything, remove the FIFOs."""
        with self._lock:
            if self._released:
                return
            self._released = True
        try:
            if drain:
                try:
                    self.rio.wait(IO_DRAIN_TIMEOUT)
                except Exception:  # a pump that does not finish in time is cancelled below
                    log.debug("stdio of %s did not drain in time", self.fifos.process_id, exc_info=True,
                              extra=self._log_extra)
            self.rio.cancel()
            self.rio.close()
        finally:
            self.dio.close()
            self.fifos.remove()


def stdin_closer(session: Session, container_id: str, exec_id: str) -> Callable[[], None]:
    """The ``CloseIO(stdin)`` call for one process; "transport is closing" is not an error."""
    what = f"exec {exec_id} of container {container_id}" if exec_id else f"task {container_id}"

    def close() -> None:
        conn = session.conn
        try:
            conn.call(conn.tasks.CloseIO, tasks_pb2.CloseIORequest(
                container_id=container_id, exec_id=exec_id, stdin=True), what)
        except errdefs.LibcontainerdError as exc:
            if "transport is closing" not in str(exc):
                raise

    return close


def start_task(session: Session, container: Container, request: tasks_pb2.CreateTaskRequest,
               stdio: Stdio | None) -> Task:
    """Create and start the container's task; on a failure, delete it and release its stdio."""
    conn = session.conn
    what = f"task {container.id}"
    try:
        resp = conn.call(conn.tasks.Create, request, what)
    except BaseException:
        if stdio is not None:
            stdio.release(drain=False)
        raise
    task = Task(session, container, int(resp.pid), stdio)
    if stdio is not None:
        stdio.connected()
    try:
        started = conn.call(conn.tasks.Start, tasks_pb2.StartRequest(container_id=container.id), what)
    except BaseException:
        try:
            task._delete_after_failed_start()
        except errdefs.LibcontainerdError as exc:
            log.error("failed to delete task %s after its start failed: %s", container.id, exc,
                      extra=session.log_extra(container.id))
            task._release()
        raise
    # A restore's Create answers pid 0: runc restores the process in Start, whose answer has the pid
    # (the Go client takes it from there too).
    task.pid = int(started.pid) or task.pid
    session.tracker.started(container.id, container.id, task.pid)
    return task


class _ProcessBase:
    """What tasks and exec'd processes share (their fields are declared by each)."""

    _session: Session
    _exec_id: str
    pid: int
    _stdio: Stdio | None
    # A Wait made before the process started (see Task.exec), for the first wait() to take.
    _waiter: Pending | None
    _waiter_lock: threading.Lock

    @property
    def _container_id(self) -> str:
        raise NotImplementedError

    @property
    def _what(self) -> str:
        cid = self._container_id
        return f"exec {self._exec_id} of container {cid}" if self._exec_id else f"task {cid}"

    @property
    def io(self) -> Any:
        """The IO object the stdio callback returned (``None`` without stdio)."""
        return self._stdio.rio if self._stdio is not None else None

    def _call(self, method: Any, request: Any, **kw: Any) -> Any:
        return self._session.conn.call(method, request, self._what, **kw)

    @property
    def _tasks(self) -> Any:
        return self._session.conn.tasks

    def kill(self, signal: int | str | _signal.Signals = _signal.SIGTERM) -> None:
        """Send a signal (number, ``signal.Signals`` or name).

        >>> task = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"])).start()
        >>> task.kill(signal.SIGKILL)
        >>> task.wait().code
        137
        """
        sig = valid.signal_number(signal)
        self._call(self._tasks.Kill, tasks_pb2.KillRequest(
            container_id=self._container_id, exec_id=self._exec_id, signal=sig))

    def status(self) -> Status:
        """The process's state now, e.g. ``Status.RUNNING``."""
        resp = self._call(self._tasks.Get, tasks_pb2.GetRequest(container_id=self._container_id, exec_id=self._exec_id))
        return _STATUS.get(resp.process.status, Status.UNKNOWN)

    def wait(self, timeout: float | None = None) -> ExitStatus:
        """Block until the process exits and return its exit status.

        A containerd restart does not end the wait: while containerd is away the exit comes from
        the event stream (which reconciles after it resubscribes), and once containerd serves
        again the wait is made anew. A process that containerd removed while it was down (1.7 and
        later do, for a task that died meanwhile) ends with the exit the stream reported for it
        (code 255 and ``info.error`` when nobody saw the real one). Ctrl-C interrupts the wait
        (``KeyboardInterrupt``) and leaves the client usable.

        Raises:
            errdefs.Deadline: (also a ``TimeoutError``) the timeout passed first.
            errdefs.Unavailable: containerd is away and this client does not know the process as
                running (it cannot learn of its exit).
            errdefs.NotFound: containerd does not know the process, nor does this client.

        >>> task.wait(timeout=10).code  # doctest: +SKIP
        0
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        vanished: float | None = None  # since when containerd says it does not know the process
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                status = self._wait_once(left, timeout)
            except (errdefs.Unavailable, errdefs.NotFound, errdefs.Unknown) as exc:
                # containerd went away under the wait, or does not know the process (a dead shim's task,
                # one that containerd >= 2 has not loaded again yet after a restart, or one it reaped):
                # the event stream may know the exit already.
                recorded = self._recorded_exit(0.0)
                if recorded is not None:
                    return recorded
                if not self.pid or not self._believed_running():
                    raise
                if isinstance(exc, errdefs.Unavailable):
                    vanished = None  # containerd is away: as long as it takes
                else:
                    vanished = vanished if vanished is not None else time.monotonic()
                    if time.monotonic() - vanished > SHIM_EXIT_GRACE:
                        if isinstance(exc, errdefs.Unknown):
                            raise
                        # Gone for good, and no exit came (containerd >= 1.7 reaps a task that died while
                        # it was down and tells no one): its code is lost for every client.
                        return self._report_gone(f"containerd removed the process: {exc}")
            else:
                return self._settled(status)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise errdefs.Deadline(f"{self._what}: still running after {timeout} s")
            recorded = self._recorded_exit(_OUTAGE_SLICE if left is None else min(_OUTAGE_SLICE, left))
            if recorded is not None:
                return recorded

    def _take_waiter(self) -> Pending | None:
        """The Wait that exec() made before Start, once (the first wait() takes it), or None."""
        with self._waiter_lock:
            waiter, self._waiter = self._waiter, None
        return waiter

    def _wait_once(self, left: float | None, timeout: float | None) -> ExitStatus:
        """One ``Wait`` call (the one exec() made before Start, if no wait() took it yet), awaited so that
        Ctrl-C gets through; mapped errors.

        The deadline is kept here, not given to gRPC: the early Wait was made before anyone named one,
        and containerd answers a call whose gRPC deadline passed inside it with UNKNOWN ("context
        deadline exceeded") rather than DEADLINE_EXCEEDED.
        """
        conn = self._session.conn
        pending = self._take_waiter()
        if pending is None:
            request = tasks_pb2.WaitRequest(container_id=self._container_id, exec_id=self._exec_id)
            pending = conn.future(conn.tasks.Wait, request, self._what, timeout=None)
        try:
            with pending:
                resp = pending.result(within=left)
        except errdefs.Deadline as exc:
            raise errdefs.Deadline(f"{self._what}: still running after {timeout} s", explanation=exc.explanation,
                                   code=exc.code) from exc.__cause__
        return ExitStatus(int(resp.exit_status), timestamp_to_datetime(resp.exited_at))

    def _believed_running(self) -> bool:
        cid = self._container_id
        return self._session.tracker.is_running(cid, self._exec_id or cid, self.pid)

    def _report_gone(self, reason: str) -> ExitStatus:
        cid, exits = self._container_id, self._session.exits
        if exits is None:  # a session without an event stream: nobody else is told
            return ExitStatus(255, None)
        info = exits.report_gone(cid, self._exec_id or cid, self.pid, reason)
        return ExitStatus(int(info.exit_code), info.exited_at)

    def _recorded_exit(self, grace: float) -> ExitStatus | None:
        """The exit the event stream delivered for this process (waiting up to ``grace`` s), or None."""
        if not self.pid:
            return None
        cid = self._container_id
        info = self._session.tracker.exit_of(cid, self._exec_id or cid, self.pid, grace)
        return None if info is None else ExitStatus(int(info.exit_code), info.exited_at)

    def close_stdin(self) -> None:
        """Close the process's stdin (our FIFO end, then containerd's side), so readers see EOF."""
        if self._stdio is not None and self._stdio.close_stdin():
            return
        stdin_closer(self._session, self._container_id, self._exec_id)()

    def resize(self, width: int, height: int) -> None:
        """Set the terminal size (columns, rows) seen inside.

        >>> spec = oci.default_spec(rootfs, ["sleep", "60"], terminal=True)
        >>> task = client.new_container("web", spec).start(attach_stdio=stdio.capture())
        >>> task.resize(120, 40)
        """
        self._call(self._tasks.ResizePty, tasks_pb2.ResizePtyRequest(
            container_id=self._container_id, exec_id=self._exec_id,
            width=valid.terminal_size(width, "width"), height=valid.terminal_size(height, "height")))

    def _log_extra(self) -> dict[str, str]:
        return self._session.log_extra(self._container_id)

    def _release(self) -> None:
        waiter = self._take_waiter()
        if waiter is not None:
            waiter.cancel()
        stdio, self._stdio = self._stdio, None
        if stdio is not None:
            stdio.release()

    def _gone(self) -> None:
        """containerd no longer knows the process (it cleaned up after a dead shim): drop what we hold of it."""
        cid = self._container_id
        self._session.tracker.forget(cid, self._exec_id or cid)
        self._release()

    def _settled(self, status: ExitStatus) -> ExitStatus:
        """The exit a call learned, made the one the backend gets (see ``EventStream.settled``)."""
        cid, exits = self._container_id, self._session.exits
        if not self.pid or exits is None:
            return status
        info = exits.settled(cid, self._exec_id or cid, self.pid, status.code, status.exited_at)
        return ExitStatus(int(info.exit_code), info.exited_at)

    def _deleted(self, resp: Any) -> ExitStatus:
        """After a successful delete: the exit to the backend if the stream may have missed it; clean up."""
        status = self._settled(ExitStatus(int(resp.exit_status), timestamp_to_datetime(resp.exited_at)))
        # A task's delete ends its execs too: forget every process of the container.
        self._session.tracker.forget(self._container_id, self._exec_id or None)
        self._release()
        return status

    def _deleted_meanwhile(self, exc: errdefs.NotFound) -> ExitStatus:
        """delete() of a process containerd no longer knows: its recorded exit, or the NotFound.

        containerd removes a task whose shim died, and containerd >= 1.7 also one that exited while
        containerd was down; the event stream then delivered its exit (the real one, or code 255
        with the reason), and delete() returns that, as wait() did, rather than fail.
        """
        status = self._recorded_exit(SHIM_EXIT_GRACE)
        if status is None and self.pid and self._believed_running():
            status = self._report_gone(f"containerd removed the process: {exc}")
        self._gone()
        if status is None:
            raise exc
        return status

    def _map_delete_error(self, exc: errdefs.LibcontainerdError) -> errdefs.LibcontainerdError:
        text = str(exc)
        if "running process" in text or "must be stopped" in text:
            return errdefs.Conflict(f"{self._what} must be stopped before deletion", explanation=exc.explanation,
                                    code=exc.code)
        return exc


@attrs.define(eq=False, repr=False)
class Process(_ProcessBase):
    """A process started inside a running task with :meth:`Task.exec`.

    Attributes:
        task: the task it runs in.
        pid: its host pid.

    >>> task = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"])).start()
    >>> proc = task.exec("ls-1", oci.process_spec(["ls"]), attach_stdio=stdio.capture())
    >>> proc  # doctest: +ELLIPSIS
    <Process id='ls-1' container='web' pid=...>
    """

    _session: Session
    task: Task
    _exec_id: str
    pid: int
    _stdio: Stdio | None = None
    _waiter: Pending | None = attrs.field(default=None, repr=False)
    _waiter_lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    @property
    def _container_id(self) -> str:
        return self.task.id

    @property
    def id(self) -> str:
        """The exec id."""
        return self._exec_id

    def delete(self) -> ExitStatus:
        """Delete the stopped process and release its stdio; returns its exit status.

        Raises:
            errdefs.Conflict: it is still running.

        >>> proc.wait(); proc.delete().code  # doctest: +SKIP
        0
        """
        try:
            resp = self._call(self._tasks.DeleteProcess, tasks_pb2.DeleteProcessRequest(
                container_id=self._container_id, exec_id=self._exec_id))
        except errdefs.NotFound as exc:
            return self._deleted_meanwhile(exc)
        except errdefs.LibcontainerdError as exc:
            raise self._map_delete_error(exc) from exc.__cause__
        return self._deleted(resp)

    def __repr__(self) -> str:
        return f"<Process id={self._exec_id!r} container={self._container_id!r} pid={self.pid}>"


@attrs.define(eq=False, repr=False)
class Task(_ProcessBase):
    """A container's main process (containerd's task).

    Attributes:
        pid: its host pid.

    >>> container = client.new_container("web", oci.default_spec(rootfs, ["true"]))
    >>> task = container.start(attach_stdio=stdio.capture())
    >>> task.wait().code
    0
    """

    _session: Session
    _container: Container
    pid: int
    _stdio: Stdio | None = None
    _waiter: Pending | None = attrs.field(default=None, repr=False)  # never set: a task's Wait follows Start
    _waiter_lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)
    _exec_id: str = attrs.field(init=False, default="")

    @property
    def _container_id(self) -> str:
        return self._container.id

    @property
    def id(self) -> str:
        """The container id."""
        return self._container.id

    @property
    def container(self) -> Container:
        """The container this task belongs to."""
        return self._container

    def exec(
        self,
        process_id: str,
        spec: Mapping[str, Any],
        with_stdin: bool = False,
        attach_stdio: StdioCallback | None = None,
    ) -> Process:
        """Create *and* start a process in this task.

        Args:
            process_id: the exec id (containerd identifier rules).
            spec: an OCI *process* spec, e.g. ``oci.process_spec(["ls", "/"])``.
            with_stdin: make a stdin FIFO (needed by a callback that feeds stdin).
            attach_stdio: ``(DirectIO) -> IO`` callback, e.g. ``stdio.capture()``; ``None`` = no stdio.

        Raises:
            errdefs.Conflict: an exec with this id exists.
            errdefs.InvalidParameter: bad id (the container's own among them) or spec (nothing was
                sent or made).

        >>> task = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"])).start()
        >>> out = stdio.capture()
        >>> p = task.exec("ls-1", oci.process_spec(["ls", "/"]), attach_stdio=out)
        >>> p.wait().code, out.wait().stdout[:3]
        (0, b'bin')
        """
        valid.identifier(process_id, "exec id")
        if process_id == self._container_id:
            # Its FIFOs would take the task's names in the bundle dir and replace them.
            raise errdefs.InvalidParameter(f"exec id {process_id!r} is the container id; choose another")
        valid.process_spec(spec)
        any_spec = pack_json(PROCESS_URL, spec, "process spec")
        terminal = bool(spec.get("terminal", False))
        container = self._container
        conn = self._session.conn
        what = f"exec {process_id} of container {container.id}"
        stdio: Stdio | None = None
        if attach_stdio is not None:
            try:
                FifoSet.existing(container.bundle_dir, process_id)
            except errdefs.NotFound:
                pass
            else:  # FIFOs of this exec id exist: refuse if containerd knows the exec, else they are stale
                self._refuse_duplicate_exec(process_id)
            closer = stdin_closer(self._session, container.id, process_id)
            stdio = Stdio.open(container.bundle_dir, process_id, with_stdin=with_stdin, terminal=terminal,
                               attach_stdio=attach_stdio, close_stdin=closer, log_extra=self._log_extra(),
                               io_loop=self._session.io_loop)
        stdin, stdout, stderr = stdio.paths() if stdio else ("", "", "")
        try:
            conn.call(conn.tasks.Exec, tasks_pb2.ExecProcessRequest(
                container_id=container.id, exec_id=process_id, stdin=stdin, stdout=stdout, stderr=stderr,
                terminal=terminal, spec=any_spec), what)
        except errdefs.LibcontainerdError as exc:
            if stdio is not None:
                stdio.release(drain=False)
            if isinstance(exc, errdefs.Conflict) or "already exists" in str(exc):
                raise errdefs.Conflict(f"{what}: id already in use", explanation=exc.explanation,
                                       code=exc.code) from exc.__cause__
            raise
        except BaseException:
            if stdio is not None:
                stdio.release(drain=False)
            raise
        # Wait before Start, as containerd's Go client does: containerd answers it as soon as the exit
        # is known, often before Start returns, where a Wait sent after Start put one more round trip
        # on every exec-and-wait (wait() of an exited `true`: 2.0 to 2.9 ms before, 0.14 ms now, on
        # containerd 1.6, 1.7 and 2.x alike).
        waiter: Pending | None = None
        try:
            waiter = conn.future(conn.tasks.Wait, tasks_pb2.WaitRequest(container_id=container.id, exec_id=process_id),
                                 what, timeout=None)
            with self._session.exec_start_lock(container.id):
                resp = conn.call(conn.tasks.Start, tasks_pb2.StartRequest(
                    container_id=container.id, exec_id=process_id), what)
        except BaseException:
            if waiter is not None:
                waiter.cancel()
            try:
                conn.call(conn.tasks.DeleteProcess, tasks_pb2.DeleteProcessRequest(
                    container_id=container.id, exec_id=process_id), what, timeout=EXEC_CLEANUP_TIMEOUT)
            except errdefs.LibcontainerdError as exc:
                log.warning("failed to delete %s after its start failed: %s", what, exc, extra=self._log_extra())
            if stdio is not None:
                stdio.release(drain=False)
            raise
        process = Process(self._session, self, process_id, int(resp.pid), stdio, waiter)
        self._session.tracker.started(container.id, process_id, process.pid)
        if stdio is not None:
            stdio.connected()
        return process

    def load_process(self, process_id: str) -> Process:
        """A process of this task started with :meth:`exec` (by any client), without stdio.

        Like containerd's ``Task.LoadProcess``: e.g. to wait for, signal or delete a process that
        another client (or an earlier run of this program) started detached.

        Raises:
            errdefs.NotFound: the task has no process with this exec id.
            errdefs.InvalidParameter: the exec id is not a valid identifier.

        >>> task.exec("bg", oci.process_spec(["sleep", "1"]))  # doctest: +SKIP
        >>> proc = client.load_container("web").task().load_process("bg")  # doctest: +SKIP
        >>> proc.wait().code, proc.delete().code  # doctest: +SKIP
        (0, 0)
        """
        valid.identifier(process_id, "exec id")
        if process_id == self._container_id:
            raise errdefs.InvalidParameter(f"exec id {process_id!r} is the container id; use the task itself")
        conn = self._session.conn
        proc = conn.call(conn.tasks.Get, tasks_pb2.GetRequest(container_id=self._container_id, exec_id=process_id),
                         f"exec {process_id} of container {self._container_id}").process
        if proc.status in (task_types.RUNNING, task_types.PAUSED, task_types.PAUSING, task_types.CREATED):
            self._session.tracker.started(self._container_id, process_id, int(proc.pid))
        return Process(self._session, self, process_id, int(proc.pid))

    def _refuse_duplicate_exec(self, process_id: str) -> None:
        try:
            self._call(self._tasks.Get, tasks_pb2.GetRequest(container_id=self._container_id, exec_id=process_id))
        except errdefs.NotFound:
            return
        raise errdefs.Conflict(f"exec {process_id} of container {self._container_id}: id already in use")

    def pause(self) -> None:
        """Freeze every process of the task (cgroup freezer).

        >>> task = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"])).start()
        >>> task.pause(); task.status()
        <Status.PAUSED: 'paused'>
        >>> task.resume()
        """
        self._call(self._tasks.Pause, tasks_pb2.PauseTaskRequest(container_id=self._container_id))

    def resume(self) -> None:
        """Thaw a paused task.

        >>> task = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"])).start()
        >>> task.pause(); task.resume(); task.status()
        <Status.RUNNING: 'running'>
        """
        self._call(self._tasks.Resume, tasks_pb2.ResumeTaskRequest(container_id=self._container_id))

    def delete(self) -> ExitStatus:
        """Delete the stopped task and release its stdio; returns the same exit status as :meth:`wait`.

        Raises:
            errdefs.Conflict: the task is still running (use :meth:`force_delete`).

        >>> task.wait(); task.delete().code  # doctest: +SKIP
        0
        """
        try:
            resp = self._call(self._tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=self._container_id))
        except errdefs.NotFound as exc:
            return self._deleted_meanwhile(exc)
        except errdefs.LibcontainerdError as exc:
            raise self._map_delete_error(exc) from exc.__cause__
        return self._deleted(resp)

    def force_delete(self) -> ExitStatus:
        """Kill every process of the task with SIGKILL, wait for it to stop, then delete it.

        The wait is bounded (:data:`FORCE_DELETE_WAIT` seconds): a task that never ran (e.g.
        a restore that failed) does not exit, but can be deleted all the same. A wait broken by
        a dying shim or a containerd restart is logged, and the delete follows all the same.

        Raises:
            errdefs.NotFound: the task is gone (containerd cleaned up after its dead shim).
        """
        conn = self._session.conn
        request = tasks_pb2.WaitRequest(container_id=self._container_id)
        wait_broke = False
        with conn.future(conn.tasks.Wait, request, self._what, timeout=None) as waiter:
            try:
                self._call(self._tasks.Kill, tasks_pb2.KillRequest(
                    container_id=self._container_id, signal=int(_signal.SIGKILL), all=True))
            except (errdefs.NotFound, errdefs.Conflict):
                pass  # already stopped: Kill may say "not found" even when it did kill
            try:
                waiter.result(within=FORCE_DELETE_WAIT)
            except errdefs.NotFound:
                pass
            except errdefs.Deadline:
                log.warning("%s did not stop within %s s of SIGKILL; deleting it anyway", self._what,
                            FORCE_DELETE_WAIT, extra=self._log_extra())
            except errdefs.LibcontainerdError as exc:
                # A shim that died or a containerd that restarted breaks the Wait; as in the Go
                # client's kill-and-delete, Delete follows whatever Wait returned (and says
                # NotFound when containerd already cleaned up after the shim).
                wait_broke = True
                log.warning("waiting for %s to stop failed (%s); deleting it anyway", self._what, exc,
                            extra=self._log_extra())
        if not wait_broke:
            return self.delete()
        # containerd cleans up after a dead shim on its own, a moment after the shim's connection
        # broke; a Delete in that moment fails the same way ("ttrpc: closed"), so try again.
        deadline = time.monotonic() + SHIM_EXIT_GRACE
        while True:
            try:
                return self.delete()
            except (errdefs.NotFound, errdefs.Conflict):
                raise
            except errdefs.LibcontainerdError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(_RETRY_SLICE)

    def _delete_after_failed_start(self) -> None:
        """Clean up a task whose Start failed: a created task can be deleted as it is."""
        try:
            self.delete()
        except errdefs.Conflict:
            self.force_delete()

    def stats(self) -> Stats:
        """The task's cgroup metrics (v1 or v2 message, whichever containerd sends).

        >>> task = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"])).start()
        >>> stats = task.stats()  # on cgroup v1: stats.metrics.memory.usage.usage, pids.current, ...
        >>> type(stats.metrics).__name__, stats.read.tzinfo is not None
        ('Metrics', True)
        """
        resp = self._call(self._tasks.Metrics, tasks_pb2.MetricsRequest(filters=[f"id=={self._container_id}"]))
        if not resp.metrics:
            raise errdefs.NotFound(f"{self._what}: containerd returned no metrics (is the task running?)")
        metric = resp.metrics[0]
        read = timestamp_to_datetime(metric.timestamp)
        if read is None:
            raise errdefs.DataLoss(f"{self._what}: metrics without a timestamp")
        try:
            decoded = unpack(metric.data)
        except errdefs.NotImplemented as exc:
            raise errdefs.NotImplemented(f"{self._what}: unknown metrics type {metric.data.type_url!r}") from exc
        return Stats(read=read, metrics=decoded)

    def update_resources(self, resources: Mapping[str, Any]) -> None:
        """Change the task's resources with an OCI ``LinuxResources`` dict.

        >>> task = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"])).start()
        >>> task.update_resources({"memory": {"limit": 64 << 20}})
        """
        if not isinstance(resources, Mapping):
            raise errdefs.InvalidParameter("resources must be an OCI LinuxResources dict")
        self._call(self._tasks.Update, tasks_pb2.UpdateTaskRequest(
            container_id=self._container_id, resources=pack_json(RESOURCES_URL, resources, "resources")))

    def summary(self) -> list[Summary]:
        """The task's processes: host pid and, for exec'd ones, the exec id.

        >>> task = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"])).start()
        >>> [s.pid == task.pid for s in task.summary()]
        [True]
        """
        resp = self._call(self._tasks.ListPids, tasks_pb2.ListPidsRequest(container_id=self._container_id))
        out = []
        for proc in resp.processes:
            exec_id: str | None = None
            if proc.HasField("info") and proc.info.type_url:
                try:
                    exec_id = getattr(unpack(proc.info), "exec_id", "") or None
                except errdefs.LibcontainerdError:
                    exec_id = None
            out.append(Summary(pid=int(proc.pid), exec_id=exec_id))
        return out

    def create_checkpoint(self, checkpoint_dir: str, exit: bool = False) -> None:
        """Checkpoint the task with CRIU into ``checkpoint_dir`` (see :mod:`libcontainerd.remote._checkpoint`).

        A running task is paused for the dump and resumed after (the backend sees ``PAUSED`` and
        ``RESUMED``), as containerd's Go client does; a paused task stays paused. Processes
        started with :meth:`exec` are not part of the dump.

        Args:
            checkpoint_dir: where the checkpoint's files are extracted.
            exit: stop the task after the checkpoint.

        Raises:
            errdefs.InvalidParameter: ``checkpoint_dir`` cannot be a directory (nothing was dumped).
            errdefs.System: CRIU failed; the message carries CRIU's reason, nothing is left behind.
            errdefs.DataLoss: the checkpoint read back from containerd was corrupt.

        >>> task.create_checkpoint("/tmp/ckpt", exit=True)  # doctest: +SKIP
        >>> restored = ctr.start(checkpoint_dir="/tmp/ckpt")  # doctest: +SKIP
        """
        from ._checkpoint import create_checkpoint

        create_checkpoint(self._session, self, checkpoint_dir, exit=exit)

    def __repr__(self) -> str:
        return f"<Task id={self._container_id!r} pid={self.pid}>"


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
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import grpc

from .. import errdefs
from .._api.containerd.api.services.tasks.v1 import tasks_pb2
from .._api.containerd.api.types.task import task_pb2 as task_types
from .._identifiers import validate
from .._typeurl import PROCESS_URL, RESOURCES_URL, pack_json, unpack
from ..cio import DirectIO, FifoSet
from ..types import ExitStatus, Stats, Status, Summary
from ._events import timestamp_to_datetime

if TYPE_CHECKING:
    from ._container import Container

log = logging.getLogger("libcontainerd")

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
_WAIT_SLICE = 0.25
#: How long wait() waits for the exit event of a process whose shim died under it.
SHIM_EXIT_GRACE = 10.0
#: While containerd is away, how often wait() looks whether it serves again (the exit event ends it sooner).
_OUTAGE_SLICE = 0.5
#: How long force_delete() waits for the task to stop after SIGKILL.
FORCE_DELETE_WAIT = 10.0


def parse_signal(sig: Union[int, str, _signal.Signals]) -> int:
    """A signal number from a number, a ``signal.Signals`` or a name ("TERM", "SIGKILL").

    >>> parse_signal("kill")
    9
    """
    if isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(_signal.Signals[name])
        except KeyError:
            if sig.isascii() and sig.isdigit():  # str.isdigit() is also true of '²', which int() refuses
                return parse_signal(int(sig))
            raise errdefs.InvalidParameter(f"unknown signal {sig!r}") from None
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise errdefs.InvalidParameter(f"signal must be an int or a name, not {type(sig).__name__}")
    if not 1 <= int(sig) <= 64:
        raise errdefs.InvalidParameter(f"signal {int(sig)} is out of range 1..64")
    return int(sig)


def _check_size(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise errdefs.InvalidParameter(f"terminal {name} must be an int from 0 to 65535, got {value!r}")
    return value


def check_process_spec(spec: object, what: str = "process spec") -> Mapping[str, Any]:
    """Reject a process spec that runc would reject, before any RPC."""
    if not isinstance(spec, Mapping):
        raise errdefs.InvalidParameter(f"{what} must be a dict, not {type(spec).__name__}")
    args = spec.get("args")
    if not isinstance(args, (list, tuple)) or not args or not all(isinstance(a, str) for a in args):
        raise errdefs.InvalidParameter(f"{what} needs 'args', a non-empty list of strings")
    if any("\x00" in a for a in args):
        raise errdefs.InvalidParameter(f"{what}: 'args' must not contain NUL characters")
    if "terminal" in spec and not isinstance(spec["terminal"], bool):
        raise errdefs.InvalidParameter(f"{what}: 'terminal' must be a bool")
    cwd = spec.get("cwd")  # runc refuses a missing cwd ("Cwd property must not be empty"), so no default here
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise errdefs.InvalidParameter(f"{what}: 'cwd' must be an absolute path")
    user = spec.get("user", {})
    if not isinstance(user, Mapping) or any(
        isinstance(user.get(k, 0), bool) or not isinstance(user.get(k, 0), int) or not 0 <= user.get(k, 0) <= 2**32 - 1
        for k in ("uid", "gid")
    ):
        raise errdefs.InvalidParameter(f"{what}: 'user' must have integer 'uid' and 'gid' from 0 to {2**32 - 1}")
    env = spec.get("env", [])
    if not isinstance(env, (list, tuple)) or not all(isinstance(e, str) for e in env):
        raise errdefs.InvalidParameter(f"{what}: 'env' must be a list of 'KEY=value' strings")
    return spec


class Stdio:
    """One process's stdio: its FIFO set, our opened ends, and the caller's IO object.

    Closing the DirectIO's stdin closes the FIFO at once and sends ``CloseIO`` once the
    process exists, i.e. once :meth:`connected` is called after the create (task) or
    start (exec) call returned -- moby's ``stdinCloseSync``.
    """

    def __init__(self, fifos: FifoSet, dio: DirectIO, rio: Any) -> None:
        self.fifos = fifos
        self.dio = dio
        self.rio = rio
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
    ) -> Stdio:
        """Make (or, with ``existing``, find) the FIFOs, open them, and call the callback."""
        if existing:
            fifos = FifoSet.existing(directory, process_id, terminal=terminal)
        else:
            fifos = FifoSet.create(directory, process_id, with_stdin=with_stdin, terminal=terminal)
        try:
            dio = DirectIO.open(fifos, on_stdin_close=close_stdin)
            try:
                rio = attach_stdio(dio)
            except BaseException:
                dio.close()
                raise
        except BaseException:
            if not existing:
                fifos.remove()
            raise
        return cls(fifos, dio, dio if rio is None else rio)

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
                    log.debug("stdio of %s did not drain in time", self.fifos.process_id, exc_info=True)
            self.rio.cancel()
            self.rio.close()
        finally:
            self.dio.close()
            self.fifos.remove()


def stdin_closer(conn: Any, container_id: str, exec_id: str) -> Callable[[], None]:
    """The ``CloseIO(stdin)`` call for one process; "transport is closing" is not an error."""
    what = f"exec {exec_id} of container {container_id}" if exec_id else f"task {container_id}"

    def close() -> None:
        try:
            conn.call(conn.tasks.CloseIO, tasks_pb2.CloseIORequest(
                container_id=container_id, exec_id=exec_id, stdin=True), what)
        except errdefs.LibcontainerdError as exc:
            if "transport is closing" not in str(exc):
                raise

    return close


class _ProcessBase:
    """What tasks and exec'd processes share."""

    _container: Container
    _exec_id: str

    def __init__(self, container: Container, exec_id: str, pid: int, stdio: Optional[Stdio] = None):
        self._container = container
        self._exec_id = exec_id
        self.pid = pid
        self._stdio = stdio
        # A Wait made before the process started (see Task.exec), for the first wait() to take.
        self._waiter: Optional[grpc.Future[Any]] = None
        self._waiter_lock = threading.Lock()

    @property
    def _what(self) -> str:
        cid = self._container.id
        return f"exec {self._exec_id} of container {cid}" if self._exec_id else f"task {cid}"

    @property
    def io(self) -> Any:
        """The IO object the stdio callback returned (``None`` without stdio)."""
        return self._stdio.rio if self._stdio is not None else None

    def _call(self, method: Any, request: Any, **kw: Any) -> Any:
        return self._container._client._conn.call(method, request, self._what, **kw)

    @property
    def _tasks(self) -> Any:
        return self._container._client._conn.tasks

    def kill(self, signal: Union[int, str, _signal.Signals] = _signal.SIGTERM) -> None:
        """Send a signal (number, ``signal.Signals`` or name).

        >>> task.kill(signal.SIGKILL)  # doctest: +SKIP
        """
        sig = parse_signal(signal)
        self._call(self._tasks.Kill, tasks_pb2.KillRequest(
            container_id=self._container.id, exec_id=self._exec_id, signal=sig))

    def status(self) -> Status:
        """The process's state now, e.g. ``Status.RUNNING``."""
        resp = self._call(self._tasks.Get, tasks_pb2.GetRequest(container_id=self._container.id, exec_id=self._exec_id))
        return _STATUS.get(resp.process.status, Status.UNKNOWN)

    def wait(self, timeout: Optional[float] = None) -> ExitStatus:
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

        >>> task.wait(timeout=10).code  # doctest: +SKIP
        0
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        cid = self._container.id
        tracker = self._container._client._tracker
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return self._wait_once(left, timeout)
            except errdefs.Unavailable:
                # containerd went away under the wait (or is away): the stream may know the exit already.
                status = self._recorded_exit(0.0)
                if status is not None:
                    return status
                if not self.pid or not tracker.is_running(cid, self._exec_id or cid, self.pid):
                    raise
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise errdefs.Deadline(f"{self._what}: still running after {timeout} s")
            status = self._recorded_exit(_OUTAGE_SLICE if left is None else min(_OUTAGE_SLICE, left))
            if status is not None:
                return status

    def _wait_call(self) -> grpc.Future[Any]:
        conn = self._container._client._conn
        request = tasks_pb2.WaitRequest(container_id=self._container.id, exec_id=self._exec_id)
        future: grpc.Future[Any] = conn.tasks.Wait.future(request, metadata=conn.metadata)
        return future

    def _take_waiter(self) -> Optional[grpc.Future[Any]]:
        with self._waiter_lock:
            waiter, self._waiter = self._waiter, None
        return waiter

    def _wait_once(self, left: Optional[float], timeout: Optional[float]) -> ExitStatus:
        """One ``Wait`` call (the one exec() made before Start, if no wait took it yet), polled so that
        Ctrl-C gets through; mapped errors.

        The deadline is kept here, not given to gRPC: the early Wait was made before anyone named one,
        and containerd answers a call whose gRPC deadline passed inside it with UNKNOWN ("context
        deadline exceeded") rather than DEADLINE_EXCEEDED.
        """
        conn = self._container._client._conn
        deadline = None if left is None else time.monotonic() + left
        future = self._take_waiter()
        if future is None:
            future = self._wait_call()
        try:
            while True:
                try:
                    resp = future.result(timeout=_WAIT_SLICE if deadline is None else
                                         max(0.0, min(_WAIT_SLICE, deadline - time.monotonic())))
                    break
                except grpc.FutureTimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise errdefs.Deadline(f"{self._what}: still running after {timeout} s") from None
        except grpc.RpcError as err:
            if conn.closed:
                raise errdefs.Cancelled(f"{self._what}: the client was closed during wait") from err
            mapped = errdefs.from_grpc(err, self._what)
            if isinstance(mapped, (errdefs.NotFound, errdefs.Unknown)) and self.pid:
                # A dead shim takes the Wait down ("ttrpc: closed") and containerd then deletes the task;
                # the exit it reports as an event is the one to return.
                grace = SHIM_EXIT_GRACE if left is None else min(SHIM_EXIT_GRACE, left)
                info = self._recorded_exit(grace)
                if info is not None:
                    return info
            raise mapped from err
        except BaseException:
            future.cancel()
            raise
        return ExitStatus(int(resp.exit_status), timestamp_to_datetime(resp.exited_at))

    def _recorded_exit(self, grace: float) -> Optional[ExitStatus]:
        """The exit the event stream delivered for this process (waiting up to ``grace`` s), or None."""
        if not self.pid:
            return None
        cid = self._container.id
        info = self._container._client._tracker.exit_of(cid, self._exec_id or cid, self.pid, grace)
        return None if info is None else ExitStatus(int(info.exit_code), info.exited_at)

    def close_stdin(self) -> None:
        """Close the process's stdin (our FIFO end, then containerd's side), so readers see EOF."""
        if self._stdio is not None and self._stdio.close_stdin():
            return
        conn = self._container._client._conn
        stdin_closer(conn, self._container.id, self._exec_id)()

    def resize(self, width: int, height: int) -> None:
        """Set the terminal size (columns, rows) seen inside.

        >>> task.resize(120, 40)  # doctest: +SKIP
        """
        self._call(self._tasks.ResizePty, tasks_pb2.ResizePtyRequest(
            container_id=self._container.id, exec_id=self._exec_id,
            width=_check_size(width, "width"), height=_check_size(height, "height")))

    def _release(self) -> None:
        waiter = self._take_waiter()
        if waiter is not None:
            waiter.cancel()
        stdio, self._stdio = self._stdio, None
        if stdio is not None:
            stdio.release()

    def _gone(self) -> None:
        """containerd no longer knows the process (it cleaned up after a dead shim): drop what we hold of it."""
        cid = self._container.id
        self._container._client._tracker.forget(cid, self._exec_id or cid)
        self._release()

    def _deleted_meanwhile(self, exc: errdefs.NotFound) -> ExitStatus:
        """delete() of a process containerd no longer knows: its recorded exit, or the NotFound.

        containerd removes a task whose shim died, and containerd >= 1.7 also one that exited while
        containerd was down; the event stream then delivered its exit (the real one, or code 255
        with the reason), and delete() returns that, as wait() did, rather than fail.
        """
        status = self._recorded_exit(SHIM_EXIT_GRACE)
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


class Process(_ProcessBase):
    """A process started inside a running task with :meth:`Task.exec`.

    >>> proc = task.exec("ls-1", oci.process_spec(["ls"]), attach_stdio=stdio.capture())  # doctest: +SKIP
    >>> proc  # doctest: +SKIP
    <Process id='ls-1' container='web' pid=4321>
    """

    def __init__(self, task: Task, exec_id: str, pid: int = 0, stdio: Optional[Stdio] = None):
        super().__init__(task._container, exec_id, pid, stdio)
        self.task = task

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
                container_id=self._container.id, exec_id=self._exec_id))
        except errdefs.NotFound as exc:
            return self._deleted_meanwhile(exc)
        except errdefs.LibcontainerdError as exc:
            raise self._map_delete_error(exc) from exc.__cause__
        self._container._client._tracker.forget(self._container.id, self._exec_id)
        self._release()
        return ExitStatus(int(resp.exit_status), timestamp_to_datetime(resp.exited_at))

    def __repr__(self) -> str:
        return f"<Process id={self._exec_id!r} container={self._container.id!r} pid={self.pid}>"


class Task(_ProcessBase):
    """A container's main process (containerd's task).

    >>> task = container.start(attach_stdio=stdio.capture())  # doctest: +SKIP
    >>> task.wait().code  # doctest: +SKIP
    0
    """

    def __init__(self, container: Container, pid: int, stdio: Optional[Stdio] = None):
        super().__init__(container, "", pid, stdio)

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
        attach_stdio: Optional[StdioCallback] = None,
    ) -> Process:
        """Create *and* start a process in this task.

        Args:
            process_id: the exec id (containerd identifier rules).
            spec: an OCI *process* spec, e.g. ``oci.process_spec(["ls", "/"])``.
            with_stdin: make a stdin FIFO (needed by a callback that feeds stdin).
            attach_stdio: ``(DirectIO) -> IO`` callback, e.g. ``stdio.capture()``; ``None`` = no stdio.

        Raises:
            errdefs.Conflict: an exec with this id exists.
            errdefs.InvalidParameter: bad id or spec (nothing was sent or made).

        >>> out = stdio.capture()  # doctest: +SKIP
        >>> p = task.exec("ls-1", oci.process_spec(["ls", "/"]), attach_stdio=out)  # doctest: +SKIP
        >>> p.wait().code, out.wait().stdout[:3]  # doctest: +SKIP
        (0, b'bin')
        """
        validate(process_id, "exec id")
        check_process_spec(spec)
        any_spec = pack_json(PROCESS_URL, spec, "process spec")
        terminal = bool(spec.get("terminal", False))
        container = self._container
        client = container._client
        conn = client._conn
        what = f"exec {process_id} of container {container.id}"
        stdio: Optional[Stdio] = None
        if attach_stdio is not None:
            try:
                FifoSet.existing(container.bundle_dir, process_id)
            except errdefs.NotFound:
                pass
            else:  # FIFOs of this exec id exist: refuse if containerd knows the exec, else they are stale
                self._refuse_duplicate_exec(process_id)
            stdio = Stdio.open(container.bundle_dir, process_id, with_stdin=with_stdin, terminal=terminal,
                               attach_stdio=attach_stdio, close_stdin=stdin_closer(conn, container.id, process_id))
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
        process = Process(self, process_id, 0, stdio)
        # Wait before Start, as containerd's Go client does: containerd answers it as soon as the exit
        # is known, often before Start returns, where a Wait sent after Start put one more round trip
        # on every exec-and-wait (wait() of an exited `true`: 2.0 to 2.9 ms before, 0.14 ms now, on
        # containerd 1.6, 1.7 and 2.x alike).
        try:
            process._waiter = process._wait_call()
        except ValueError:  # the client was closed just now: Start says so
            pass
        try:
            with client._exec_start_lock(container.id):
                resp = conn.call(conn.tasks.Start, tasks_pb2.StartRequest(
                    container_id=container.id, exec_id=process_id), what)
        except BaseException:
            waiter = process._take_waiter()
            if waiter is not None:
                waiter.cancel()
            try:
                conn.call(conn.tasks.DeleteProcess, tasks_pb2.DeleteProcessRequest(
                    container_id=container.id, exec_id=process_id), what, timeout=EXEC_CLEANUP_TIMEOUT)
            except errdefs.LibcontainerdError as exc:
                log.warning("failed to delete %s after its start failed: %s", what, exc,
                            extra={"container_id": container.id, "namespace": client.namespace})
            process._stdio = None
            if stdio is not None:
                stdio.release(drain=False)
            raise
        process.pid = int(resp.pid)
        client._tracker.started(container.id, process_id, process.pid)
        if stdio is not None:
            stdio.connected()
        return process

    def _refuse_duplicate_exec(self, process_id: str) -> None:
        try:
            self._call(self._tasks.Get, tasks_pb2.GetRequest(container_id=self._container.id, exec_id=process_id))
        except errdefs.NotFound:
            return
        raise errdefs.Conflict(f"exec {process_id} of container {self._container.id}: id already in use")

    def pause(self) -> None:
        """Freeze every process of the task (cgroup freezer).

        >>> task.pause(); task.status()  # doctest: +SKIP
        <Status.PAUSED: 'paused'>
        """
        self._call(self._tasks.Pause, tasks_pb2.PauseTaskRequest(container_id=self._container.id))

    def resume(self) -> None:
        """Thaw a paused task.

        >>> task.resume()  # doctest: +SKIP
        """
        self._call(self._tasks.Resume, tasks_pb2.ResumeTaskRequest(container_id=self._container.id))

    def delete(self) -> ExitStatus:
        """Delete the stopped task and release its stdio; returns the same exit status as :meth:`wait`.

        Raises:
            errdefs.Conflict: the task is still running (use :meth:`force_delete`).

        >>> task.wait(); task.delete().code  # doctest: +SKIP
        0
        """
        try:
            resp = self._call(self._tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=self._container.id))
        except errdefs.NotFound as exc:
            return self._deleted_meanwhile(exc)
        except errdefs.LibcontainerdError as exc:
            raise self._map_delete_error(exc) from exc.__cause__
        self._container._client._tracker.forget(self._container.id)
        self._release()
        return ExitStatus(int(resp.exit_status), timestamp_to_datetime(resp.exited_at))

    def force_delete(self) -> ExitStatus:
        """Kill every process of the task with SIGKILL, wait for it to stop, then delete it.

        The wait is bounded (:data:`FORCE_DELETE_WAIT` seconds): a task that never ran (e.g.
        a restore that failed) does not exit, but can be deleted all the same.
        """
        conn = self._container._client._conn
        waiter = conn.tasks.Wait.future(tasks_pb2.WaitRequest(container_id=self._container.id),
                                        metadata=conn.metadata)
        try:
            try:
                self._call(self._tasks.Kill, tasks_pb2.KillRequest(
                    container_id=self._container.id, signal=int(_signal.SIGKILL), all=True))
            except (errdefs.NotFound, errdefs.Conflict):
                pass  # already stopped: Kill may say "not found" even when it did kill
            deadline = time.monotonic() + FORCE_DELETE_WAIT
            while True:
                try:
                    waiter.result(timeout=_WAIT_SLICE)
                    break
                except grpc.FutureTimeoutError:
                    if time.monotonic() >= deadline:
                        log.warning("%s did not stop within %s s of SIGKILL; deleting it anyway",
                                    self._what, FORCE_DELETE_WAIT)
                        break
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.NOT_FOUND:
                        break
                    raise errdefs.from_grpc(err, self._what) from err
        finally:
            waiter.cancel()
        return self.delete()

    def _delete_after_failed_start(self) -> None:
        """Clean up a task whose Start failed: a created task can be deleted as it is."""
        try:
            self.delete()
        except errdefs.Conflict:
            self.force_delete()

    def stats(self) -> Stats:
        """The task's cgroup metrics (v1 or v2 message, whichever containerd sends).

        >>> task.stats().metrics.memory.usage.usage  # doctest: +SKIP
        1400832
        """
        resp = self._call(self._tasks.Metrics, tasks_pb2.MetricsRequest(filters=[f"id=={self._container.id}"]))
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

        >>> task.update_resources({"memory": {"limit": 64 << 20}})  # doctest: +SKIP
        """
        if not isinstance(resources, Mapping):
            raise errdefs.InvalidParameter("resources must be an OCI LinuxResources dict")
        self._call(self._tasks.Update, tasks_pb2.UpdateTaskRequest(
            container_id=self._container.id, resources=pack_json(RESOURCES_URL, resources, "resources")))

    def summary(self) -> list[Summary]:
        """The task's processes: host pid and, for exec'd ones, the exec id.

        >>> task.summary()  # doctest: +SKIP
        [Summary(pid=4242, exec_id=None), Summary(pid=4321, exec_id='ls-1')]
        """
        resp = self._call(self._tasks.ListPids, tasks_pb2.ListPidsRequest(container_id=self._container.id))
        out = []
        for proc in resp.processes:
            exec_id: Optional[str] = None
            if proc.HasField("info") and proc.info.type_url:
                try:
                    exec_id = getattr(unpack(proc.info), "exec_id", "") or None
                except errdefs.LibcontainerdError:
                    exec_id = None
            out.append(Summary(pid=int(proc.pid), exec_id=exec_id))
        return out

    def create_checkpoint(self, checkpoint_dir: str, exit: bool = False) -> None:
        """Checkpoint the task with CRIU into ``checkpoint_dir`` (see :mod:`libcontainerd.remote._checkpoint`).

        Args:
            checkpoint_dir: where the checkpoint's files are extracted.
            exit: stop the task after the checkpoint.

        Raises:
            errdefs.LibcontainerdError: CRIU failed; the message carries CRIU's reason.

        >>> task.create_checkpoint("/tmp/ckpt", exit=True)  # doctest: +SKIP
        >>> restored = ctr.start(checkpoint_dir="/tmp/ckpt")  # doctest: +SKIP
        """
        from ._checkpoint import create_checkpoint

        create_checkpoint(self, checkpoint_dir, exit=exit)

    def __repr__(self) -> str:
        return f"<Task id={self._container.id!r} pid={self.pid}>"


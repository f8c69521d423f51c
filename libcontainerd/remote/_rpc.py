"""The gRPC boundary: the channel, its stubs, and every call made on them.

One :class:`Connection` per client, and the only code of the SDK that calls gRPC: unary calls
(:meth:`Connection.call`), streaming calls (:meth:`Connection.stream`: the event subscription,
content reads and writes) and calls awaited as futures (:meth:`Connection.future`). Each gets
the ``containerd-namespace`` header (and a ``containerd-lease`` header when a lease is given)
and the client's default deadline unless told otherwise, and each maps gRPC's errors to
:mod:`libcontainerd.errdefs` in one place (:func:`_mapped_errors`, as httpx maps httpcore's):
the typed error has the gRPC error as ``__cause__``, and any error of a closed connection is
:class:`~libcontainerd.errdefs.Cancelled`. It knows nothing of containers or events.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import attrs
import grpc
from google.protobuf import empty_pb2

from .. import errdefs
from .._api.containerd.api.services.containers.v1 import containers_pb2_grpc
from .._api.containerd.api.services.events.v1 import events_pb2_grpc
from .._api.containerd.api.services.tasks.v1 import tasks_pb2_grpc
from .._api.containerd.api.services.version.v1 import version_pb2_grpc

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
# containerd's defaults.DefaultMaxRecvMsgSize / DefaultMaxSendMsgSize
MAX_MESSAGE_SIZE = 16 << 20
#: How often a wait on a future wakes up, so that Ctrl-C (handled between bytecodes) is seen.
_WAIT_SLICE = 0.25

#: Sentinel meaning "use the client's default timeout".
DEFAULT: Any = object()
#: After containerd came back, how long a call waits for this channel to reconnect (gRPC backs off up
#: to ``grpc.max_reconnect_backoff_ms`` = 1 s between attempts, failing every call in between).
RECONNECT_GRACE = 3.0
# What gRPC says of a call it failed because no connection could be made: the request never left.
_NOT_SENT = ("failed to connect", "connection refused", "no such file or directory", "connect failed")

log = logging.getLogger(__name__)


def never_sent(err: grpc.RpcError) -> bool:
    """Whether an UNAVAILABLE error means the request was never sent (so a retry cannot repeat it)."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (err.details() or "").lower()
    return any(text in details for text in _NOT_SENT)


def accepts_connections(path: str) -> bool:
    """Whether something listens on the unix socket ``path`` now (a connect, nothing sent)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def target_for(address: str) -> tuple[str, bool]:
    """Turn a containerd address into a gRPC target; also say whether it is a unix socket.

    >>> target_for("/run/containerd/containerd.sock")
    ('unix:///run/containerd/containerd.sock', True)
    >>> target_for("127.0.0.1:1234")
    ('127.0.0.1:1234', False)
    """
    if not isinstance(address, str) or not address:
        raise errdefs.InvalidParameter("address must be a non-empty string")
    if address.startswith("unix://"):
        return address, True
    if address.startswith("/"):
        return "unix://" + address, True
    if address.startswith("unix:"):
        return "unix://" + address[len("unix:"):], True
    for prefix in ("tcp://", "http://"):
        if address.startswith(prefix):
            address = address[len(prefix):]
    if ":" not in address:
        raise errdefs.InvalidParameter(f"address {address!r} is neither a unix socket path nor host:port")
    return address, False


@contextlib.contextmanager
def _mapped_errors(closed: threading.Event, what: str) -> Iterator[None]:
    """Turn what gRPC raises inside into the typed error; every gRPC call of the SDK runs in one."""
    try:
        yield
    except errdefs.LibcontainerdError:
        raise
    except grpc.RpcError as err:
        if closed.is_set():
            raise errdefs.Cancelled(f"{what + ': ' if what else ''}the client is closed") from err
        raise errdefs.from_grpc(err, what) from err
    except ValueError as err:
        if closed.is_set():  # grpc raises ValueError on a closed channel
            raise errdefs.Cancelled(f"{what + ': ' if what else ''}the client is closed") from err
        raise


@attrs.define(eq=False)
class Stream:
    """A streaming call under way: iterate its responses (errors mapped); cancel it from any thread."""

    _call: Any = attrs.field(repr=False)
    _closed: threading.Event = attrs.field(repr=False)
    what: str

    def __iter__(self) -> Iterator[Any]:
        with _mapped_errors(self._closed, self.what):
            yield from self._call

    def cancel(self) -> None:
        """End the call; an iteration under way raises :class:`~libcontainerd.errdefs.Cancelled`."""
        self._call.cancel()


@attrs.define(eq=False)
class Pending:
    """A unary call under way, awaited in slices so that Ctrl-C interrupts the wait.

    As a context manager it cancels the call on the way out (a no-op once it answered), so a
    wait left by an exception or ``KeyboardInterrupt`` leaves no call behind.
    """

    _future: Any = attrs.field(repr=False)
    _closed: threading.Event = attrs.field(repr=False)
    what: str

    def result(self, within: float | None = None) -> Any:
        """The answer; waits up to ``within`` seconds (``None``: until the call ends).

        Raises:
            errdefs.Deadline: no answer ``within`` seconds (the call goes on), or the call's own deadline passed.
            errdefs.LibcontainerdError: the call failed (mapped).
        """
        deadline = None if within is None else time.monotonic() + within
        with _mapped_errors(self._closed, self.what):
            while True:
                wait = _WAIT_SLICE if deadline is None else max(0.0, min(_WAIT_SLICE, deadline - time.monotonic()))
                try:
                    return self._future.result(timeout=wait)
                except grpc.FutureTimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise errdefs.Deadline(f"{self.what}: no answer within {within} s") from None

    def cancel(self) -> None:
        self._future.cancel()

    def __enter__(self) -> Pending:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def _channel(address: str, credentials: grpc.ChannelCredentials | None, private: bool) -> grpc.Channel:
    target, _ = target_for(address)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
        ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
        # Reconnect quickly after containerd restarts: the default backoff grows to 120 s.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.enable_retries", 0),
    ]
    if private:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=options)
    return grpc.insecure_channel(target, options=options)


@attrs.define(eq=False, repr=False)
class Connection:
    """A channel to containerd, the stubs this SDK uses, and the calls made on them.

    Make one with :meth:`open`. ``timeout`` is the default deadline (seconds, ``None``: none)
    of calls that are not given their own.
    """

    _channel: grpc.Channel
    _namespace: str
    timeout: float | None = None
    _socket_path: str | None = None  # the unix socket's path; None for a TCP address
    _closed: threading.Event = attrs.field(init=False, factory=threading.Event)
    _stubs: dict[str, Any] = attrs.field(init=False, factory=dict)

    @classmethod
    def open(
        cls,
        address: str,
        namespace: str,
        *,
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        private: bool = False,
    ) -> Connection:
        """A connection to ``address`` (nothing needs to serve there yet) for ``namespace``.

        An empty ``namespace`` sends no namespace header (the supervisor's health probe needs none).
        gRPC lets channels of one process with the same target and options share one socket
        connection; a ``private`` connection shares its own with no one (the supervisor's probe:
        else a client made later would ride the probe's connection, and answer while the
        daemon's socket is gone).
        """
        target, unix = target_for(address)
        return cls(_channel(address, credentials, private), namespace, timeout,
                   target[len("unix://"):] if unix else None)

    @property
    def socket_path(self) -> str | None:
        """The unix socket's path; None for a TCP address."""
        return self._socket_path

    # -- stubs: made on first use (stateless, so two threads making one at once is harmless) --

    @property
    def tasks(self) -> Any:
        return self._stub("tasks", tasks_pb2_grpc.TasksStub)

    @property
    def containers(self) -> Any:
        return self._stub("containers", containers_pb2_grpc.ContainersStub)

    @property
    def events(self) -> Any:
        return self._stub("events", events_pb2_grpc.EventsStub)

    @property
    def version(self) -> Any:
        return self._stub("version", version_pb2_grpc.VersionStub)

    # Only checkpoints use these services: their generated modules load on first use, which keeps
    # `from libcontainerd import new_client` quicker.
    @property
    def content(self) -> Any:
        from .._api.containerd.api.services.content.v1 import content_pb2_grpc

        return self._stub("content", content_pb2_grpc.ContentStub)

    @property
    def images(self) -> Any:
        from .._api.containerd.api.services.images.v1 import images_pb2_grpc

        return self._stub("images", images_pb2_grpc.ImagesStub)

    @property
    def leases(self) -> Any:
        from .._api.containerd.api.services.leases.v1 import leases_pb2_grpc

        return self._stub("leases", leases_pb2_grpc.LeasesStub)

    @property
    def snapshots(self) -> Any:
        from .._api.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc

        return self._stub("snapshots", snapshots_pb2_grpc.SnapshotsStub)

    @property
    def diff(self) -> Any:
        from .._api.containerd.api.services.diff.v1 import diff_pb2_grpc

        return self._stub("diff", diff_pb2_grpc.DiffStub)

    def _stub(self, name: str, factory: Callable[[grpc.Channel], Any]) -> Any:
        stub = self._stubs.get(name)
        if stub is None:
            stub = self._stubs[name] = factory(self._channel)
        return stub

    # -- calls ------------------------------------------------------------------------------

    def _metadata(self, lease: str | None) -> tuple[tuple[str, str], ...]:
        headers = ((NAMESPACE_HEADER, self._namespace),) if self._namespace else ()
        return (*headers, (LEASE_HEADER, lease)) if lease else headers

    def _deadline(self, timeout: Any) -> float | None:
        return self.timeout if timeout is DEFAULT else timeout

    def call(
        self,
        method: Callable[..., Any],
        request: Any,
        what: str = "",
        *,
        timeout: Any = DEFAULT,
        lease: str | None = None,
        wait_for_ready: bool | None = None,
    ) -> Any:
        """Make one unary call of a stub's ``method``.

        Args:
            method: e.g. ``conn.tasks.Start``.
            request: its request message.
            what: the object the call is about ("task web"), the start of an error's message.
            timeout: the deadline in seconds (``None``: none; default: the connection's).
            lease: a containerd lease id to make the call under.
            wait_for_ready: wait for the channel to connect instead of failing at once.

        Raises:
            errdefs.LibcontainerdError: the mapped gRPC error, with the gRPC error as ``__cause__``.
        """
        metadata, deadline = self._metadata(lease), self._deadline(timeout)
        with _mapped_errors(self._closed, what):
            try:
                return method(request, metadata=metadata, timeout=deadline, wait_for_ready=wait_for_ready)
            except grpc.RpcError as err:
                if self._closed.is_set() or not never_sent(err) or not self.reconnected():
                    raise
                log.debug("%s: containerd serves again; retrying on the reconnected channel", what or "call")
                return method(request, metadata=metadata, timeout=deadline, wait_for_ready=wait_for_ready)

    def stream(
        self, method: Callable[..., Any], request: Any, what: str = "", *, timeout: Any = DEFAULT,
        lease: str | None = None,
    ) -> Stream:
        """Start a streaming call: ``request`` is a message, or an iterator of them for a client stream."""
        with _mapped_errors(self._closed, what):
            call = method(request, metadata=self._metadata(lease), timeout=self._deadline(timeout))
        return Stream(call, self._closed, what)

    def future(self, method: Callable[..., Any], request: Any, what: str = "", *, timeout: Any = DEFAULT) -> Pending:
        """Start a unary call and return at once; :meth:`Pending.result` waits for its answer."""
        with _mapped_errors(self._closed, what):
            future = method.future(request, metadata=self._metadata(None),  # type: ignore[attr-defined]
                                   timeout=self._deadline(timeout))
        return Pending(future, self._closed, what)

    def reconnected(self, grace: float = RECONNECT_GRACE) -> bool:
        """After a call failed unsent: True once this channel serves again, if containerd listens now.

        A channel whose daemon went away fails every call at once until its next reconnect attempt,
        up to a second after containerd is back. When containerd's socket accepts connections (it is
        back, or never went), this waits up to ``grace`` s for the channel to reconnect, so that the
        call can be made again; when nothing listens, it returns False at once (a daemon that is down
        still fails calls fast).
        """
        if self._socket_path is None or self._closed.is_set() or not accepts_connections(self._socket_path):
            return False
        try:
            self.version.Version(empty_pb2.Empty(), metadata=self._metadata(None), timeout=grace,
                                 wait_for_ready=True)
        except (grpc.RpcError, ValueError):
            return False
        return True

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; calls under way and later ones raise :class:`~libcontainerd.errdefs.Cancelled`."""
        self._closed.set()
        self._channel.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

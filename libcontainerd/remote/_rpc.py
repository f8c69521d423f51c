"""The gRPC connection: channel options, namespace metadata, stubs, deadlines, error mapping.

One :class:`Connection` per client. Every unary call goes through :meth:`Connection.call`,
which adds the ``containerd-namespace`` header, applies the client's default deadline and
maps gRPC errors to :mod:`libcontainerd.errdefs`. It knows nothing of containers or events.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional, TypeVar

import grpc

from .. import errdefs
from .._api.containerd.api.services.containers.v1 import containers_pb2_grpc
from .._api.containerd.api.services.events.v1 import events_pb2_grpc
from .._api.containerd.api.services.tasks.v1 import tasks_pb2_grpc
from .._api.containerd.api.services.version.v1 import version_pb2_grpc

log = logging.getLogger("libcontainerd")

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
# containerd's defaults.DefaultMaxRecvMsgSize / DefaultMaxSendMsgSize
MAX_MESSAGE_SIZE = 16 << 20

T = TypeVar("T")

#: Sentinel meaning "use the client's default timeout".
DEFAULT: Any = object()


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


class Connection:
    """A channel to containerd with the stubs this SDK uses."""

    def __init__(
        self,
        address: str,
        namespace: str,
        *,
        timeout: Optional[float] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
    ) -> None:
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
        if credentials is not None:
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.metadata = ((NAMESPACE_HEADER, namespace),)
        self.timeout = timeout
        self.tasks = tasks_pb2_grpc.TasksStub(self.channel)
        self.containers = containers_pb2_grpc.ContainersStub(self.channel)
        self.events = events_pb2_grpc.EventsStub(self.channel)
        self.version = version_pb2_grpc.VersionStub(self.channel)
        self._closed = threading.Event()
        self._lazy_stubs: dict[str, Any] = {}

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

    def metadata_for(self, lease: Optional[str] = None) -> tuple[tuple[str, str], ...]:
        """The call metadata: the namespace, and the lease that protects what the call creates."""
        return (*self.metadata, (LEASE_HEADER, lease)) if lease else self.metadata

    def _stub(self, name: str, factory: Callable[[grpc.Channel], Any]) -> Any:
        stub = self._lazy_stubs.get(name)
        if stub is None:  # two threads may both build one: stubs are cheap and stateless
            stub = self._lazy_stubs[name] = factory(self.channel)
        return stub

    def call(self, method: Callable[..., T], request: Any, what: str = "", timeout: Any = DEFAULT, *,
             lease: Optional[str] = None, **kw: Any) -> T:
        """Make one unary call with the namespace (and ``lease``, if given) and deadline, mapping errors.

        Raises:
            errdefs.LibcontainerdError: the mapped gRPC error, with the gRPC error as ``__cause__``.
        """
        if timeout is DEFAULT:
            timeout = self.timeout
        try:
            return method(request, metadata=self.metadata_for(lease), timeout=timeout, **kw)
        except grpc.RpcError as err:
            if self._closed.is_set():
                raise errdefs.Cancelled(f"{what + ': ' if what else ''}the client is closed") from err
            raise errdefs.from_grpc(err, what) from err
        except ValueError as err:
            if self._closed.is_set():  # grpc raises ValueError on a closed channel
                raise errdefs.Cancelled(f"{what + ': ' if what else ''}the client is closed") from err
            raise

    def close(self) -> None:
        self._closed.set()
        self.channel.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

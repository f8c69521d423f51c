"""The client: connection, namespace, state dir, containers, and the event machinery it owns.

``Client`` owns four things that need stopping: the gRPC channel, the event reader thread,
the event executor's workers, and the stdio I/O loop (with its delivery pool) that the
ready-made stdio callbacks of its processes run on. ``close()`` stops all four, is idempotent, may be called
from any thread (a backend callback included), and is also run at interpreter exit for
clients still open.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

import attrs
import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from .. import _runc_root, errdefs
from .. import _validation as valid
from .._api.containerd.api.services.containers.v1 import containers_pb2
from .._api.containerd.runtime.v2.runc.options import oci_pb2 as runc_options
from .._typeurl import SPEC_URL, pack_json, pack_message
from ..queue import KeyedSerialExecutor
from ..types import Backend, PullProgress, Version
from . import _bundle
from ._container import RUNC_OPTIONS, Container
from ._events import EventStream
from ._rpc import Connection
from ._session import Session

if TYPE_CHECKING:
    from ._images import ContainerSnapshot, Image

log = logging.getLogger(__name__)

DEFAULT_SHIM = "io.containerd.runc.v2"
_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_atexit_lock = threading.Lock()
_atexit_registered = False


def _close_all_at_exit() -> None:
    for client in list(_live_clients):
        try:
            client.close(timeout=2.0)
        except Exception:  # at exit, a failing close must not hide the others
            log.debug("closing %r at exit failed", client, exc_info=True)


def _register(client: Client) -> None:
    global _atexit_registered
    with _atexit_lock:
        _live_clients.add(client)
        if not _atexit_registered:
            atexit.register(_close_all_at_exit)
            _atexit_registered = True


def _runc_options(value: Message | Mapping[str, Any] | None) -> Any | None:
    """The runtime options ``Any``: from a runc ``Options`` message or a dict of its fields."""
    if value is None:
        return None
    if isinstance(value, Message):
        return pack_message(value)
    if not isinstance(value, Mapping):
        raise errdefs.InvalidParameter(
            f"runtime_options must be a runc Options message or a dict, not {type(value).__name__}")
    fields = {f.name: f for f in runc_options.Options.DESCRIPTOR.fields}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise errdefs.InvalidParameter(
            f"unknown runc option(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(fields))}")
    try:
        return pack_message(runc_options.Options(**value))
    except (TypeError, ValueError) as exc:
        raise errdefs.InvalidParameter(f"invalid runc options: {exc}") from exc


def _with_runc_root(options: Any | None, shim: str, runc_root: str | None) -> Any | None:
    """The runtime options with runc's ``root`` set to the client's runc root, for a runc shim.

    A root the caller chose is kept, and so are options of another runtime.
    """
    if runc_root is None or "runc" not in shim:
        return options
    opts = runc_options.Options()
    if options is not None:
        if not options.type_url.endswith(RUNC_OPTIONS):
            return options
        opts.ParseFromString(options.value)
    if opts.root:
        return options
    opts.root = runc_root
    return pack_message(opts)


def _with_cgroups_path(spec: Mapping[str, Any], namespace: str, id: str,
                       runtime_options: Message | Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The spec with ``linux.cgroupsPath`` ``/<namespace>/<id>`` when it has none, as containerd's own
    default spec does.

    Without one, runc names the cgroup after the bare id, so same-named containers of two namespaces
    (or of two daemons) share a cgroup: their limits add up and pausing one freezes the other. A
    given path is kept, and so is a spec for runc's systemd driver (whose paths read
    ``slice:prefix:name``). The caller's dict is not changed.
    """
    linux = spec.get("linux")
    if not isinstance(linux, Mapping) or "cgroupsPath" in linux:
        return spec
    if isinstance(runtime_options, Mapping):
        systemd = runtime_options.get("systemd_cgroup", False)
    else:
        systemd = getattr(runtime_options, "systemd_cgroup", False)
    if systemd:
        return spec
    return {**spec, "linux": {**linux, "cgroupsPath": f"/{namespace}/{id}"}}


@attrs.define(eq=False, repr=False)
class Client:
    """A containerd client bound to one namespace and one state dir.

    Use :func:`libcontainerd.new_client` to make one. It owns the session its containers,
    tasks and processes share (the connection, namespace and state dir), the event stream's
    reader thread and the executor that delivers events to the backend.

    Attributes:
        address: the containerd address, as given.
        backend: the object that gets the events (or ``None``).

    >>> with libcontainerd.new_client(sock, state_dir, "demo", None) as client:
    ...     client.is_serving(timeout=10)
    True
    """

    address: str
    backend: Backend | None
    _session: Session
    _executor: KeyedSerialExecutor
    _events: EventStream
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _closed: bool = attrs.field(init=False, default=False)

    @property
    def namespace(self) -> str:
        """The containerd namespace of every call."""
        return self._session.namespace

    @property
    def state_dir(self) -> str:
        """Where bundle dirs and FIFOs live (``<state_dir>/<container id>/``), as an absolute path."""
        return self._session.state_dir

    @property
    def runc_root(self) -> str | None:
        """runc's ``--root`` for the runc containers this client creates (None: containerd's default).

        >>> client.runc_root.endswith("/runc")  # a daemon of supervisor.start(): <state dir>/runc
        True
        """
        return self._session.runc_root

    @property
    def serialize_exec_starts(self) -> bool:
        """Whether exec starts are serialized per task (containerd#8557)."""
        return self._session.serialize_exec_starts

    @property
    def timeout(self) -> float | None:
        """The default deadline of unary calls, in seconds (``None``: none).

        It can be changed at any time; calls already made keep the deadline they started with.

        >>> client.timeout = 5
        """
        return self._session.conn.timeout

    @timeout.setter
    def timeout(self, timeout: float | None) -> None:
        self._session.conn.timeout = valid.timeout(timeout)

    # -- daemon ----------------------------------------------------------------------

    def version(self) -> Version:
        """containerd's version and revision.

        >>> client.version()  # doctest: +ELLIPSIS
        Version(version='...', revision='...')
        """
        conn = self._session.conn
        resp = conn.call(conn.version.Version, empty_pb2.Empty(), "containerd version")
        return Version(version=resp.version, revision=resp.revision)

    def is_serving(self, timeout: float | None = None) -> bool:
        """True once containerd answers; waits up to ``timeout`` seconds (``None``: until it does).

        Ctrl-C interrupts a wait without a timeout (``KeyboardInterrupt``).

        >>> client.is_serving(timeout=5)
        True
        """
        conn = self._session.conn
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                conn.call(conn.version.Version, empty_pb2.Empty(), "containerd", timeout=remaining,
                          wait_for_ready=True)
                return True
            except (errdefs.Deadline, errdefs.Cancelled):
                return False
            except errdefs.Unavailable:
                # wait_for_ready waits for a connection, but a call that went out on one that
                # containerd's death was breaking fails at once ("Stream removed"): wait on.
                if self._closed or (deadline is not None and time.monotonic() >= deadline):
                    return False
                time.sleep(0.05)

    # -- containers ------------------------------------------------------------------

    def new_container(
        self,
        id: str,
        spec: Mapping[str, Any],
        shim: str = DEFAULT_SHIM,
        runtime_options: Message | Mapping[str, Any] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        image: str | Image | None = None,
        snapshotter: str | None = None,
    ) -> Container:
        """Create a container with its bundle dir ``<state_dir>/<id>``.

        Args:
            id: container id (letters, digits, single ``.``/``_``/``-``; at most 76 chars).
            spec: the OCI runtime spec, e.g. ``oci.default_spec(rootfs, ["sh"])``. Without a
                ``linux.cgroupsPath`` it is sent with ``/<namespace>/<id>`` (containerd's default),
                so that same-named containers of two namespaces never share a cgroup.
            shim: the runtime (containerd shim) name.
            runtime_options: runc ``Options`` message or a dict of its fields. Its ``root`` (runc's
                ``--root``) defaults to the client's :attr:`runc_root` when that is set.
            labels: extra container labels.
            image: run on a snapshot of this image (an :class:`Image` or an image name) instead of
                a rootfs directory; ``spec`` then has ``root.path`` ``"rootfs"`` (see
                :func:`oci.image_spec`). The snapshot's key is the container id; the image is
                unpacked first if it is not yet.
            snapshotter: the snapshotter of that snapshot (default ``overlayfs``).

        Raises:
            errdefs.InvalidParameter: bad id, spec, options or labels (nothing was made).
            errdefs.Conflict: a container with this id exists (its bundle is untouched).
            errdefs.NotFound: no such image (nothing was made).

        >>> ctr = client.new_container("hello", oci.default_spec(rootfs, ["echo", "hi"]))
        >>> ctr  # doctest: +ELLIPSIS
        <Container id='hello' namespace='doc-...'>
        """
        valid.identifier(id)
        valid.runtime_spec(spec)
        spec = _with_cgroups_path(spec, self.namespace, id, runtime_options)
        any_spec = pack_json(SPEC_URL, spec, "spec")
        valid.runtime_name(shim)
        any_options = _with_runc_root(_runc_options(runtime_options), shim, self._session.runc_root)
        all_labels = valid.labels(labels)
        conn = self._session.conn
        if image is not None and self._containers_has(id):
            raise errdefs.Conflict(f"container {id}: id already in use")
        snapshot: ContainerSnapshot | None = None
        if image is not None:
            # The image services' generated modules load on first use (quicker `import libcontainerd`).
            from ._images import ContainerSnapshot

            snapshot = ContainerSnapshot.prepare(conn, id, image, snapshotter)
        try:
            bundle_path = os.path.join(self.state_dir, id)
            recorded, made = _bundle.create(bundle_path, spec)
        except BaseException:
            if snapshot is not None:
                snapshot.discard()
            raise
        all_labels[_bundle.BUNDLE_LABEL] = recorded
        runtime = containers_pb2.Container.Runtime(name=shim, options=any_options)
        record = containers_pb2.Container(id=id, labels=all_labels, runtime=runtime, spec=any_spec)
        if snapshot is not None:
            record.image, record.snapshotter, record.snapshot_key = (snapshot.image.name, snapshot.snapshotter,
                                                                     snapshot.key)
        try:
            conn.call(conn.containers.Create, containers_pb2.CreateContainerRequest(container=record),
                      f"container {id}")
        except errdefs.LibcontainerdError as exc:
            if made:
                _bundle.remove(recorded, id, self.namespace)
            if snapshot is not None:
                snapshot.discard()
            if isinstance(exc, errdefs.Conflict):
                raise errdefs.Conflict(f"container {id}: id already in use", explanation=exc.explanation,
                                       code=exc.code) from exc.__cause__
            raise
        except BaseException:
            if made:
                _bundle.remove(recorded, id, self.namespace)
            if snapshot is not None:
                snapshot.discard()
            raise
        if snapshot is not None:
            snapshot.release()
        return Container.from_record(self._session, record)

    def _containers_has(self, id: str) -> bool:
        """Whether a container of that id exists (asked before preparing a snapshot keyed by the id,
        which would otherwise remove another container's snapshot on the way out)."""
        try:
            conn = self._session.conn
            conn.call(conn.containers.Get, containers_pb2.GetContainerRequest(id=id), f"container {id}")
        except errdefs.NotFound:
            return False
        return True

    # -- images ------------------------------------------------------------------------

    def pull(self, ref: str, *, platform: str | None = None, unpack: bool = True,
             snapshotter: str | None = None, plain_http: bool = False, auth: tuple[str, str] | None = None,
             ca_file: str | None = None, progress: Callable[[PullProgress], None] | None = None) -> Image:
        """Pull an image from an OCI distribution registry into containerd, as ``ctr image pull`` does.

        Layers download in parallel (at most 3 at once), stream into the content store and are
        verified against their digest and size before they are committed; content already there
        is not fetched again. A lease protects what is in flight from the garbage collector.

        Args:
            ref: ``host[:port]/repo:tag`` or ``...@sha256:...``; without a host, Docker Hub.
            platform: ``"os/arch[/variant]"`` to pick from an index (default: this machine's).
            unpack: apply the layers into ``snapshotter``.
            snapshotter: default ``overlayfs``.
            plain_http: talk http, not https.
            auth: ``(user, password)``; default: ``$DOCKER_CONFIG/config.json``'s for the host, else none.
            ca_file: PEM file of a private CA to trust.
            progress: called with :class:`PullProgress` values (on the pull's threads, one at a time).

        Raises:
            errdefs.NotFound: unknown repository, tag or platform.
            errdefs.Unauthorized: credentials refused or missing.
            errdefs.Unavailable: the registry cannot be reached (or its TLS certificate is not trusted).
            errdefs.DataLoss: a blob or manifest does not match its digest or size (nothing of it is kept).

        >>> img = client.pull("127.0.0.1:5000/busybox:latest", plain_http=True)  # doctest: +SKIP
        """
        from . import _images

        return _images.pull(self._session.conn, ref, platform=platform, unpack=unpack, snapshotter=snapshotter,
                            plain_http=plain_http, auth=auth, ca_file=ca_file, progress=progress)

    def import_images(self, archive: Any, *, unpack: bool = True, snapshotter: str | None = None,
                      progress: Callable[[PullProgress], None] | None = None) -> list[Image]:
        """Import a ``docker save`` archive or an OCI image layout archive (a path or a binary file object).

        The archive is read as a stream; images are named as ``ctr images import`` names them.

        >>> [i.name for i in client.import_images("busybox.tar")]  # doctest: +SKIP
        ['docker.io/library/busybox:latest']
        """
        from . import _images

        return _images.import_archive(self._session.conn, archive, unpack=unpack, snapshotter=snapshotter,
                                      progress=progress)

    def list_images(self) -> list[Image]:
        """Every image of this client's namespace, sorted by name.

        >>> [i.name for i in client.list_images()]  # doctest: +SKIP
        """
        from . import _images

        return _images.list_images(self._session.conn)

    def get_image(self, name: str) -> Image:
        """The image of that name (``busybox`` also finds ``docker.io/library/busybox:latest``).

        Raises:
            errdefs.NotFound: no such image.

        >>> client.get_image("127.0.0.1:5000/busybox:latest").target.digest  # doctest: +SKIP
        """
        from . import _images

        return _images.get_image(self._session.conn, name)

    def remove_image(self, name: str, *, sync: bool = False) -> None:
        """Remove the image record; containerd's garbage collector frees what nothing else uses
        (``sync=True`` waits for that collection).

        Raises:
            errdefs.NotFound: no such image.

        >>> client.remove_image("127.0.0.1:5000/busybox:latest")  # doctest: +SKIP
        """
        from . import _images

        _images.remove_image(self._session.conn, name, sync=sync)

    def replace_container(
        self,
        id: str,
        spec: Mapping[str, Any],
        shim: str = DEFAULT_SHIM,
        runtime_options: Message | Mapping[str, Any] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        image: str | Image | None = None,
        snapshotter: str | None = None,
    ) -> Container:
        """Like :meth:`new_container`, but an existing container of that id is force-deleted first.

        Its task (if any) is killed and deleted, the container deleted, and a new one created
        (moby's ``ReplaceContainer``); the old container's stdio, bundle and snapshot are gone afterwards.

        >>> old = client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"]))
        >>> old.start().pid > 0
        True
        >>> ctr = client.replace_container("web", oci.default_spec(rootfs, ["echo", "new"]))
        """
        try:
            return self.new_container(id, spec, shim, runtime_options, labels=labels, image=image,
                                      snapshotter=snapshotter)
        except errdefs.Conflict:
            log.warning("a container with id %s exists; cleaning it up to replace it", id,
                        extra={"container_id": id, "namespace": self.namespace})
        try:
            old = self.load_container(id)
        except errdefs.NotFound:
            return self.new_container(id, spec, shim, runtime_options, labels=labels, image=image,
                                      snapshotter=snapshotter)
        try:
            old.task().force_delete()
        except errdefs.NotFound:
            pass
        try:
            old.delete()
        except errdefs.NotFound:
            pass
        return self.new_container(id, spec, shim, runtime_options, labels=labels, image=image,
                                      snapshotter=snapshotter)

    def load_container(self, id: str) -> Container:
        """The existing container of that id.

        Raises:
            errdefs.NotFound: there is none in this namespace.

        >>> client.new_container("web", oci.default_spec(rootfs, ["sleep", "60"])).start().pid > 0
        True
        >>> ctr = client.load_container("web")
        >>> ctr.task().status()
        <Status.RUNNING: 'running'>
        """
        valid.identifier(id)
        conn = self._session.conn
        resp = conn.call(conn.containers.Get, containers_pb2.GetContainerRequest(id=id), f"container {id}")
        return Container.from_record(self._session, resp.container)

    def list_containers(self) -> list[Container]:
        """Every container of this client's namespace.

        >>> ctr = client.new_container("web", oci.default_spec(rootfs, ["true"]))
        >>> [c.id for c in client.list_containers()]
        ['web']
        """
        conn = self._session.conn
        resp = conn.call(conn.containers.List, containers_pb2.ListContainersRequest(), "containers")
        return [Container.from_record(self._session, c) for c in resp.containers]

    # -- lifetime ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self, timeout: float | None = None) -> None:
        """Stop the event reader, the event workers and the stdio I/O loop, and close the channel. Idempotent.

        Running tasks and their FIFOs are left alone: another client on the same state dir
        can :meth:`Container.attach_task` them. Stdio objects of this client still running
        (``stdio.capture()``, ``stdio.attach()``) end as if cancelled: what they read stays
        readable and their ``wait()`` returns. Safe to call from a backend callback.

        Args:
            timeout: seconds to wait for the event workers (``None``: as long as they run);
                the reader thread is given at most 1 s when ``None``.

        >>> client.close()
        >>> client  # doctest: +ELLIPSIS
        <Client address='...' namespace='doc-...' closed>
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _live_clients.discard(self)
        self._events.close(timeout=1.0 if timeout is None else timeout)
        # Stdio pumps still running are cancelled (what they read stays in their captures); the FIFOs
        # stay, so another client can attach_task the running tasks.
        self._session.io_loop.close(timeout=2.0 if timeout is None else timeout)
        self._executor.close(timeout=timeout)
        self._session.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Client address={self.address!r} namespace={self.namespace!r} {state}>"


def _prepare_state_dir(state_dir: str) -> str:
    if not isinstance(state_dir, (str, os.PathLike)) or not str(state_dir):
        raise errdefs.InvalidParameter("state_dir must be a directory path")
    path = os.path.abspath(os.fspath(state_dir))
    if "\x00" in path:
        raise errdefs.InvalidParameter("state_dir must not contain NUL characters")
    if os.path.islink(path):
        raise errdefs.InvalidParameter(f"state_dir {path} is a symlink; give the real directory")
    try:
        os.makedirs(path, mode=0o711, exist_ok=True)
    except OSError as exc:
        raise errdefs.InvalidParameter(f"state_dir {path} cannot be created: {exc.strerror or exc}") from exc
    if not os.path.isdir(path):
        raise errdefs.InvalidParameter(f"state_dir {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise errdefs.Forbidden(f"state_dir {path} is not writable")
    return path


def new_client(
    address: str,
    state_dir: str,
    namespace: str,
    backend: Backend | None,
    *,
    timeout: float | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    event_workers: int = 4,
    serialize_exec_starts: bool = True,
    runc_root: str | None = None,
) -> Client:
    """Connect to containerd; returns once the event reader runs.

    Args:
        address: ``/path/to.sock``, ``unix:///path``, or ``host:port``.
        state_dir: where bundle dirs and FIFOs live (``<state_dir>/<container id>/``).
        namespace: the containerd namespace of every call.
        backend: gets ``process_event(container_id, event_type, info)`` for task events.
        timeout: default deadline in seconds for unary calls (``None``: none).
        credentials: ``grpc.ChannelCredentials`` for a TLS TCP address.
        event_workers: threads delivering events (per container in order).
        serialize_exec_starts: serialize exec starts per task (containerd#8557).
        runc_root: runc's ``--root`` for the runc containers this client creates. By default the one
            of a daemon started by :func:`libcontainerd.supervisor.start` (read from the file it
            writes beside its socket), so that its containers never share runc state with another
            containerd's; None for any other daemon (containerd's default, ``/run/containerd/runc``).

    Nothing needs to serve at ``address`` yet: calls then raise ``errdefs.Unavailable`` and
    the event reader waits until containerd appears.

    >>> client = libcontainerd.new_client(sock, state_dir, "demo", None)  # e.g. "/run/containerd/containerd.sock"
    >>> client.namespace, client.closed
    ('demo', False)
    >>> client.close()
    """
    valid.identifier(namespace, "namespace")
    if backend is not None and not callable(getattr(backend, "process_event", None)):
        raise errdefs.InvalidParameter("backend must have a process_event(container_id, event_type, info) method")
    valid.timeout(timeout)
    if runc_root is not None and not os.path.isabs(valid.text(runc_root, "runc_root")):
        raise errdefs.InvalidParameter(f"runc_root must be an absolute path, not {runc_root!r}")
    state_dir = _prepare_state_dir(state_dir)
    conn = Connection.open(address, namespace, timeout=timeout, credentials=credentials)
    if runc_root is None:
        runc_root = _runc_root.of_socket(conn.socket_path)
    session = Session(conn, namespace, state_dir, serialize_exec_starts, runc_root=runc_root)
    executor = KeyedSerialExecutor(max_workers=event_workers, name="libcontainerd-events")
    events = session.exits = EventStream(conn, namespace, backend, executor, session.tracker)
    events.start()
    client = Client(address, backend, session, executor, events)
    _register(client)
    return client

"""libcontainerd: a synchronous, thread-based containerd client, after moby's libcontainerd.

>>> import libcontainerd
>>> from libcontainerd import oci, stdio
>>> client = libcontainerd.new_client("/run/containerd/containerd.sock", "/tmp/state", "demo", None)  # doctest: +SKIP

The public names are listed in ``__all__``; the submodules ``errdefs``, ``oci``, ``stdio``,
``cio``, ``supervisor`` and ``testing`` load on first use, so ``import libcontainerd``
stays quick. See the documentation for the threading model and the event semantics.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

# grpcio >= 1.80 re-creates its poller thread in a child it forks (its fork support is on by default),
# and a subprocess closing its inherited fds before exec then makes that poller abort the child
# (grpc/grpc#43055). Python 3.9 forks for every subprocess, later versions for some (preexec_fn,
# user/group), so a live client would now and then kill the containerd the supervisor restarts, or any
# command the caller runs. This SDK never uses gRPC across a fork, so it turns that support off unless the
# caller chose otherwise; grpc reads the setting when it loads, so it works when grpc is not loaded yet.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from . import errdefs
from .types import Backend, Descriptor, EventInfo, EventType, ExitStatus, PullProgress, Stats, Status, Summary, Version

if TYPE_CHECKING:
    from . import cio, oci, stdio, supervisor, testing
    from .remote import Client, Container, Image, Process, Task, new_client

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "Client",
    "Container",
    "Descriptor",
    "EventInfo",
    "EventType",
    "ExitStatus",
    "Image",
    "Process",
    "PullProgress",
    "Stats",
    "Status",
    "Summary",
    "Task",
    "Version",
    "cio",
    "errdefs",
    "new_client",
    "oci",
    "stdio",
    "supervisor",
    "testing",
]

_LAZY_MODULES = {"cio", "oci", "stdio", "supervisor", "testing", "remote", "queue"}
_REMOTE_NAMES = {"Client", "Container", "Image", "Process", "Task", "new_client"}

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _REMOTE_NAMES:
        remote = importlib.import_module(".remote", __name__)
        value = getattr(remote, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # What tab completion at a prompt offers: the public names, not this module's own imports.
    return sorted({*__all__, "__version__"})

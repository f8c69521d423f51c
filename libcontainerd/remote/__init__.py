"""The containerd adapter: client, containers, tasks, processes, images and the event stream.

This is moby's ``libcontainerd/remote`` in Python. Implementation modules are private;
their public names are re-exported here and from :mod:`libcontainerd`.
"""

import sys
from typing import TYPE_CHECKING, Any

from ._client import Client, new_client
from ._container import Container
from ._process import Process, Task

if TYPE_CHECKING:
    from ._images import Image

__all__ = ["Client", "Container", "Image", "Process", "Task", "new_client"]


def _export(*objects: Any) -> None:
    """Name the public module in ``help()`` (``libcontainerd.Client``, not ``libcontainerd.remote._client``).

    doctest looks for a module's examples only in objects whose ``__module__`` is that module,
    so each defining module lists them in its ``__test__`` (doctest's own hook) to keep its
    examples run.
    """
    for obj in objects:
        vars(sys.modules[obj.__module__]).setdefault("__test__", {})[obj.__name__] = obj
        obj.__module__ = "libcontainerd"


_export(Client, Container, Process, Task, new_client)


def __getattr__(name: str) -> Any:
    # The image services' generated modules load on first use: `import libcontainerd` stays quick.
    if name == "Image":
        from ._images import Image

        return Image
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

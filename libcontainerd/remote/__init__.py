"""The containerd adapter: client, containers, tasks, processes, images and the event stream.

This is moby's ``libcontainerd/remote`` in Python. Implementation modules are private;
their public names are re-exported here and from :mod:`libcontainerd`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._client import Client, new_client
from ._container import Container
from ._process import Process, Task

if TYPE_CHECKING:
    from ._images import Image

__all__ = ["Client", "Container", "Image", "Process", "Task", "new_client"]


def __getattr__(name: str) -> Any:
    # The image services' generated modules load on first use: `import libcontainerd` stays quick.
    if name == "Image":
        from ._images import Image

        return Image
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

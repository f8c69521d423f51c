"""The containerd adapter: client, containers, tasks, processes and the event stream.

This is moby's ``libcontainerd/remote`` in Python. Implementation modules are private;
their public names are re-exported here and from :mod:`libcontainerd`.
"""

from ._client import Client, new_client
from ._container import Container
from ._images import Image
from ._process import Process, Task

__all__ = ["Client", "Container", "Image", "Process", "Task", "new_client"]

"""Where runc keeps the state of a private daemon's containers, and how a client learns it.

runc's state lives under ``--root``, and containerd's runc shim passes ``/run/containerd/runc``
unless a container's runc ``Options.root`` says otherwise; the shim then runs runc with
``<root>/<namespace>`` (containerd's ``pkg/process`` ``NewRunc``). That default is machine-wide, so
two containerds that hold the same namespace and container id would share one runc container, and
one daemon's clean-up would delete the other's. A daemon started by
:func:`libcontainerd.supervisor.start` therefore gets a runc root of its own, under its state dir,
and writes its path into a file next to its socket: the socket is what every client is given, and
the file beside it is the one place a client (the SDK, the CLI, another process) can learn it from
without being told. A socket without the file (a system containerd) keeps containerd's default.
"""

from __future__ import annotations

import os

#: The file beside the socket of a supervised daemon that holds its runc root (one absolute path).
FILE_NAME = "libcontainerd-runc-root"
#: The runc root of a supervised daemon, inside its state dir.
DIR_NAME = "runc"


def write(state_dir: str) -> str:
    """Make the runc root of the daemon whose state dir (and socket) is ``state_dir``; returns its path."""
    root = os.path.join(state_dir, DIR_NAME)
    os.makedirs(root, mode=0o711, exist_ok=True)
    path = os.path.join(state_dir, FILE_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(root + "\n")
    os.replace(tmp, path)
    return root


def of_socket(socket_path: str | None) -> str | None:
    """The runc root of the daemon serving the unix socket ``socket_path``, or None for containerd's default.

    None as well for a TCP address (``socket_path`` None) and for a file that does not name an
    absolute path (something else wrote it: better the default than a wrong root).
    """
    if socket_path is None:
        return None
    try:
        with open(os.path.join(os.path.dirname(socket_path), FILE_NAME), encoding="utf-8") as f:
            root = f.read().strip()
    except OSError:
        return None
    return root if os.path.isabs(root) and "\x00" not in root else None

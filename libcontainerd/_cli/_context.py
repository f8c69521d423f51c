"""The command line's global options, their defaults, exit codes, and what every command is given.

This module owns the names of the global options' environment variables and defaults, the
exit codes, :class:`UsageError` and :class:`Context` (the resolved options of one
invocation, which makes the client). It must not parse the command line (that is
:mod:`._parser`) nor write anything.
"""

from __future__ import annotations

import argparse
import os

import libcontainerd

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_DAEMON_ROOT",
    "DEFAULT_NAMESPACE",
    "DEFAULT_STATE_DIR",
    "ENV_ADDRESS",
    "ENV_DEBUG",
    "ENV_NAMESPACE",
    "ENV_STATE_DIR",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "PROG",
    "Context",
    "UsageError",
]

PROG = "libcontainerd"
DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "libcontainerd"
DEFAULT_STATE_DIR = "/var/run/libcontainerd"
DEFAULT_DAEMON_ROOT = "/var/lib/libcontainerd/containerd"
ENV_ADDRESS = "LIBCONTAINERD_ADDRESS"
ENV_NAMESPACE = "LIBCONTAINERD_NAMESPACE"
ENV_STATE_DIR = "LIBCONTAINERD_STATE_DIR"
ENV_DEBUG = "LIBCONTAINERD_DEBUG"

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Unary calls get a deadline so that a wedged daemon cannot hang the command forever; waits have none.
_CALL_TIMEOUT = 120.0
# The cache of --busybox, inside the state dir; a leading "_" cannot be a container id, so no bundle clashes.
_ROOTFS_CACHE = os.path.join("_rootfs", "busybox")


class UsageError(Exception):
    """A bad command line value found after argparse (exit code 2)."""


class Context:
    """The resolved global options of one invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.address: str = getattr(args, "address", None) or os.environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS
        self.namespace: str = getattr(args, "namespace", None) or os.environ.get(ENV_NAMESPACE) or DEFAULT_NAMESPACE
        self.state_dir: str = getattr(args, "state_dir", None) or os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR
        self.debug: bool = bool(getattr(args, "debug", False)) or os.environ.get(ENV_DEBUG, "") not in ("", "0")

    def client(self, backend: libcontainerd.Backend | None = None) -> libcontainerd.Client:
        return libcontainerd.new_client(self.address, self.state_dir, self.namespace, backend, timeout=_CALL_TIMEOUT)

    def busybox_rootfs(self) -> str:
        from libcontainerd import testing

        return testing.busybox_rootfs(os.path.join(os.path.abspath(self.state_dir), _ROOTFS_CACHE))

"""The shared test harness: one private containerd per session, a busybox rootfs, per-test dirs.

Fixtures (names are relied on by every test module):
- ``containerd`` (session): a started :class:`libcontainerd.supervisor.Daemon` under a temp root, with
  health checks off (``health_failures=0``) because some tests freeze the daemon with SIGSTOP on
  purpose; it is still restarted if it dies. Teardown stops it, cleans up shims, container processes
  and mounts, and checks that no process of it remains.
- ``criu`` (session): the path of a CRIU that passes ``criu check`` (``scripts/build-criu`` builds one
  into the checkout's ``.cache/criu``); the daemon has its directory first on PATH, where the runc
  shim looks. Tests that take it skip without one, and fail under CI.
- ``rootfs`` (session): a busybox root filesystem, built once.
- ``state_dir`` (function): a fresh temp dir for bundles and FIFOs, removed after the test.
- ``namespace`` (function): a containerd namespace unique to the test.

Tests under ``tests/integration`` get the ``integration`` marker automatically, tests that take
``criu`` the ``criu`` marker (``pytest -m criu`` runs every CRIU test).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import tempfile
import uuid
import warnings
from collections.abc import Iterator

import pytest

from libcontainerd import supervisor, testing

_INTEGRATION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration") + os.sep
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where scripts/build-criu puts the CRIU it builds when the system's fails `criu check`.
_BUILT_CRIU = sorted(glob.glob(os.path.join(os.environ.get("LIBCONTAINERD_CACHE", os.path.join(_CHECKOUT, ".cache")),
                                            "criu", "*", "bin", "criu")), reverse=True)


def pytest_configure(config: pytest.Config) -> None:
    # A CI runner or a shell's background job may start the tests with SIGINT ignored, and every
    # child inherits an ignored signal: the tests that press Ctrl-C on a child interpreter or on
    # the CLI would then test nothing (and hang). Children get SIGINT's default again.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config: pytest.Config) -> str:
    binary = testing.containerd_tool("containerd")
    if binary is None:
        return "containerd under test: none found"
    try:
        release = supervisor.ContainerdRelease.of(binary)
    except Exception as err:  # a header must not stop the session; the fixture says what is wrong
        return f"containerd under test: {binary} ({err})"
    return f"containerd under test: {release} ({binary}; shim {testing.containerd_tool('containerd-shim-runc-v2')})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(_INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)
        if "criu" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.criu)


@pytest.fixture(scope="session")
def containerd() -> Iterator[supervisor.Daemon]:
    testing.require_containerd()
    tmp = tempfile.mkdtemp(prefix="lcd-")  # short: the socket path must fit in 104 bytes
    try:
        runtime_dir = os.path.join(tmp, "xdg")  # where containerd 1.6 leaves each restored checkpoint
        os.mkdir(runtime_dir, 0o700)
        daemon = testing.start_daemon(tmp, health_failures=0, log_level="debug",
                                      env=testing.daemon_env(testing.find_criu(_BUILT_CRIU), runtime_dir))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield daemon
    finally:
        leftovers = testing.cleanup_root(daemon)
        remaining = testing.daemon_processes(daemon.root_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    assert not remaining, f"containerd or shim processes survived the cleanup: {remaining}"
    if leftovers:
        # Tests should delete what they create; say so without failing the whole session.
        warnings.warn(f"session teardown had to clean up after the tests: {leftovers}", stacklevel=1)


@pytest.fixture(scope="session")
def criu(containerd: supervisor.Daemon) -> str:
    return testing.require_criu(_BUILT_CRIU)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    testing.require_tools("busybox")
    return testing.busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="lcd-state-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def namespace() -> str:
    return "t-" + uuid.uuid4().hex[:10]

"""The docstring examples of ``libcontainerd/`` run as tests (``--doctest-modules``), some on a real daemon.

Every example gets ``libcontainerd``, ``oci``, ``stdio`` and ``signal``. An example that uses
``client``, ``sock``, ``rootfs`` or ``state_dir`` runs against a private containerd (started for
the first such example, one per session) and gets a fresh client of it in a namespace of its own,
that namespace's ``state_dir``, the daemon's socket ``sock`` and a busybox ``rootfs``; what the
example leaves in containerd is removed after it, and the example is marked ``integration``.
The generated code (``libcontainerd/_api``) is not collected.
"""

from __future__ import annotations

import doctest
import re
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator

import pytest

import libcontainerd
from libcontainerd import oci, stdio, supervisor, testing

collect_ignore = ["libcontainerd/_api"]

_DAEMON_NAMES = re.compile(r"\b(client|sock|rootfs|state_dir)\b")


def _uses_daemon(item: pytest.Item) -> bool:
    dtest = getattr(item, "dtest", None)
    return dtest is not None and any(
        _DAEMON_NAMES.search(example.source) for example in dtest.examples if not example.options.get(doctest.SKIP))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _uses_daemon(item):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def _doctest_containerd() -> Iterator[supervisor.Daemon]:
    testing.require_containerd()
    with testing.PrivateContainerd("lcd-doc-", health_failures=0) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def _doctest_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    testing.require_tools("busybox")
    return testing.busybox_rootfs(tmp_path_factory.mktemp("doctest-busybox") / "rootfs")


@pytest.fixture(autouse=True)
def _doctest_globals(request: pytest.FixtureRequest, doctest_namespace: dict[str, object]) -> Iterator[None]:
    if getattr(request.node, "dtest", None) is None:
        yield
        return
    doctest_namespace.update(libcontainerd=libcontainerd, oci=oci, stdio=stdio, signal=signal)
    if not _uses_daemon(request.node):
        yield
        return
    daemon = request.getfixturevalue("_doctest_containerd")
    rootfs = request.getfixturevalue("_doctest_rootfs")
    state_dir = tempfile.mkdtemp(prefix="lcd-doc-state-")
    namespace = "doc-" + uuid.uuid4().hex[:10]
    client = libcontainerd.new_client(daemon.address, state_dir, namespace, None, timeout=60)
    names = {"client": client, "sock": daemon.address, "rootfs": rootfs, "state_dir": state_dir}
    doctest_namespace.update(names)
    try:
        yield
    finally:
        for name in names:
            del doctest_namespace[name]
        client.close()
        with libcontainerd.new_client(daemon.address, state_dir, namespace, None, timeout=60) as cleaner:
            testing.remove_containers(cleaner)
        shutil.rmtree(state_dir, ignore_errors=True)

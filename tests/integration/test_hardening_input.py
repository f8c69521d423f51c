"""Bad input against the live containerd: a typed error, and nothing made -- in the state dir or in containerd.

``tests/unit/test_fuzz_input.py`` proves that such input is judged before any RPC (a client of a dead
address answers InvalidParameter, not Unavailable). Here the same kinds of input go to a client of the
real daemon with a running task, to show that containerd ends up with nothing either: no container, no
exec, no content blob, no lease.
"""

from __future__ import annotations

import math
import os
import re
import signal
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libcontainerd import errdefs, oci, stdio
from libcontainerd._api.containerd.api.services.content.v1 import content_pb2
from libcontainerd._api.containerd.api.services.leases.v1 import leases_pb2

from ..helpers import listing, spec

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BAD_IDS = st.one_of(st.sampled_from(["", "..", "../x", "x/y", "x\x00", "a" * 77, "é", "-x", "x-"]),
                    st.text(max_size=10).filter(lambda s: not re.fullmatch(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*", s)))


def _blobs_and_leases(client):
    conn = client._session.conn
    stream = conn.stream(conn.content.List, content_pb2.ListContentRequest(), timeout=30)
    blobs = sorted(i.digest for resp in stream for i in resp.info)
    leases = sorted(x.id for x in conn.call(conn.leases.List, leases_pb2.ListRequest()).leases)
    return blobs, leases


@pytest.fixture
def host(client, rootfs):
    ctr = client.new_container("host", spec(rootfs, "sleep", "300"))
    task = ctr.start()
    try:
        yield task
    finally:
        task.force_delete()
        ctr.delete()


def _unchanged(client, host, before_state, before_store):
    assert [c.id for c in client.list_containers()] == ["host"]
    assert listing(client.state_dir) == before_state
    assert [p.exec_id for p in host.summary() if p.exec_id] == []
    assert _blobs_and_leases(client) == before_store


@given(cid=BAD_IDS)
@SETTINGS
def test_bad_ids_make_nothing(client, host, rootfs, cid):
    before = listing(client.state_dir), _blobs_and_leases(client)
    with pytest.raises(errdefs.InvalidParameter):
        client.new_container(cid, spec(rootfs, "true"))
    with pytest.raises(errdefs.InvalidParameter):
        host.exec(cid, oci.process_spec(["true"]), attach_stdio=stdio.capture())
    _unchanged(client, host, *before)


@pytest.mark.parametrize("bad", [
    {}, {"process": None}, {"process": {"args": []}}, {"process": {"args": ["sh"], "cwd": "rel"}},
    {"process": {"args": ["sh"], "user": {"uid": -1, "gid": 0}}}, {"process": {"args": ["sh"]}, "linux": []},
    {"process": {"args": ["sh"]}, "annotations": {"x": math.nan}}, {"process": {"args": ["sh"]}, "x": {1, 2}},
    {"process": {"args": ["sh"]}, "x": b"bytes"}, "not a spec", None, 5,
])
def test_malformed_specs_make_nothing(client, host, bad):
    before = listing(client.state_dir), _blobs_and_leases(client)
    with pytest.raises(errdefs.InvalidParameter):
        client.new_container("bad-spec", bad)
    if isinstance(bad, dict) and isinstance(bad.get("process"), (dict, type(None))):
        with pytest.raises(errdefs.InvalidParameter):
            host.exec("bad-exec", bad.get("process"), attach_stdio=stdio.capture())
    _unchanged(client, host, *before)


def test_bad_signals_sizes_and_checkpoint_dirs_leave_the_task_alone(client, host):
    before = listing(client.state_dir), _blobs_and_leases(client)
    for sig in (0, 65, -9, 2**40, "SIGNOPE", "", "\u00b2", 1.5, None, True):
        with pytest.raises(errdefs.InvalidParameter):
            host.kill(sig)
    for w, h in ((-1, 10), (10, -1), (2**16, 1), (1, 2**31), (1.5, 2), (None, 2)):
        with pytest.raises(errdefs.InvalidParameter):
            host.resize(w, h)
    with tempfile.NamedTemporaryFile() as f:
        for bad in (f.name, os.path.join(f.name, "below"), "/nonexistent/checkpoint"):
            with pytest.raises(errdefs.InvalidParameter):
                host.container.start(checkpoint_dir=bad)
        for bad in (f.name, os.path.join(f.name, "below")):
            with pytest.raises(errdefs.InvalidParameter):
                host.create_checkpoint(bad)
    assert host.status().value == "running"
    _unchanged(client, host, *before)
    host.kill(signal.SIGKILL)
    assert host.wait(timeout=30).code == 137

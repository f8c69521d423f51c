"""The log records a service operator relies on, checked with caplog against the real daemon."""

from __future__ import annotations

import logging

from libcontainerd import oci, stdio
from libcontainerd.types import EventType


def _about(caplog, cid: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("libcontainerd") and cid in r.getMessage()]


def test_records_about_a_container_carry_its_id_and_namespace(client, rootfs, namespace, caplog, recorder):
    caplog.set_level(logging.DEBUG, logger="libcontainerd")

    def refuse(cid, event_type, info):  # a failing backend is logged about the container it failed on
        if cid == "logged" and event_type is not EventType.EXIT:
            raise RuntimeError("backend refuses")

    recorder.hook = refuse
    ctr = client.new_container("logged", oci.default_spec(rootfs, ["sleep", "300"]))
    task = ctr.start(attach_stdio=stdio.capture())
    proc = task.exec("peek", oci.process_spec(["true"]), attach_stdio=stdio.capture())
    proc.wait(timeout=30)
    proc.delete()
    task.force_delete()
    ctr.delete()
    # containerd's /tasks/delete is of no use to a backend: the reader does not subscribe to it, so containerd
    # never sends it (it would have been logged as ignored). The init's EXIT, published before the task's
    # delete, and a second container's CREATE, after it, show the stream has gone past that point.
    recorder.wait_for("logged", EventType.EXIT, "logged", timeout=30)
    after = client.new_container("after-it", oci.default_spec(rootfs, ["true"]))
    after.start().wait(timeout=30)
    recorder.wait_for("after-it", EventType.EXIT, "after-it", timeout=30)
    after.task().delete()
    after.delete()
    assert not any("/tasks/delete" in r.getMessage() for r in caplog.records)
    about = _about(caplog, "logged")
    assert any("backend failed" in r.getMessage() for r in about)
    for record in about:
        assert (getattr(record, "container_id", None), getattr(record, "namespace", None)) == ("logged", namespace), \
            record.getMessage()

"""The log records a service operator relies on, checked with caplog against the real daemon."""

from __future__ import annotations

import logging

from libcontainerd import oci, stdio

from ..helpers import wait_until


def _about(caplog, cid: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("libcontainerd") and cid in r.getMessage()]


def test_records_about_a_container_carry_its_id_and_namespace(client, rootfs, namespace, caplog, recorder):
    caplog.set_level(logging.DEBUG, logger="libcontainerd")
    ctr = client.new_container("logged", oci.default_spec(rootfs, ["sleep", "300"]))
    task = ctr.start(attach_stdio=stdio.capture())
    proc = task.exec("peek", oci.process_spec(["true"]), attach_stdio=stdio.capture())
    proc.wait(timeout=30)
    proc.delete()
    task.force_delete()
    ctr.delete()
    # containerd's /tasks/delete is of no use to a backend: ignored, at debug, with topic and container
    assert wait_until(lambda: any("/tasks/delete" in r.getMessage() for r in _about(caplog, "logged")), timeout=30)
    ignored = [r for r in _about(caplog, "logged") if "ignored" in r.getMessage()]
    assert ignored and all(r.levelno == logging.DEBUG for r in ignored)
    assert any("/tasks/delete" in r.getMessage() for r in ignored)
    about = _about(caplog, "logged")
    assert about
    for record in about:
        assert (getattr(record, "container_id", None), getattr(record, "namespace", None)) == ("logged", namespace), \
            record.getMessage()

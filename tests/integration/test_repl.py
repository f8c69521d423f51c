"""Using the SDK from a prompt: reprs, Ctrl-C in blocking calls, logging, and interpreter exit.

The Ctrl-C tests run a child interpreter that blocks in one call, send it SIGINT as a terminal
would, and check that the child caught ``KeyboardInterrupt`` and could go on using its client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

import libcontainerd
from libcontainerd import cio, oci, queue, stdio, testing

# Generous: a child that ignores SIGINT would hang until then, which is the failure.
CHILD_TIMEOUT = 60

_CHILD_PRELUDE = """
import sys
import libcontainerd
from libcontainerd import oci, stdio

client = libcontainerd.new_client({address!r}, {state_dir!r}, {namespace!r}, None)
ctr = client.new_container("sleeper", oci.default_spec({rootfs!r}, ["sleep", "300"]))
"""

_CHILD_AFTER = """
print("version", client.version().version, flush=True)
try:
    task.force_delete()
except NameError:
    pass
ctr.delete()
client.close()
print("done", flush=True)
"""

_BLOCKERS = {
    "task.wait": """
task = ctr.start()
try:
    print("blocking", flush=True)
    task.wait()
except KeyboardInterrupt:
    print("caught KeyboardInterrupt", flush=True)
""",
    "capture.wait": """
out = stdio.capture()
task = ctr.start(attach_stdio=out)
try:
    print("blocking", flush=True)
    out.wait()
except KeyboardInterrupt:
    print("caught KeyboardInterrupt", flush=True)
""",
    "process.wait": """
task = ctr.start()
proc = task.exec("nap", oci.process_spec(["sleep", "300"]), attach_stdio=stdio.capture())
try:
    print("blocking", flush=True)
    proc.wait()
except KeyboardInterrupt:
    print("caught KeyboardInterrupt", flush=True)
proc.kill(9)
proc.wait(timeout=30)
proc.delete()
""",
}


def _interrupt_child(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child; once it printed "blocking", send SIGINT; return the finished child."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "blocking\n", first + proc.stderr.read() if proc.stderr else first
        # The call follows the print at once; a short pause puts the child inside it. Were the signal
        # to land before the call, the child would still catch it, just not in the call itself.
        threading.Event().wait(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err)


@pytest.mark.parametrize("blocker", sorted(_BLOCKERS))
def test_ctrl_c_interrupts_a_blocking_call_and_the_client_stays_usable(
        blocker, containerd, rootfs, state_dir, namespace):
    code = textwrap.dedent(_CHILD_PRELUDE.format(
        address=containerd.address, state_dir=state_dir, namespace=namespace, rootfs=rootfs)) + \
        textwrap.dedent(_BLOCKERS[blocker]) + textwrap.dedent(_CHILD_AFTER)
    try:
        result = _interrupt_child(code)
    finally:
        with libcontainerd.new_client(containerd.address, state_dir, namespace, None) as c:
            leftovers = testing.remove_containers(c)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "blocking"
    assert lines[1] == "caught KeyboardInterrupt"
    assert lines[2].startswith("version ")
    assert lines[-1] == "done"
    assert "Traceback" not in result.stderr, result.stderr
    assert leftovers == []


def test_ctrl_c_interrupts_a_call_that_waits_for_containerd():
    with tempfile.TemporaryDirectory(prefix="lcd-repl-") as tmp:
        nowhere = os.path.join(tmp, "nobody-listens.sock")
        code = textwrap.dedent(f"""
            import libcontainerd
            client = libcontainerd.new_client({nowhere!r}, {tmp + "/state"!r}, "repl", None)
            try:
                print("blocking", flush=True)
                client.is_serving(timeout=None)
            except KeyboardInterrupt:
                print("caught KeyboardInterrupt", flush=True)
            print("serving", client.is_serving(timeout=0.2), flush=True)
            client.close()
            print("done", flush=True)
        """)
        result = _interrupt_child(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["blocking", "caught KeyboardInterrupt", "serving False", "done"]
    assert "Traceback" not in result.stderr, result.stderr


def test_interpreter_exits_cleanly_in_the_middle_of_things(containerd, rootfs, state_dir, namespace):
    # Left open at exit: a client with output pumps running, an exec in flight, and a backend
    # that is still receiving events. atexit closes the client; nothing may hang or complain.
    code = textwrap.dedent(f"""
        import threading
        import libcontainerd
        from libcontainerd import oci, stdio

        class Slow:
            def process_event(self, container_id, event_type, info):
                threading.Event().wait(0.2)

        c = libcontainerd.new_client({containerd.address!r}, {state_dir!r}, {namespace!r}, Slow())
        ticker = ["sh", "-c", "while :; do echo tick; sleep 0.1; done"]
        ctr = c.new_container("busy", oci.default_spec({rootfs!r}, ticker))
        out = stdio.capture()
        task = ctr.start(attach_stdio=out)
        task.exec("nap", oci.process_spec(["sleep", "300"]), attach_stdio=stdio.capture())
        print("leaving", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    try:
        assert result.returncode == 0, result.stderr
        assert result.stdout == "leaving\n"
        assert result.stderr == ""
    finally:
        with libcontainerd.new_client(containerd.address, state_dir, namespace, None) as c:
            assert testing.remove_containers(c) == ["busy"]


def test_reprs_are_short_and_informative(client, rootfs, tmp_path):
    assert repr(client) == f"<Client address={client.address!r} namespace={client.namespace!r} open>"
    ctr = client.new_container("shown", oci.default_spec(rootfs, ["sleep", "300"]))
    assert repr(ctr) == f"<Container id='shown' namespace={client.namespace!r}>"
    out = stdio.capture()
    assert repr(out) == "<Capture stdout=0B stderr=0B not attached>"
    task = ctr.start(attach_stdio=out)
    assert repr(task) == f"<Task id='shown' pid={task.pid}>"
    assert repr(out) == "<Capture stdout=0B stderr=0B running>"
    proc = task.exec("peek", oci.process_spec(["true"]))
    assert repr(proc) == f"<Process id='peek' container='shown' pid={proc.pid}>"
    assert proc.wait(timeout=30).code == 0
    proc.delete()
    assert repr(client.version()).startswith("Version(version=")
    assert "metrics=<io.containerd.cgroups.v1.Metrics>" in repr(task.stats())
    task.force_delete()
    assert repr(out).endswith(" done>")
    ctr.delete()

    fifos = cio.FifoSet.create(str(tmp_path), "p", with_stdin=True, terminal=False)
    assert repr(fifos).startswith("FifoSet(dir=")
    with cio.DirectIO.open(fifos) as dio:
        assert repr(dio) == "<DirectIO process=p stdin stdout stderr open>"
        assert repr(dio.canceller) == "<Canceller open>"
        assert repr(dio.stdin) == f"<FifoWriter {fifos.stdin} open>"
        assert repr(dio.stdout.raw) == f"<FifoReader {fifos.stdout} open>"
    assert repr(dio) == "<DirectIO process=p stdin stdout stderr closed>"
    assert repr(dio.stdout.raw) == f"<FifoReader {fifos.stdout} closed>"
    fifos.remove()

    ex = queue.KeyedSerialExecutor(max_workers=2, name="libcontainerd-repr")
    assert repr(ex) == "<KeyedSerialExecutor name='libcontainerd-repr' workers=0/2 pending=0 open>"
    ex.close()
    assert repr(ex).endswith(" closed>")
    client.close()
    assert repr(client).endswith(" closed>")


def test_daemon_repr(containerd):
    assert repr(containerd) == (f"<Daemon pid={containerd.pid} address={containerd.address} "
                                f"restarts={containerd.restarts}>")


def test_busybox_helper_is_quiet(tmp_path, capfd):
    testing.busybox_rootfs(tmp_path / "rootfs")
    assert capfd.readouterr() == ("", "")

"""The command line (``python -m libcontainerd``) as a user runs it: a subprocess against the session's containerd."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import pytest

import libcontainerd
from libcontainerd import _procfs, errdefs, oci, testing

from ..helpers import run_once, wait_until

SUBCOMMANDS = ["daemon", "version", "run", "exec", "logs", "attach", "ps", "list", "top", "inspect", "kill", "wait",
               "stop", "pause", "resume", "stats", "events", "checkpoint", "restore", "rm", "demo", "pull", "images",
               "rmi", "import"]
DEMO_STEPS = [f"[{i}/10]" for i in range(1, 11)]


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBCONTAINERD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a hung CLI can be made to show its threads (SIGABRT)
    return env


@pytest.fixture
def cli(containerd: Any, state_dir: str, namespace: str) -> Any:
    """Run ``python -m libcontainerd --address … --namespace … --state-dir … ARGS``; returns the CompletedProcess."""
    globals_ = ["--address", containerd.address, "--namespace", namespace, "--state-dir", state_dir]

    def run(*args: str, input: str | None = None, timeout: float = 60, where: str = "before",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [*globals_, *args] if where == "before" else list(args)
        return subprocess.run([sys.executable, "-m", "libcontainerd", *argv], input=input, capture_output=True,
                              text=True, timeout=timeout, env=env or _base_env())

    run.globals = globals_  # type: ignore[attr-defined]
    return run


class Lines:
    """Reads a pipe line by line on a thread, so that a test can wait for a line with a timeout."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._pump, name=f"test-cli-{name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self._stream:
            self.q.put(line)
        self.q.put(None)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str | None:
        """The first next line matching ``pattern``; None on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def rest(self) -> str:
        self._thread.join(timeout=10)
        while True:
            try:
                line = self.q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)


class Procs:
    """CLI subprocesses and their line readers, killed, reaped and joined at teardown whatever happened."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.readers: list[Lines] = []

    def start(self, *argv: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "libcontainerd", *argv], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_base_env())
        self.procs.append(proc)
        return proc

    def lines(self, stream: IO[str], name: str) -> Lines:
        reader = Lines(stream, name)
        self.readers.append(reader)
        return reader

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        for reader in self.readers:
            reader.rest()  # the process is gone: its pipes are at EOF and the reader ends
        for proc in self.procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.close()


def _alive(pids: dict[int, list[str]]) -> list[int]:
    """Which of these processes still run (same pid and command line, not a zombie)."""
    return [pid for pid, argv in pids.items() if _procfs.cmdline(pid) == argv and _procfs.running(pid)]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("libcontainerd: error: "), stderr
    return lines[0]


def _our_processes(path: str) -> list[str]:
    """Command lines of live processes that mention ``path`` (containerd, shims, containers of a root)."""
    found = []
    for pid in _procfs.pids():
        argv = " ".join(_procfs.cmdline(pid))
        if pid != os.getpid() and path in argv:
            found.append(f"{pid}: {argv}")
    return found


# -- the commands ---------------------------------------------------------------------------------


def test_version(cli, client):
    res = cli("version")
    assert res.returncode == 0, res.stderr
    assert f"containerd {client.version().version}" in res.stdout
    assert "libcontainerd 0.1.0" in res.stdout


def test_run_rm_prints_the_output_and_returns_the_exit_code(cli, client):
    res = cli("run", "--rm", "--busybox", "x", "sh", "-c", "echo hi; exit 3")
    assert (res.returncode, res.stdout) == (3, "hi\n"), res.stderr
    assert client.list_containers() == []


def test_run_of_an_id_longer_than_a_hostname_gets_a_hostname_that_fits(cli, client):
    """The hostname defaults to the id; ids of 65-76 characters made runc fail (sethostname: invalid argument)."""
    long_id = "h" * 40 + "-" + "x" * 35  # 76 characters, the longest id containerd takes
    res = cli("run", "--rm", "--busybox", long_id, "hostname")
    assert (res.returncode, res.stdout) == (0, long_id[:64] + "\n"), res.stderr
    assert client.list_containers() == []


def test_run_and_exec_it_without_a_terminal_on_stdin_are_usage_errors(cli, client):
    """Like docker's "the input device is not a TTY" (it was "cannot start a container that has stopped",
    or raw escape codes and exit 129)."""
    res = cli("run", "--rm", "-it", "--busybox", "notty", "sh", input="echo hi\n")
    assert res.returncode == 2 and "not a TTY" in _one_error_line(res.stderr), res.stderr
    assert client.list_containers() == []
    assert cli("run", "-d", "--busybox", "host2", "sleep", "300").returncode == 0
    res = cli("exec", "-it", "host2", "sh", input="echo hi\n")
    assert res.returncode == 2 and "not a TTY" in _one_error_line(res.stderr), res.stderr
    assert cli("rm", "-f", "host2").returncode == 0


def test_run_interactive_reads_stdin(cli, client):
    res = cli("run", "--rm", "-i", "--busybox", "up", "tr", "a-z", "A-Z", input="hello, stdin\n" * 1000)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "HELLO, STDIN\n" * 1000


def test_run_with_a_terminal_user_env_and_cwd(cli, client):
    res = cli("run", "--rm", "-t", "--busybox", "--user", "user", "-e", "GREETING=hey", "--cwd", "/tmp",
              "box", "sh", "-c", "tty; id -u; echo $GREETING; pwd")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.replace("\r\n", "\n").splitlines()
    assert lines[0].startswith("/dev/pts/")
    assert lines[1:] == ["1000", "hey", "/tmp"]
    assert client.list_containers() == []


def _read_pty_until_exit(master: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> bytes:
    """All a pty's master end gives until the process on it ended (and its output ran dry), or EIO."""
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every holder of the terminal is gone
                break
            if not chunk:
                break
            output += chunk
        if proc.poll() is not None and not ready:
            break
    return output


def test_run_interactive_terminal_in_raw_mode_with_its_size(cli, client):
    """-it on a real terminal: keystrokes reach the container's shell, its size is forwarded, exit code comes back."""
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        proc = subprocess.Popen([sys.executable, "-m", "libcontainerd", *cli.globals, "run", "--rm", "-it",
                                 "--busybox", "term", "sh"], stdin=slave, stdout=slave, stderr=slave,
                                env=_base_env(), start_new_session=True)
        os.close(slave)
        slave = -1
        # Typed ahead, before the CLI switched the terminal to raw mode: it must not be lost.
        os.write(master, b"stty size; echo $((6*7)); exit 5\r")
        output = _read_pty_until_exit(master, proc)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the CLI did not exit; the terminal showed {output!r}") from None
        assert code == 5, output
        text = output.decode(errors="replace")
        assert "33 111" in text and "42" in text, text
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert client.list_containers() == []


def test_run_it_sets_raw_mode_before_the_process_starts(cli, client):
    """A shell asks the terminal for the cursor position as it starts (ESC [ 6 n), and a terminal answers
    at once: an answer that finds the local terminal still cooked is echoed (`/ # ^[[6;5R`). So the
    terminal is raw from before the container exists; the test looks, and answers, as soon as it does."""
    master, slave = pty.openpty()
    try:
        # As an interactive shell does, the container's own terminal does not echo; then the query, and
        # what the shell reads back (the answer) it prints with od.
        script = r"stty -echo; printf '\033[6n'; read -r answer; echo \"answer:$answer\" | od -c | head -1; exit 3"
        proc = subprocess.Popen([sys.executable, "-m", "libcontainerd", *cli.globals, "run", "--rm", "-it",
                                 "--busybox", "cursor", "sh", "-c", script], stdin=slave, stdout=slave,
                                stderr=slave, env=_base_env(), start_new_session=True)
        os.close(slave)
        slave = -1
        assert wait_until(lambda: proc.poll() is not None or any(c.id == "cursor" for c in client.list_containers()),
                          timeout=60, interval=0.005)
        lflag = termios.tcgetattr(master)[3]
        os.write(master, b"\x1b[6;5R\r")  # what a terminal answers, then Enter
        output = _read_pty_until_exit(master, proc)
        assert proc.wait(timeout=30) == 3, output
        assert not lflag & (termios.ECHO | termios.ICANON), "the terminal was cooked when the container existed"
        # (No assertion on echoes: answered this early, the container's own terminal, not yet
        # `stty -echo`, echoes it; in life the answer follows the query.)
        assert b"6   ;   5   R" in output, output  # the shell got the answer, typed ahead of its start
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert client.list_containers() == []


def test_ctrl_c_of_an_attached_run_removes_the_container(cli, client, procs):
    proc = procs.start(*cli.globals, "run", "--rm", "--busybox", "sleeper", "sleep", "300")
    deadline = time.monotonic() + 60
    running = False
    while not running and proc.poll() is None and time.monotonic() < deadline:
        # Until the task runs (the command prints nothing before the exit).
        if any(c.id == "sleeper" for c in client.list_containers()):
            try:
                running = client.load_container("sleeper").task().status().value == "running"
            except errdefs.NotFound:  # between the container's creation and its task's
                pass
        time.sleep(0.05)
    if not running:
        proc.kill()
        raise AssertionError(f"the task never ran (exit {proc.wait()}): {proc.stderr.read()}")
    # The first Ctrl-C goes to the process (sleep, pid 1 of its namespace, ignores it); the second kills it.
    err_lines = procs.lines(proc.stderr, "run-stderr")
    proc.send_signal(signal.SIGINT)
    assert err_lines.wait_for("Ctrl-C again kills it") is not None, err_lines.rest()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait()
        raise AssertionError(err_lines.rest()) from None
    err = err_lines.rest()
    assert proc.wait(timeout=30) == 130, err
    assert "Traceback" not in err
    assert client.list_containers() == []


@pytest.mark.parametrize("sig, name", [(signal.SIGTERM, "TERM"), (signal.SIGINT, "INT"), (signal.SIGHUP, "HUP")])
def test_a_signal_to_an_attached_run_reaches_its_process(cli, client, procs, sig, name):
    """SIGTERM/SIGINT/SIGHUP sent to `run` reach the container's process (its trap runs), and the CLI exits
    with the container's code and --rm removes it (the CLI died with 143, or SIGKILLed it on Ctrl-C)."""
    script = f'trap "echo got {name}; exit 7" {name}; echo ready; while true; do sleep 0.1; done'
    proc = procs.start(*cli.globals, "run", "--rm", "--busybox", "trapper", "sh", "-c", script)
    out_lines = procs.lines(proc.stdout, "run-stdout")
    err_lines = procs.lines(proc.stderr, "run-stderr")
    assert out_lines.wait_for("ready", timeout=60) is not None, err_lines.rest()
    proc.send_signal(sig)
    assert out_lines.wait_for(f"got {name}") is not None, err_lines.rest()
    assert proc.wait(timeout=30) == 7, err_lines.rest()
    assert client.list_containers() == []


def test_a_signal_to_an_attached_exec_reaches_its_process(cli, client, procs):
    assert cli("run", "-d", "--busybox", "host", "sleep", "300").returncode == 0
    script = 'trap "echo got TERM; exit 9" TERM; echo ready; while true; do sleep 0.1; done'
    proc = procs.start(*cli.globals, "exec", "host", "sh", "-c", script)
    out_lines = procs.lines(proc.stdout, "exec-stdout")
    assert out_lines.wait_for("ready", timeout=60) is not None
    proc.send_signal(signal.SIGTERM)
    assert out_lines.wait_for("got TERM") is not None
    assert proc.wait(timeout=30) == 9
    assert cli("rm", "-f", "host").returncode == 0


def test_an_exec_d_process_is_deleted_once_it_exited(cli, client):
    """containerd keeps an exited exec until it is deleted, and `exec -d` returns at once: its id stayed
    "already in use" for ever. The next command that touches the task deletes it (docker's daemon does on
    the exit event)."""
    assert cli("run", "-d", "--busybox", "host", "sleep", "300").returncode == 0
    res = cli("exec", "-d", "--exec-id", "bg", "host", "sh", "-c", "exit 5")
    assert (res.returncode, res.stdout) == (0, "bg\n"), res.stderr
    task = client.load_container("host").task()
    assert task.load_process("bg").wait(timeout=30).code == 5
    res = cli("exec", "-d", "--exec-id", "bg", "host", "sleep", "300")  # the id is free again
    assert (res.returncode, res.stdout) == (0, "bg\n"), res.stderr
    res = cli("exec", "--exec-id", "bg", "host", "true")  # ... but not while its process runs
    assert res.returncode == 1 and "already in use" in _one_error_line(res.stderr), res.stderr
    res = cli("top", "host")
    assert any(line.split()[1:3] == ["bg", "sleep"] for line in res.stdout.splitlines()), res.stdout
    proc = task.load_process("bg")
    proc.kill(signal.SIGKILL)
    assert proc.wait(timeout=30).code == 137
    assert cli("top", "host").returncode == 0  # reaps it
    with pytest.raises(errdefs.NotFound):
        task.load_process("bg")
    assert cli("rm", "-f", "host").returncode == 0


def test_global_options_after_the_subcommand_and_from_the_environment(cli, containerd, state_dir, namespace, client):
    # After the subcommand; whatever follows the id belongs to the container's command.
    res = cli("run", "--address", containerd.address, "--namespace", namespace, "--state-dir", state_dir,
              "--rm", "--busybox", "echoer", "echo", "--namespace", "--rm", where="after")
    assert (res.returncode, res.stdout) == (0, "--namespace --rm\n"), res.stderr
    # Given in both places, the one after the subcommand wins.
    res = cli("--address", "/nonexistent/containerd.sock", "version", "--address", containerd.address,
              "--namespace", namespace, "--state-dir", state_dir, where="after")
    assert res.returncode == 0, res.stderr
    # From the environment.
    env = {**_base_env(), "LIBCONTAINERD_ADDRESS": containerd.address, "LIBCONTAINERD_NAMESPACE": namespace,
           "LIBCONTAINERD_STATE_DIR": state_dir}
    client.new_container("from-env", oci.default_spec("/nonexistent", ["true"]))
    res = cli("ps", where="none", env=env)
    assert res.returncode == 0, res.stderr
    assert "from-env" in res.stdout
    res = cli("rm", "from-env", where="none", env=env)
    assert (res.returncode, res.stdout) == (0, "from-env\n"), res.stderr


def test_a_detached_container_through_every_command(cli, client, state_dir):
    res = cli("run", "-d", "--busybox", "--memory", "64m", "web", "sleep", "300")
    assert (res.returncode, res.stdout) == (0, "web\n"), res.stderr
    task = client.load_container("web").task()

    for name in ("ps", "list"):
        res = cli(name)
        assert res.returncode == 0, res.stderr
        header, row = res.stdout.splitlines()
        assert header.split() == ["CONTAINER", "STATUS", "PID", "EXIT", "COMMAND"]
        assert row.split() == ["web", "running", str(task.pid), "-", "sleep", "300"]
        # Aligned columns: each value starts under (or, right-aligned, ends under) its header.
        assert row.index("running") == header.index("STATUS")
        assert row.index(str(task.pid)) + len(str(task.pid)) == header.index("PID") + len("PID")

    res = cli("exec", "web", "sh", "-c", "echo from exec; exit 4")
    assert (res.returncode, res.stdout) == (4, "from exec\n"), res.stderr
    res = cli("exec", "-i", "--exec-id", "cat1", "web", "cat", input="piped\n")
    assert (res.returncode, res.stdout) == (0, "piped\n"), res.stderr

    res = cli("top", "web")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split() == ["PID", "EXEC", "COMMAND"]
    assert any(line.split()[:3] == [str(task.pid), "(main)", "sleep"] for line in res.stdout.splitlines())

    res = cli("stats", "--json", "web")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["id"] == "web" and doc["memory_bytes"] > 0 and doc["pids"] >= 1 and "metrics" in doc
    assert doc["memory_limit_bytes"] == 64 << 20

    def numeric_strings(value: Any) -> list[str]:  # protobuf's JSON writes int64 as strings
        if isinstance(value, dict):
            return [s for v in value.values() for s in numeric_strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in numeric_strings(v)]
        return [value] if isinstance(value, str) and value.isdigit() else []

    assert numeric_strings(doc["metrics"]) == [], doc["metrics"]
    memory = doc["metrics"]["memory"]
    assert isinstance(memory["usage"]["usage"] if isinstance(memory["usage"], dict) else memory["usage"], int)
    res = cli("stats")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split() == ["CONTAINER", "CPU", "TIME", "MEMORY", "LIMIT", "PIDS"]
    assert re.search(r"^web\s+[\d.]+ [µm]?s\s+[\d.]+ (B|KiB|MiB)\s+64.0 MiB\s+\d+$", res.stdout, re.M), res.stdout

    assert cli("pause", "web").returncode == 0
    assert cli("ps").stdout.splitlines()[1].split()[1] == "paused"
    assert cli("resume", "web").returncode == 0
    assert cli("ps").stdout.splitlines()[1].split()[1] == "running"

    res = cli("inspect", "web")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["task"] == {"status": "running", "pid": task.pid, "exit_code": None, "exited_at": None}
    assert doc["id"] == "web" and doc["runtime"] == "io.containerd.runc.v2"
    assert doc["bundle"] == os.path.join(state_dir, "web") == doc["labels"]["com.docker/engine.bundle.path"]
    assert doc["spec"]["process"]["args"] == ["sleep", "300"]
    assert doc["spec"]["linux"]["resources"]["memory"]["limit"] == 64 << 20
    assert (doc["image"], doc["snapshotter"], doc["snapshot_key"]) == (None, None, None)  # a rootfs dir, no image
    res = cli("inspect", "nosuch")
    assert res.returncode != 0 and "nosuch" in _one_error_line(res.stderr)

    res = cli("rm", "web")  # running: refused without -f
    assert res.returncode == 1
    assert "running" in _one_error_line(res.stderr)
    res = cli("kill", "--signal", "KILL", "web")
    assert res.returncode == 0, res.stderr
    assert task.wait(timeout=30).code == 137
    row = cli("ps").stdout.splitlines()[1].split()
    assert row[:2] == ["web", "stopped"] and row[3] == "137", row
    doc = json.loads(cli("inspect", "web").stdout)
    assert doc["task"]["status"] == "stopped" and doc["task"]["exit_code"] == 137, doc["task"]
    assert doc["task"]["exited_at"].endswith("Z")
    res = cli("rm", "web")  # stopped: removed with its task
    assert (res.returncode, res.stdout) == (0, "web\n"), res.stderr

    assert cli("run", "-d", "--busybox", "db", "sleep", "300").returncode == 0
    res = cli("rm", "-f", "db")
    assert (res.returncode, res.stdout) == (0, "db\n"), res.stderr
    assert client.list_containers() == []


def test_logs_of_a_detached_container_and_follow_until_it_exits(cli, client, procs, state_dir):
    """`run -d` has the shim write the output into a log file in the bundle dir (it survives the CLI):
    `logs` prints it, `logs -f` goes on until the task exits, `rm` removes it."""
    script = "trap 'echo second; exit 3' USR1; echo out; echo err >&2; while true; do sleep 0.1; done"
    res = cli("run", "-d", "--busybox", "lg", "sh", "-c", script)
    assert (res.returncode, res.stdout) == (0, "lg\n"), res.stderr
    assert wait_until(lambda: sorted(cli("logs", "lg").stdout.splitlines()) == ["err", "out"])
    proc = procs.start(*cli.globals, "logs", "-f", "lg")
    out = procs.lines(proc.stdout, "logs-stdout")
    assert out.wait_for("out|err", timeout=60) is not None
    assert proc.poll() is None  # following
    assert cli("kill", "-s", "USR1", "lg").returncode == 0
    assert out.wait_for("second") is not None, out.rest()
    assert proc.wait(timeout=30) == 0
    assert client.load_container("lg").task().wait(timeout=30).code == 3
    res = cli("logs", "-f", "lg")  # the task is stopped: prints everything and returns
    assert (res.returncode, sorted(res.stdout.splitlines())) == (0, ["err", "out", "second"]), res.stderr
    log = os.path.join(state_dir, "lg", "lg.log")
    assert os.path.isfile(log)
    assert cli("rm", "lg").returncode == 0
    assert not os.path.exists(log)
    assert cli("run", "--busybox", "nolog", "true").returncode == 0  # attached: no log
    res = cli("logs", "nolog")
    assert res.returncode == 1 and "no log" in _one_error_line(res.stderr), res.stderr
    assert cli("rm", "nolog").returncode == 0


def test_logs_f_ends_cleanly_on_ctrl_c(cli, client, procs):
    assert cli("run", "-d", "--busybox", "lgc", "sh", "-c", "echo hi; sleep 300").returncode == 0
    proc = procs.start(*cli.globals, "logs", "-f", "lgc")
    out = procs.lines(proc.stdout, "logs-stdout")
    assert out.wait_for("hi", timeout=60) is not None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert "Traceback" not in proc.stderr.read()
    assert client.load_container("lgc").task().status().value == "running"  # left alone
    assert cli("rm", "-f", "lgc").returncode == 0


def test_attach_streams_new_output_feeds_stdin_and_exits_with_the_code(cli, client, procs):
    """`run -d -i` keeps a stdin FIFO; `attach` feeds it from its stdin, prints the output from now on (read
    from the log) and exits with the container's code."""
    script = 'echo early; read line; echo "got $line"; exit 4'
    assert cli("run", "-d", "-i", "--busybox", "at", "sh", "-c", script).returncode == 0
    assert wait_until(lambda: "early" in cli("logs", "at").stdout)
    proc = procs.start(*cli.globals, "attach", "at", stdin=subprocess.PIPE)
    out = procs.lines(proc.stdout, "attach-stdout")
    err = procs.lines(proc.stderr, "attach-stderr")
    assert err.wait_for("attached to at", timeout=60) is not None, err.rest()
    proc.stdin.write("hello\n")
    proc.stdin.flush()
    assert out.wait_for("got hello") is not None, err.rest()
    assert proc.wait(timeout=30) == 4, err.rest()
    assert "early" not in out.rest()  # what came before the attach is in `logs`, not here
    res = cli("attach", "at")
    assert res.returncode == 1 and "stopped" in _one_error_line(res.stderr), res.stderr
    assert cli("rm", "at").returncode == 0


def test_attach_to_a_terminal_container_on_a_real_terminal(cli, client):
    """`run -d -it` then `attach` at a terminal: raw mode, keystrokes reach the shell, its exit code comes back;
    without a terminal on stdin it is a usage error, as for `run -it`."""
    assert cli("run", "-d", "-i", "-t", "--busybox", "tt", "sh").returncode == 0
    res = cli("attach", "tt", input="exit 1\n")
    assert res.returncode == 2 and "not a TTY" in _one_error_line(res.stderr), res.stderr
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "libcontainerd", *cli.globals, "attach", "tt"], stdin=slave,
                                stdout=slave, stderr=slave, env=_base_env(), start_new_session=True)
        os.close(slave)
        slave = -1
        os.write(master, b"echo $((6*7)); exit 5\r")
        output = _read_pty_until_exit(master, proc)
        assert proc.wait(timeout=30) == 5, output
        assert b"42" in output, output
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert cli("rm", "tt").returncode == 0


def test_attach_forwards_signals_to_the_container(cli, client, procs):
    script = 'trap "echo got TERM; exit 7" TERM; echo ready; while true; do sleep 0.1; done'
    assert cli("run", "-d", "--busybox", "as", "sh", "-c", script).returncode == 0
    assert wait_until(lambda: "ready" in cli("logs", "as").stdout)
    proc = procs.start(*cli.globals, "attach", "as")
    out = procs.lines(proc.stdout, "attach-stdout")
    err = procs.lines(proc.stderr, "attach-stderr")
    assert err.wait_for("attached to as", timeout=60) is not None, err.rest()
    proc.send_signal(signal.SIGTERM)
    assert out.wait_for("got TERM") is not None, err.rest()
    assert proc.wait(timeout=30) == 7, err.rest()
    assert client.load_container("as").task().wait(timeout=30).code == 7
    assert cli("rm", "as").returncode == 0


def test_attach_with_a_second_ctrl_c_detaches_and_leaves_the_container_running(cli, client, procs):
    assert cli("run", "-d", "--busybox", "ad", "sleep", "300").returncode == 0  # pid 1: ignores SIGINT
    proc = procs.start(*cli.globals, "attach", "ad")
    err = procs.lines(proc.stderr, "attach-stderr")
    assert err.wait_for("attached to ad", timeout=60) is not None, err.rest()
    proc.send_signal(signal.SIGINT)
    assert err.wait_for("Ctrl-C again detaches") is not None, err.rest()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert "Traceback" not in err.rest()
    assert client.load_container("ad").task().status().value == "running"
    assert cli("rm", "-f", "ad").returncode == 0


def test_wait_prints_exit_codes_and_exits_with_the_first(cli, client):
    assert cli("run", "-d", "--busybox", "three", "sh", "-c", "exit 3").returncode == 0
    assert cli("run", "-d", "--busybox", "five", "sleep", "300").returncode == 0
    five = client.load_container("five").task()
    five.kill(signal.SIGKILL)  # so wait ends; the code it prints is the kill's
    res = cli("wait", "three", "five")
    assert (res.returncode, res.stdout) == (3, "3\n137\n"), res.stderr
    res = cli("wait", "five", "nosuch")  # one missing: the others still reported, exit 1
    assert (res.returncode, res.stdout) == (1, "137\n"), res.stderr
    assert "nosuch" in _one_error_line(res.stderr)
    assert cli("rm", "three", "five").returncode == 0


def test_wait_blocks_until_the_running_task_exits(cli, client, procs):
    assert cli("run", "-d", "--busybox", "later", "sleep", "300").returncode == 0
    proc = procs.start(*cli.globals, "wait", "later")
    task = client.load_container("later").task()
    assert proc.poll() is None
    task.kill(signal.SIGKILL)
    assert proc.wait(timeout=30) == 137
    assert proc.stdout is not None and proc.stdout.read() == "137\n"
    assert cli("rm", "later").returncode == 0


def test_stop_terms_then_kills_after_the_grace_time(cli, client):
    # As pid 1 of its namespace, a process without a TERM handler would not die of TERM: both trap it.
    scripts = {"polite": "trap 'exit 0' TERM; touch /tmp/ready; sleep 300 & wait",
               "stubborn": "trap '' TERM; touch /tmp/ready; while true; do sleep 1; done"}
    for cid, script in scripts.items():
        assert cli("run", "-d", "--busybox", cid, "sh", "-c", script).returncode == 0
        assert wait_until(lambda cid=cid: cli("exec", cid, "test", "-e", "/tmp/ready").returncode == 0)
    res = cli("stop", "-t", "60", "polite")  # ends as soon as the process does, long before 60 s
    assert (res.returncode, res.stdout) == (0, "polite\n"), res.stderr
    assert client.load_container("polite").task().wait(timeout=30).code == 0
    res = cli("stop", "-t", "1", "stubborn", "polite")  # polite is stopped already: nothing to do, still 0
    assert (res.returncode, res.stdout) == (0, "stubborn\npolite\n"), res.stderr
    assert client.load_container("stubborn").task().wait(timeout=30).code == 128 + signal.SIGKILL
    res = cli("stop", "-t", "-1", "polite")
    assert res.returncode == 2
    assert cli("rm", "polite", "stubborn").returncode == 0


def test_kill_several_ids_and_all(cli, client):
    for cid in ("k1", "k2", "k3"):
        assert cli("run", "-d", "--busybox", cid, "sleep", "300").returncode == 0
    res = cli("kill", "-s", "KILL", "k1", "k2")
    assert res.returncode == 0, res.stderr
    assert [client.load_container(c).task().wait(timeout=30).code for c in ("k1", "k2")] == [137, 137]
    res = cli("kill", "-s", "9", "k1", "k3")  # k1's task is stopped: an error line for it, k3 still signalled
    assert res.returncode == 1
    assert "k1" in _one_error_line(res.stderr)
    assert client.load_container("k3").task().wait(timeout=30).code == 137
    assert cli("run", "-d", "--busybox", "k4", "sleep", "300").returncode == 0
    res = cli("kill", "--all", "-s", "KILL")  # only the live one: the stopped ones are not errors
    assert res.returncode == 0, res.stderr
    assert client.load_container("k4").task().wait(timeout=30).code == 137
    assert cli("kill").returncode == 2
    assert cli("kill", "--all", "k4").returncode == 2
    assert cli("rm", "k1", "k2", "k3", "k4").returncode == 0


def test_checkpoint_writes_criu_files_and_a_bad_dir_gets_one_line(cli, client, tmp_path, criu):
    assert cli("run", "-d", "--busybox", "ck", "sleep", "300").returncode == 0
    res = cli("checkpoint", "ck", str(tmp_path / "ck"), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "inventory.img" in os.listdir(tmp_path / "ck")
    # a second dump into a file where the directory should be: one clear line, no traceback
    (tmp_path / "file").write_text("x")
    res = cli("checkpoint", "ck", str(tmp_path / "file"), timeout=120)
    assert res.returncode == 1
    assert "not a directory" in _one_error_line(res.stderr)
    assert cli("rm", "-f", "ck").returncode == 0


def test_restore_continues_a_checkpointed_container(cli, client, tmp_path, criu):
    """`restore ID DIR` starts the task again from what `checkpoint` wrote: the counter goes on where it was."""
    script = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"
    assert cli("run", "-d", "--busybox", "rs", "sh", "-c", script).returncode == 0

    def ticks() -> list[int]:
        return [int(line.split()[1]) for line in cli("logs", "rs").stdout.splitlines()]

    assert wait_until(lambda: len(ticks()) >= 3)
    directory = str(tmp_path / "rs")
    res = cli("restore", "rs", directory)
    assert res.returncode == 1 and "running" in _one_error_line(res.stderr), res.stderr
    res = cli("checkpoint", "--exit", "rs", directory, timeout=120)
    assert res.returncode == 0, res.stderr
    before = ticks()
    assert client.load_container("rs").task().status().value == "stopped"
    res = cli("restore", "rs", str(tmp_path / "nothing"))  # one line; the container can still be restored
    assert res.returncode == 1 and "nothing" in _one_error_line(res.stderr), res.stderr
    res = cli("restore", "rs", directory, timeout=120)
    assert (res.returncode, res.stdout) == (0, "rs\n"), res.stderr
    assert cli("ps").stdout.splitlines()[1].split()[:2] == ["rs", "running"]
    assert wait_until(lambda: len(ticks()) > len(before) + 3)
    after = ticks()
    assert after == list(range(1, len(after) + 1)), after  # went on from the checkpoint, no new start at 1
    assert cli("rm", "-f", "rs").returncode == 0


def test_events_json_prints_a_line_per_event_until_ctrl_c(cli, client, recorder, rootfs, procs):
    proc = procs.start(*cli.globals, "events", "--json")
    err = procs.lines(proc.stderr, "events-stderr")
    out = procs.lines(proc.stdout, "events-stdout")
    assert err.wait_for("watching events") is not None, err.rest()
    exit_line, kinds = None, []
    # The stream is subscribed right after the notice; another container only covers a subscription
    # so slow (a loaded machine) that it was registered while the first container already ran.
    for attempt in range(3):
        cid = f"ev{attempt}"
        run_once(client, recorder, rootfs, cid)
        exit_line = out.wait_for(f'"type": "exit", "container": "{cid}"', timeout=10)
        kinds = [json.loads(line)["type"] for line in out.seen if f'"{cid}"' in line]
        if exit_line is not None and kinds[:1] == ["create"]:
            break
    assert exit_line is not None, out.rest()
    event = json.loads(exit_line)
    assert event["exit_code"] == 0 and event["pid"] > 0 and event["process"] == cid and event["exited_at"]
    assert kinds == ["create", "start", "exit"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) in (0, 130)
    assert "Traceback" not in err.rest()


def test_events_filter_and_json_nulls(cli, client, recorder, rootfs, procs):
    """--filter container=ID shows one container's events; --json writes null where an event has no pid or
    exit code (a pause has neither), not 0."""
    assert cli("events", "--filter", "nocontainer").returncode == 2
    assert cli("run", "-d", "--busybox", "fp", "sleep", "300").returncode == 0
    proc = procs.start(*cli.globals, "events", "--json", "--filter", "container=fp")
    err = procs.lines(proc.stderr, "events-stderr")
    out = procs.lines(proc.stdout, "events-stdout")
    assert err.wait_for("watching events") is not None, err.rest()
    paused = None
    for attempt in range(3):  # the subscription registers a little after the notice: pause again until seen
        run_once(client, recorder, rootfs, f"other{attempt}")
        assert cli("pause", "fp").returncode == 0
        assert cli("resume", "fp").returncode == 0
        paused = out.wait_for('"type": "paused"', timeout=10)
        if paused is not None:
            break
    assert paused is not None, out.rest()
    event = json.loads(paused)
    assert (event["container"], event["pid"], event["exit_code"]) == ("fp", None, None)
    assert out.wait_for('"type": "resumed"') is not None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) in (0, 130)
    assert not [line for line in out.seen if "other" in line], out.seen
    assert cli("rm", "-f", "fp").returncode == 0


def test_events_ends_when_its_reader_does(cli, client, recorder, rootfs):
    """`events | head -1` ends once head has its line, as `ctr events` does (the broken pipe was swallowed)."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "libcontainerd", *cli.globals, "events"])
    pipeline = subprocess.Popen(["sh", "-c", f"{command} | head -1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_base_env())
    try:
        for attempt in range(30):  # events until head got one (the subscription may miss the first ones)
            run_once(client, recorder, rootfs, f"hd{attempt}")
            try:
                stdout, stderr = pipeline.communicate(timeout=2)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            pytest.fail("events | head -1 did not end")
        assert re.search(r"\bhd\d+\b", stdout), stdout
        assert "Traceback" not in stderr, stderr
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
            pipeline.wait(timeout=30)
    assert not _our_processes(cli.globals[5]), "the events process outlived its pipeline"


def test_events_says_when_it_lost_containerd_and_when_it_is_back(procs, state_dir, namespace):
    """A private daemon of its own, killed under `events` (and restarted by its supervisor)."""
    tmp = tempfile.mkdtemp(prefix="lcd-evr-")
    daemon = testing.start_daemon(tmp, health_failures=0)
    try:
        proc = procs.start("--address", daemon.address, "--namespace", namespace, "--state-dir", state_dir, "events")
        err = procs.lines(proc.stderr, "events-stderr")
        assert err.wait_for("watching events") is not None, err.rest()
        restarts = daemon.restarts
        daemon.kill(signal.SIGKILL)
        assert daemon.wait_for_restarts(restarts + 1, timeout=60)
        assert err.wait_for("waiting for containerd|ended; reconnecting", timeout=30) is not None, err.seen
        assert err.wait_for("containerd is back", timeout=60) is not None, err.seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) in (0, 130)
    finally:
        testing.cleanup_root(daemon)
        shutil.rmtree(tmp, ignore_errors=True)


def test_run_rm_removes_the_container_when_containerd_dies_during_the_start(procs, tmp_path, namespace):
    """containerd killed while `run --rm` creates and starts the task (frozen the moment the task's FIFOs
    exist, then killed; its supervisor restarts it): the start fails, and the CLI removes the container and
    its state once containerd is back, instead of leaving both behind with no hint."""
    state = str(tmp_path / "state")
    owner = testing.PrivateContainerd("lcd-midstart-", health_failures=0)
    with owner as daemon:
        proc = procs.start("--address", daemon.address, "--namespace", namespace, "--state-dir", state,
                           "run", "--rm", "--busybox", "mid", "sh", "-c", "echo hi")
        err = procs.lines(proc.stderr, "run-stderr")
        fifo = os.path.join(state, "mid", "mid-stdout")
        # Made just before the Create call: containerd is frozen inside the create (or before the start).
        assert wait_until(lambda: os.path.exists(fifo) or proc.poll() is not None, timeout=60, interval=0.001)
        os.kill(daemon.pid, signal.SIGSTOP)
        restarts = daemon.restarts
        daemon.kill(signal.SIGKILL)
        assert daemon.wait_for_restarts(restarts + 1, timeout=60)
        code = proc.wait(timeout=120)
        text = err.rest()
        assert "Traceback" not in text, text
        with libcontainerd.new_client(daemon.address, state, namespace, None, timeout=60) as c:
            left = [ctr.id for ctr in c.list_containers()]
            testing.remove_containers(c)
        assert left == [], text
        assert not os.path.exists(os.path.join(state, "mid")), text
        assert code == 1, text
        assert "containerd is back: removed container mid" in text, text
    assert (owner.leftovers.processes, owner.remaining) == ((), {})  # no shim of it either


def test_events_human_lines(cli, client, recorder, rootfs, procs):
    proc = procs.start(*cli.globals, "events")
    err = procs.lines(proc.stderr, "events-stderr")
    out = procs.lines(proc.stdout, "events-stdout")
    assert err.wait_for("watching events") is not None, err.rest()
    line = None
    for attempt in range(3):
        cid = f"hv{attempt}"
        assert run_once(client, recorder, rootfs, cid, "sh", "-c", "exit 7") == 7
        line = out.wait_for(rf"\bexit\s+{cid}\b", timeout=10)
        if line is not None:
            break
    assert line is not None, out.rest()
    assert re.match(rf"^\d{{4}}-\d\d-\d\dT[\d:.]+Z\s+exit\s+{cid}\s+pid \d+, exit code 7$", line), line
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) in (0, 130)
    assert "Traceback" not in err.rest()


def test_exit_codes_say_what_kind_of_failure_it_was(cli, client, containerd, tmp_path):
    """Usage errors exit 2; a command that is not there 127, one that cannot be run 126 (as docker)."""
    for args, code in [
        (("run", "--rm", "--busybox", "-e", "NOEQ", "e", "true"), 2),
        (("run", "--rm", "--busybox", "-w", "rel", "w", "true"), 2),
        (("run", "--rm", "--busybox", "--hostname", "h" * 65, "h", "true"), 2),
        (("run", "--rm", "--busybox", "nf", "no-such-command"), 127),
        (("run", "--rm", "--busybox", "nx", "/etc/passwd"), 126),
    ]:
        res = cli(*args)
        assert res.returncode == code, (args, res.stderr)
        _one_error_line(res.stderr)
    assert cli("run", "-d", "--busybox", "ex", "sleep", "300").returncode == 0
    assert cli("exec", "ex", "no-such-command").returncode == 127
    assert cli("exec", "ex", "/etc/passwd").returncode == 126
    assert cli("exec", "-e", "NOEQ", "ex", "true").returncode == 2
    assert cli("rm", "-f", "ex").returncode == 0
    assert client.list_containers() == []


def test_address_empty_is_an_error_and_a_relative_socket_path_works(cli, containerd, state_dir):
    res = cli("--address", "", "version", where="after")
    assert res.returncode == 2 and "--address" in _one_error_line(res.stderr)
    res = subprocess.run([sys.executable, "-m", "libcontainerd", "--address", os.path.basename(containerd.address),
                          "--state-dir", state_dir, "version"], capture_output=True, text=True, timeout=60,
                         env=_base_env(), cwd=os.path.dirname(containerd.address))
    assert res.returncode == 0, res.stderr
    assert "containerd" in res.stdout


def test_daemon_root_errors_name_root(tmp_path):
    too_long = tmp_path / ("r" * 100)
    res = subprocess.run([sys.executable, "-m", "libcontainerd", "daemon", "--root", str(too_long)],
                         capture_output=True, text=True, timeout=60, env=_base_env())
    line = _one_error_line(res.stderr)
    assert res.returncode == 2 and "--root" in line and "state_dir" not in line, line
    assert not too_long.exists()


def test_an_error_is_one_line_and_a_nonzero_exit(cli, client):
    res = cli("rm", "nosuch")
    assert res.returncode != 0
    assert _one_error_line(res.stderr).count("nosuch") == 1, res.stderr  # no doubled prefix
    res = cli("--address", "/nonexistent/containerd.sock", "version", where="after")
    assert res.returncode != 0
    assert "/nonexistent/containerd.sock" in _one_error_line(res.stderr)
    res = cli("run", "--rm", "--busybox", "bad", "no-such-command")
    assert res.returncode == 127
    assert "no-such-command" in _one_error_line(res.stderr)
    assert client.list_containers() == []  # nothing left of the failed run
    res = cli("run", "--memory", "lots", "--busybox", "m", "true")
    assert res.returncode == 2
    assert "--memory" in _one_error_line(res.stderr)


def test_help_of_every_subcommand_shows_an_example(cli):
    for name in ["", *SUBCOMMANDS]:
        res = cli(*([name] if name else []), "--help", where="none")
        assert res.returncode == 0, (name, res.stderr)
        assert "example" in res.stdout, name
        assert "--address" in res.stdout, name


def test_daemon_runs_until_ctrl_c(cli, procs):
    root = tempfile.mkdtemp(prefix="lcd-clid-")
    try:
        proc = procs.start("daemon", "--root", os.path.join(root, "d"))
        out = procs.lines(proc.stdout, "daemon-stdout")
        line = out.wait_for("is serving at", timeout=60)
        assert line is not None, proc.stderr.read() if proc.poll() is not None else out.rest()
        address = line.split("is serving at ")[1].strip()
        res = cli("version", "--address", address, "--state-dir", os.path.join(root, "state"), where="after")
        assert res.returncode == 0, res.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        out.rest()
        assert "containerd stopped" in proc.stderr.read()
        assert _our_processes(root) == []
    finally:
        testing.cleanup_root(os.path.join(root, "d"))
        subprocess.run(["rm", "-rf", root], check=False)


# -- the demo -------------------------------------------------------------------------------------


def test_demo_end_to_end_leaves_nothing_behind():
    res = subprocess.run([sys.executable, "-m", "libcontainerd", "demo"], capture_output=True, text=True,
                         timeout=90, env=_base_env())
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for step in DEMO_STEPS:
        assert step in out, out
    for words in ("Hello from container hello", "exit code 0", "HELLO FROM THE HOST", "memory", "status paused",
                  "status running", "got SIGTERM", "event", "paused", "resumed", "exec-started", "nothing left behind"):
        assert words in out, (words, out)
    root = re.search(r"under (/\S+)", out).group(1)
    assert root.startswith(tempfile.gettempdir())
    assert not os.path.exists(root)
    assert _our_processes(root) == []
    assert "Traceback" not in res.stderr


def test_demo_cleans_up_after_ctrl_c(procs, tmp_path):
    root = str(tmp_path / "demo")
    proc = procs.start("demo", "--pause", "--root", root, stdin=subprocess.PIPE)
    out = procs.lines(proc.stdout, "demo-stdout")
    proc.stdin.write("\n" * 4)  # go on to step 5, then stop at the prompt before step 6 with 'box' running
    proc.stdin.flush()
    assert out.wait_for(r"\[5/10\]", timeout=60) is not None, out.rest()
    assert out.wait_for("press Enter", timeout=30) is not None, out.rest()
    running = testing.daemon_processes(os.path.join(root, "containerd"))
    assert any("shim" in argv[0] for argv in running.values()), running  # containerd and the shim of 'box'
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    text = out.rest()
    assert "Interrupted" in text and "nothing left behind" in text, text
    assert "Traceback" not in proc.stderr.read()
    assert not os.path.exists(root)
    assert _alive(running) == []

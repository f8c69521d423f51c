"""The /proc readers, against real processes of this machine (children we start, stop and reap)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

import pytest

from libcontainerd import _procfs

# A child whose comm holds the characters that break a naive parse of /proc/<pid>/stat.
_ODD_NAME = "a) (b c)"


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_child_is_listed_with_its_argv_state_and_parent(child):
    assert child.pid in _procfs.pids()
    assert _procfs.cmdline(child.pid) == [sys.executable, "-c", "import sys; sys.stdin.read()"]
    assert _procfs.state(child.pid) in ("S", "R")
    assert _procfs.running(child.pid)
    assert _procfs.parents()[child.pid] == os.getpid()
    assert child.pid in _procfs.descendants([os.getpid()])
    assert child.pid not in _procfs.descendants([child.pid])


def test_a_stopped_child_is_t_in_every_thread(child):
    os.kill(child.pid, signal.SIGSTOP)
    os.waitpid(child.pid, os.WUNTRACED)  # returns once the kernel has stopped it
    try:
        assert _procfs.state(child.pid) == "T"
        assert set(_procfs.thread_states(child.pid)) == {"T"}
    finally:
        os.kill(child.pid, signal.SIGCONT)


def test_a_zombie_exists_but_does_not_run(child):
    child.stdin.close()  # the child reads to EOF and exits; unreaped, it stays a zombie
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # waits without reaping
    assert _procfs.state(child.pid) == "Z"
    assert not _procfs.running(child.pid)
    assert _procfs.cmdline(child.pid) == []
    assert child.pid not in _procfs.parents()
    assert child.pid not in _procfs.descendants([os.getpid()])


def test_a_reaped_process_is_an_empty_answer_not_an_error(child):
    child.kill()
    child.wait()
    assert child.pid not in _procfs.pids()
    assert _procfs.state(child.pid) is None
    assert not _procfs.running(child.pid)
    assert _procfs.cmdline(child.pid) == []
    assert _procfs.thread_states(child.pid) == []
    assert _procfs.status(child.pid) == {}
    assert _procfs.cgroups(child.pid) == set()


def test_the_state_follows_the_last_parenthesis_of_the_command_name():
    script = f"import ctypes, sys; ctypes.CDLL(None).prctl(15, {_ODD_NAME.encode()!r}, 0, 0, 0); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        with open(f"/proc/{proc.pid}/comm", encoding="ascii") as f:
            for _ in range(1000):  # the child renames itself right after it starts
                f.seek(0)
                if f.read().strip() == _ODD_NAME:
                    break
                threading.Event().wait(0.01)
        assert _procfs.state(proc.pid) in ("S", "R")
        assert _procfs.parents()[proc.pid] == os.getpid()
    finally:
        proc.kill()
        proc.wait()


def test_descriptors_of_this_process_include_the_listing_s_own():
    before = _procfs.fds()
    r, w = os.pipe()
    try:
        now = _procfs.fds()
        assert {r, w} <= now and len(now) == len(before) + 2
        assert max(now) not in (r, w)  # the lowest free number after the pipe's: the listing's own
    finally:
        os.close(r)
        os.close(w)
    assert _procfs.fds() == before


def test_status_and_cgroups_of_this_process():
    status = _procfs.status()
    assert status["Pid"] == str(os.getpid())
    assert int(status["VmRSS"].split()[0]) > 0
    assert _procfs.cgroups("self") and all(line.count(":") >= 2 for line in _procfs.cgroups("self"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_mount_points_are_unescaped():
    with tempfile.TemporaryDirectory() as parent:
        point = os.path.join(parent, "with space\tand tab")
        os.mkdir(point)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", point], check=True)
        try:
            assert point in _procfs.mount_points()
        finally:
            subprocess.run(["umount", point], check=True)
        assert point not in _procfs.mount_points()

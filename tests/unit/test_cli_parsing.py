"""The command line's parser and formatting helpers, without a daemon."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal

import pytest

from libcontainerd._cli import _context, _format, _main, _parser, _signals, _values
from libcontainerd.types import EventInfo, EventType


def parse(*argv: str) -> argparse.Namespace:
    return _parser.build_parser().parse_args(list(argv))


def test_the_command_follows_the_id_without_double_dash():
    args = parse("run", "--rm", "--busybox", "box", "sh", "-c", "echo hi")
    assert (args.id, args.command, args.rm, args.busybox) == ("box", ["sh", "-c", "echo hi"], True, True)
    # Options after the id, even ours, belong to the container's command.
    args = parse("run", "--busybox", "box", "ls", "--rm", "-t", "--address", "x")
    assert args.command == ["ls", "--rm", "-t", "--address", "x"]
    assert args.rm is False and args.tty is False and not hasattr(args, "address")
    args = parse("exec", "-it", "--exec-id", "e1", "box", "sh", "-l")
    assert (args.id, args.exec_id, args.command, args.tty, args.interactive) == ("box", "e1", ["sh", "-l"], True, True)


def test_global_options_before_or_after_the_subcommand(monkeypatch):
    for name in (_context.ENV_ADDRESS, _context.ENV_NAMESPACE, _context.ENV_STATE_DIR, _context.ENV_DEBUG):
        monkeypatch.delenv(name, raising=False)
    before = _context.Context(parse("--address", "/a.sock", "--namespace", "n1", "ps"))
    after = _context.Context(parse("ps", "--address", "/a.sock", "--namespace", "n1", "--debug"))
    assert (before.address, before.namespace, before.debug) == ("/a.sock", "n1", False)
    assert (after.address, after.namespace, after.debug) == ("/a.sock", "n1", True)
    both = _context.Context(parse("--address", "/before.sock", "ps", "--address", "/after.sock"))
    assert both.address == "/after.sock"
    defaults = _context.Context(parse("ps"))
    assert (defaults.address, defaults.namespace, defaults.state_dir) == (
        _context.DEFAULT_ADDRESS, _context.DEFAULT_NAMESPACE, _context.DEFAULT_STATE_DIR)
    monkeypatch.setenv(_context.ENV_ADDRESS, "/env.sock")
    monkeypatch.setenv(_context.ENV_STATE_DIR, "/env-state")
    from_env = _context.Context(parse("ps"))
    assert (from_env.address, from_env.state_dir) == ("/env.sock", "/env-state")
    assert _context.Context(parse("ps", "--address", "/flag.sock")).address == "/flag.sock"


def test_usage_errors_are_one_line_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("run", "--busybox")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("libcontainerd: error: ") and "run --help" in err
    assert _main.main(["run", "--rm", "--busybox", "--memory", "much", "m", "true"]) == 2
    assert capsys.readouterr().err == (
        "libcontainerd: error: --memory 'much' is not a size like 64m, 512MiB or 1g\n")


def test_no_subcommand_prints_help_and_exit_code_2(capsys):
    assert _main.main([]) == 2
    assert "commands:" in capsys.readouterr().err


def test_human_units():
    assert _format.human_bytes(0) == "0 B"
    assert _format.human_bytes(1023) == "1023 B"
    assert _format.human_bytes(1024) == "1.0 KiB"
    assert _format.human_bytes(12_900_000) == "12.3 MiB"
    assert _format.human_bytes(3 << 30) == "3.0 GiB"
    assert _format.human_duration(999) == "999 ns"
    assert _format.human_duration(45_600_000) == "45.6 ms"
    assert _format.human_duration(1_234_000_000) == "1.23 s"
    assert _format.human_duration(61 * 10**9) == "1m01s"


@pytest.mark.parametrize("text,size", [("64m", 64 << 20), ("64M", 64 << 20), ("512MiB", 512 << 20),
                                       ("1g", 1 << 30), ("1.5G", 3 << 29), ("4096", 4096), ("8kb", 8192)])
def test_parse_memory(text, size):
    assert _values.parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1m", "0", "12x"])
def test_parse_memory_rejects(text):
    with pytest.raises(_context.UsageError):
        _values.parse_memory(text)


def test_parse_user_by_number_and_by_name(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nuser:x:1000:1001::/home/user:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    rootfs = str(tmp_path)
    assert _values.parse_user("1000", rootfs) == (1000, 1001)  # the primary group from /etc/passwd
    assert _values.parse_user("4242", rootfs) == (4242, 0)
    assert _values.parse_user("user", rootfs) == (1000, 1001)
    assert _values.parse_user("user:staff", rootfs) == (1000, 50)
    assert _values.parse_user("7:8", None) == (7, 8)
    with pytest.raises(_context.UsageError, match="no user 'ghost'"):
        _values.parse_user("ghost", rootfs)
    with pytest.raises(_context.UsageError, match="no group 'ghosts'"):
        _values.parse_user("user:ghosts", rootfs)


def test_tables_are_aligned():
    text = _format.table(["ID", "PID", "COMMAND"], [["a", "7", "sleep 1"], ["long-name", "12345", "sh"]], right=(1,))
    assert text.splitlines() == [
        "ID            PID   COMMAND",
        "a               7   sleep 1",
        "long-name   12345   sh",
    ]


def test_event_lines():
    exited = EventInfo("box", "e1", pid=42, exit_code=3,
                       exited_at=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc))
    assert _format.describe_event("box", EventType.EXIT, exited) == "  exec e1, pid 42, exit code 3"
    assert _format.describe_event("box", EventType.PAUSED, EventInfo("box", "box")) == ""
    assert _format.iso(exited.exited_at) == "2024-01-02T03:04:05.000Z"


def test_every_subcommand_has_an_example_in_its_help():
    parser = _parser.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) >= {"daemon", "version", "run", "exec", "ps", "list", "top", "kill", "pause", "resume",
                                "stats", "events", "checkpoint", "rm", "demo"}
    for name, p in sub.choices.items():
        assert "example" in p.format_help(), name


@pytest.fixture
def sigint_restored():
    old = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, old)


def test_deferred_interrupts_hold_a_ctrl_c_back_until_the_block_ends(sigint_restored):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    with pytest.raises(KeyboardInterrupt), _signals.deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("end of block")  # the interrupt did not cut the block short
    assert reached == ["end of block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_interrupts_leave_an_ignored_sigint_ignored(sigint_restored):
    """Started with SIGINT ignored (a background job, nohup): Ctrl-C must not start to count during start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with _signals.deferred_interrupts():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("name, shown", [("libcontainerd.events", False), ("libcontainerd.remote._events", False),
                                         ("libcontainerd.remote._client", True), ("libcontainerd", True)])
def test_the_event_stream_s_records_are_told_by_logger_name(name, shown):
    record = logging.LogRecord(name, logging.WARNING, "/any/where/_events.py", 1, "stream broke", None, None)
    assert _main._not_event_stream(record) is shown

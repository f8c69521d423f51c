"""``libcontainerd demo``: the SDK driving a private containerd, step by step, for a newcomer.

This module owns the demo's script: start a supervised containerd under a temporary
root (or ``--root``), build a busybox rootfs, run a container and show its output,
exec into a second one (with stdin), read its stats and processes, pause and resume
it, stop it, import an image made from the same rootfs and run a container of it (no network
needed), and print every task event as the backend receives it. It must clean up
everything it made — containers, tasks, shims, the daemon and its directories — on
success, on error and on Ctrl-C, and it must use the public API only (the same calls
a user would type). It writes to the stream it is given, as the command line does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from typing import TextIO

import libcontainerd
from libcontainerd import errdefs, oci, stdio, supervisor, testing
from libcontainerd.types import EventInfo, EventType

from ._format import describe_event, human_bytes, human_duration
from ._signals import deferred_interrupts, no_interrupts

__all__ = ["run_demo"]

NAMESPACE = "demo"
_EVENT_WAIT = 10.0  # an event normally arrives within milliseconds; this only bounds a broken daemon
_STEPS = 10

_HELLO = ('echo "Hello from container $(hostname): I am pid $$ in my own pid namespace."; '
          'echo "The kernel is $(uname -sr); my root filesystem holds $(ls /bin | wc -l) busybox applets."')
# `sleep & wait` so that the TERM trap runs at once instead of after the current sleep.
_FROM_IMAGE = ('echo "I run on a snapshot of an image, in $(pwd)."; cat /hello.txt; '
               'test -e /etc/doomed || echo "/etc/doomed of the lower layer is gone: the upper one deleted it."')
_SERVICE = "trap 'echo got SIGTERM, bye; exit 0' TERM; while true; do sleep 1 & wait $!; done"


class _Screen:
    """Serialises the demo's lines and the event lines written from the client's event workers."""

    def __init__(self, out: TextIO, pause_on: TextIO | None = None) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._pause_on = pause_on
        self.started = time.monotonic()

    def line(self, text: str = "") -> None:
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def step(self, number: int, text: str) -> None:
        if self._pause_on is not None and number > 1:
            self.line("      (press Enter for the next step)")
            if not self._pause_on.readline():
                self._pause_on = None  # stdin ended: go on without pausing
        self.line()
        self.line(f"[{number}/{_STEPS}] {text}")

    def detail(self, text: str) -> None:
        self.line(f"      {text}")


class _Demo:
    def __init__(self, root: str | None, out: TextIO, pause_on: TextIO | None) -> None:
        self.screen = _Screen(out, pause_on)
        self.events = testing.RecordingBackend()
        self.events.hook = self._print_event
        self.given_root = root
        self.root = ""
        self.made_root = False
        self.daemon: supervisor.Daemon | None = None
        self.client: libcontainerd.Client | None = None

    # -- the script ---------------------------------------------------------------------------

    def run(self) -> None:
        s = self.screen
        s.line("libcontainerd demo: the Python SDK driving a private containerd, step by step.")

        if self.given_root is None:
            self.root = tempfile.mkdtemp(prefix="lcd-demo-")  # short: containerd's socket path must fit
            self.made_root = True
        else:
            self.root = os.path.abspath(self.given_root)
            self.made_root = not os.path.exists(self.root)
            os.makedirs(self.root, exist_ok=True)
        s.step(1, f"Starting a private containerd under {self.root}   (libcontainerd.supervisor)")
        self.daemon = testing.start_daemon(self.root)
        s.detail(f"pid {self.daemon.pid}, serving at {self.daemon.address}")

        s.step(2, "Building a busybox root filesystem   (libcontainerd.testing.busybox_rootfs)")
        rootfs = testing.busybox_rootfs(os.path.join(self.root, "rootfs"))
        s.detail(f"{rootfs}: {len(os.listdir(os.path.join(rootfs, 'bin')))} entries in /bin")

        s.step(3, f"Connecting a client to namespace {NAMESPACE!r} with a backend that prints events   (new_client)")
        self.client = client = libcontainerd.new_client(
            self.daemon.address, os.path.join(self.root, "state"), NAMESPACE, self.events, timeout=60)
        version = client.version()
        s.detail(f"containerd {version}")

        s.step(4, "Running container 'hello' and capturing its output   (new_container, start, stdio.capture)")
        out = stdio.capture()
        with deferred_interrupts():  # see there: an interrupted start would leave containerd and us disagreeing
            hello = client.new_container("hello", oci.default_spec(rootfs, ["sh", "-c", _HELLO], hostname="hello"))
            task = hello.start(attach_stdio=out)
        code = self.show_exit(task, out, "hello")
        s.detail(f"exit code {code}; deleting its task and the container")
        task.delete()
        hello.delete()

        s.step(5, "Starting container 'box', a small service that keeps running   (start)")
        service_out = stdio.capture()
        with deferred_interrupts():
            box = client.new_container("box", oci.default_spec(rootfs, ["sh", "-c", _SERVICE], hostname="box"))
            task = box.start(attach_stdio=service_out)
        self.wait_for_event("box", EventType.START)
        s.detail(f"running as host pid {task.pid}, status {task.status().value}")

        s.step(6, "Exec'ing into 'box': `ps`, then `tr` fed from our stdin   (Task.exec)")
        ps_out = stdio.capture()
        with deferred_interrupts():
            proc = task.exec("ps", oci.process_spec(["ps", "-o", "pid,user,args"]), attach_stdio=ps_out)
        self.show_exit(proc, ps_out, "box", "ps")
        proc.delete()
        tr_out = stdio.capture(stdin=b"hello from the host, through a FIFO\n")
        with deferred_interrupts():
            proc = task.exec("upper", oci.process_spec(["tr", "a-z", "A-Z"]), with_stdin=True, attach_stdio=tr_out)
        self.show_exit(proc, tr_out, "box", "upper")
        proc.delete()

        s.step(7, "Reading its stats and processes   (Task.stats, Task.summary)")
        st = task.stats()
        limit = st.memory_limit_bytes
        s.detail(f"memory {human_bytes(st.memory_bytes)}" + (f" of {human_bytes(limit)}" if limit else "")
                 + f", CPU time {human_duration(st.cpu_ns)}, {st.pids} processes")
        s.detail("processes (host pids): " + ", ".join(
            f"{p.pid}{' (exec ' + p.exec_id + ')' if p.exec_id else ''}" for p in task.summary()))

        s.step(8, "Pausing and resuming it   (Task.pause, Task.resume)")
        task.pause()
        self.wait_for_event("box", EventType.PAUSED)
        s.detail(f"status {task.status().value}")
        task.resume()
        self.wait_for_event("box", EventType.RESUMED)
        s.detail(f"status {task.status().value}")

        s.step(9, "Stopping it with SIGTERM, then deleting task and container   (Task.kill, wait, delete)")
        task.kill("TERM")
        s.detail(f"exit code {self.show_exit(task, service_out, 'box')}")
        task.delete()
        box.delete()

        s.step(10, "Importing an image made from that rootfs and running it   (import_images, oci.image_spec, "
                   "new_container(image=))")
        archive = testing.busybox_image_archive(os.path.join(self.root, "image.tar"), rootfs, "demo/busybox:latest",
                                                config={"Cmd": ["sh", "-c", _FROM_IMAGE], "WorkingDir": "/data"})
        image = client.import_images(archive)[0]
        s.detail(f"{image.name}: {human_bytes(image.size())} in two layers, unpacked into overlayfs")
        image_out = stdio.capture()
        with deferred_interrupts():
            boxed = client.new_container("from-image", oci.image_spec(image, hostname="from-image"), image=image)
            task = boxed.start(attach_stdio=image_out)
        code = self.show_exit(task, image_out, "from-image")
        s.detail(f"exit code {code}; deleting its task, the container (and its snapshot) and the image")
        task.delete()
        boxed.delete()
        client.remove_image(image.name)

    def _print_event(self, container_id: str, event_type: EventType, info: EventInfo) -> None:
        elapsed = time.monotonic() - self.screen.started
        self.screen.line(f"        event  +{elapsed:5.2f}s  {event_type.value:<12} {container_id}"
                         f"{describe_event(container_id, event_type, info)}")

    def wait_for_event(self, container_id: str, event_type: EventType, process_id: str | None = None) -> None:
        """Wait until that event (of the main process by default) was printed, so that lines stay in order."""
        with contextlib.suppress(TimeoutError):  # a broken daemon's missing event must not stop the demo
            self.events.wait_for(container_id, event_type, process_id or container_id, timeout=_EVENT_WAIT)

    def show_exit(self, proc: libcontainerd.Task | libcontainerd.Process, out: stdio.Capture,
                  container_id: str, process_id: str | None = None) -> int:
        """Wait for the exit, its output and its EXIT event (so that lines stay in order); show the output."""
        code = proc.wait().code
        out.wait(timeout=10)
        self.wait_for_event(container_id, EventType.EXIT, process_id)
        for text in out.stdout.decode(errors="replace").splitlines():
            self.screen.detail(f"| {text}")
        return code

    # -- cleanup ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove everything the demo made; safe at any point of the script, and more than once."""
        s = self.screen
        s.line()
        s.line("Cleaning up: containers, tasks, client, containerd, shims and directories ...")
        client, self.client = self.client, None
        if client is not None:
            try:
                for ctr in client.list_containers():
                    with contextlib.suppress(errdefs.NotFound):
                        ctr.task().force_delete()
                    ctr.delete()
            except errdefs.LibcontainerdError as exc:
                s.detail(f"(the client could not remove everything itself: {exc}; the daemon cleanup will)")
            client.close()
        daemon, self.daemon = self.daemon, None
        containerd_root = os.path.join(self.root, "containerd") if self.root else ""
        remaining: dict[int, list[str]] = {}
        if daemon is not None:
            testing.cleanup_root(daemon)
            remaining = testing.daemon_processes(daemon)
        elif containerd_root and os.path.exists(containerd_root):
            testing.cleanup_root(containerd_root)  # interrupted while the daemon was starting
        if self.root:
            if self.made_root:
                shutil.rmtree(self.root, ignore_errors=True)
            else:
                for name in ("rootfs", "state", "containerd", "image.tar"):
                    path = os.path.join(self.root, name)
                    if os.path.isdir(path):
                        shutil.rmtree(path, ignore_errors=True)
                    elif os.path.exists(path):
                        os.remove(path)
        if remaining:
            s.detail(f"processes still running: {sorted(remaining)}")
        elif self.made_root and os.path.exists(self.root):
            s.detail(f"could not remove {self.root}")
        else:
            s.detail("nothing left behind")


def run_demo(root: str | None, out: TextIO, *, pause_on: TextIO | None = None) -> int:
    """Run the demo, writing its narration to ``out``; returns the exit code (130 after Ctrl-C).

    Args:
        root: the directory to work under; None makes (and removes) a temporary one.
        out: where the step-by-step narration goes.
        pause_on: wait for a line from this stream before each step (for presenting); its end
            stops the pausing.

    Raises:
        errdefs.LibcontainerdError: a step failed (after everything was cleaned up).

    >>> run_demo(None, sys.stdout)  # doctest: +SKIP
    0
    """
    demo = _Demo(root, out, pause_on)
    interrupted = False
    try:
        demo.run()
    except KeyboardInterrupt:
        interrupted = True
        demo.screen.line()
        demo.screen.line("Interrupted.")
    finally:
        with no_interrupts():
            demo.cleanup()
    if interrupted:
        return 130
    elapsed = time.monotonic() - demo.screen.started
    demo.screen.line()
    demo.screen.line(f"Done in {elapsed:.1f} s. Next: `python -m libcontainerd --help`, or in Python:")
    demo.screen.line("    import libcontainerd; help(libcontainerd)")
    return 0

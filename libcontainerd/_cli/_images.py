"""The image commands of the command line: ``pull``, ``images``, ``rmi``, ``import``.

This module owns those subcommands and the pull progress display: on a terminal one line per
blob, redrawn in place (at most ten times a second); otherwise a quiet summary line per image.
Like the other commands it uses the public API only and writes to stdout/stderr through the
command line's helpers; errors become one line there.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import threading
import time
from typing import IO, Any

import libcontainerd
from libcontainerd import PullProgress

from ._context import PROG, Context, UsageError
from ._format import human_bytes, note, out, table
from ._registry import command
from ._signals import deferred_interrupts

__all__ = ["ProgressDisplay", "cmd_images", "cmd_import", "cmd_pull", "cmd_rmi"]

_KINDS = (("index", "index"), ("manifest", "manifest"), ("config", "config"), ("layer", "layer"),
          ("rootfs.diff", "layer"))
_REDRAW = 0.1


def _kind(media_type: str) -> str:
    for needle, kind in _KINDS:
        if needle in media_type:
            return kind
    return "blob"


class ProgressDisplay:
    """A ``progress=`` callback that draws one line per blob on a terminal, or nothing until :meth:`done`.

    >>> ProgressDisplay(io.StringIO(), tty=False).done("img", 1.0)  # doctest: +SKIP
    """

    def __init__(self, stream: IO[str], *, tty: bool) -> None:
        self._stream = stream
        self._tty = tty
        self._lock = threading.Lock()
        self._rows: dict[str, PullProgress] = {}
        self._drawn = 0
        self._last = 0.0

    def __call__(self, p: PullProgress) -> None:
        with self._lock:
            self._rows[p.digest] = p
            now = time.monotonic()
            if self._tty and (now - self._last >= _REDRAW or p.status in ("done", "exists")):
                self._last = now
                self._draw()

    def _line(self, p: PullProgress) -> str:
        short = p.digest.split(":", 1)[-1][:12]
        if p.status == "downloading" and p.total:
            width = 24
            filled = int(width * p.offset / p.total)
            bar = "[" + "=" * filled + ">" * (filled < width) + " " * (width - filled - 1) + "]"
            return f"{_kind(p.media_type):<8} {short}  {bar} {human_bytes(p.offset)}/{human_bytes(p.total)}"
        return f"{_kind(p.media_type):<8} {short}  {p.status:<11} {human_bytes(p.total)}"

    def _draw(self) -> None:
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")  # back to the first line drawn
        lines = [self._line(p) for p in self._rows.values()]
        out.extend(f"\x1b[2K{line}\n" for line in lines)
        self._stream.write("".join(out))
        self._stream.flush()
        self._drawn = len(lines)

    def done(self, name: str, seconds: float) -> None:
        """The closing line: what was fetched and what was there already."""
        with self._lock:
            if self._tty:
                self._draw()
            fetched = [p for p in self._rows.values() if p.status == "done"]
            present = [p for p in self._rows.values() if p.status == "exists"]
        moved = sum(p.total for p in fetched)
        self._stream.write(f"{name}: {len(fetched)} blobs fetched ({human_bytes(moved)}), "
                           f"{len(present)} already present, {seconds:.1f}s\n")
        self._stream.flush()


def _auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep:
        if not sys.stdin.isatty():
            raise UsageError("--user USER needs :PASSWORD when stdin is not a terminal")
        password = getpass.getpass(f"password for {user}: ")
    return user, password


def _pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain-http", action="store_true", help="talk http to the registry, not https")
    p.add_argument("--platform", metavar="OS/ARCH", help="pick this platform from an index (default: this machine's)")
    p.add_argument("--user", metavar="USER[:PASSWORD]",
                   help="registry credentials (default: $DOCKER_CONFIG/config.json's); asks for a missing password")
    p.add_argument("--ca-file", metavar="PEM", help="trust this CA for the registry's TLS certificate")
    p.add_argument("--snapshotter", metavar="NAME", help="unpack into this snapshotter (default overlayfs)")
    p.add_argument("--no-unpack", action="store_true", help="fetch the content only")
    p.add_argument("ref", metavar="REF", help="host[:port]/repo[:tag|@digest]; without a host, Docker Hub")


@command("pull", "fetch an image from a registry and unpack it",
         f"examples:\n  {PROG} pull --plain-http 127.0.0.1:5000/busybox:latest\n"
         f"  {PROG} pull --ca-file ca.pem --user alice registry.example.com/team/app:1.2\n"
         f"  {PROG} pull --platform linux/arm64 --no-unpack busybox",
         arguments=_pull_arguments)
def cmd_pull(args: argparse.Namespace, ctx: Context) -> int:
    display = ProgressDisplay(sys.stderr, tty=sys.stderr.isatty())
    start = time.monotonic()
    with ctx.client() as client, deferred_interrupts():
        image = client.pull(args.ref, platform=args.platform, unpack=not args.no_unpack, snapshotter=args.snapshotter,
                            plain_http=args.plain_http, auth=_auth(args.user), ca_file=args.ca_file,
                            progress=display)
    display.done(image.name, time.monotonic() - start)
    out(f"{image.name} {image.target.digest}")
    return 0


def _images_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print the names only")
    p.add_argument("--snapshotter", metavar="NAME", help="say whether unpacked in this snapshotter (default overlayfs)")


@command("images", "list the images of the namespace", f"examples:\n  {PROG} images\n  {PROG} images -q",
         arguments=_images_arguments)
def cmd_images(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        images = client.list_images()
        if args.quiet:
            out("\n".join(i.name for i in images) if images else "")
            return 0
        rows = []
        for image in images:
            try:
                size = human_bytes(image.size())
                unpacked = "yes" if image.is_unpacked(args.snapshotter) else "no"
            except libcontainerd.errdefs.LibcontainerdError:
                size, unpacked = "-", "-"  # content of another platform only, or partly collected
            rows.append((image.name, image.target.digest.split(":", 1)[-1][:12], size, unpacked))
    out(table(("NAME", "DIGEST", "SIZE", "UNPACKED"), rows, right=(2,)))
    return 0


def _rmi_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sync", action="store_true", help="wait for containerd's garbage collector to free the content")
    p.add_argument("names", metavar="NAME", nargs="+", help="the images")


@command("rmi", "remove images (containerd's garbage collector frees their content)",
         f"example:\n  {PROG} rmi --sync 127.0.0.1:5000/busybox:latest", arguments=_rmi_arguments)
def cmd_rmi(args: argparse.Namespace, ctx: Context) -> int:
    failed = 0
    with ctx.client() as client:
        for name in args.names:
            try:
                client.remove_image(name, sync=args.sync)
                out(name)
            except libcontainerd.errdefs.LibcontainerdError as exc:
                note(f"{name}: {exc}")
                failed += 1
    return 1 if failed else 0


def _import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshotter", metavar="NAME", help="unpack into this snapshotter (default overlayfs)")
    p.add_argument("--no-unpack", action="store_true", help="store the content only")
    p.add_argument("file", metavar="FILE", help="a docker save or OCI layout archive (- for stdin)")


@command("import", "import images from a docker save or OCI layout archive",
         f"examples:\n  {PROG} import busybox.tar\n  docker save busybox | {PROG} import -",
         arguments=_import_arguments)
def cmd_import(args: argparse.Namespace, ctx: Context) -> int:
    if args.file != "-" and not os.path.isfile(args.file):
        raise UsageError(f"{args.file}: no such file")
    with ctx.client() as client, deferred_interrupts():
        source: Any = sys.stdin.buffer if args.file == "-" else args.file
        images = client.import_images(source, unpack=not args.no_unpack, snapshotter=args.snapshotter)
    for image in images:
        out(f"{image.name} {image.target.digest}")
    if not images:
        note("the archive names no image")
    return 0

"""safe_extract, the checkpoint archive reader, on archives built here: what it extracts, what it refuses."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from libcontainerd import errdefs
from libcontainerd.remote._checkpoint import safe_extract


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
            mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, data


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    buf.seek(0)
    return buf


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def test_files_dirs_and_links_inside_are_extracted(dest: Path) -> None:
    names = safe_extract(_tar(
        _member("inventory.img", data=b"criu inventory"),
        _member("sub", tarfile.DIRTYPE, mode=0o755),
        _member("sub/./pages-1.img", data=b"pages"),
        _member("sub/link", tarfile.SYMTYPE, linkname="../inventory.img"),
        _member("hard", tarfile.LNKTYPE, linkname="sub/pages-1.img"),
    ), str(dest))
    assert names == ["inventory.img", "sub", "sub/pages-1.img", "sub/link", "hard"]  # normalised, in order
    assert (dest / "sub" / "link").read_bytes() == b"criu inventory"
    assert os.stat(dest / "hard").st_ino == os.stat(dest / "sub" / "pages-1.img").st_ino


def test_setuid_and_setgid_bits_are_dropped(dest: Path) -> None:
    safe_extract(_tar(_member("tool", data=b"#!/bin/sh\n", mode=0o6755)), str(dest))
    assert stat.S_IMODE(os.stat(dest / "tool").st_mode) == 0o755


def test_a_compressed_stream_is_read_too(dest: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info, data = _member("a.img", data=b"x")
        info.size = 1
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    assert safe_extract(buf, str(dest)) == ["a.img"]


@pytest.mark.parametrize("hostile, message", [
    (_member("/abs/escaped", data=b"x"), "path escapes"),
    (_member("../escaped", data=b"x"), "path escapes"),
    (_member("sub/../../escaped", data=b"x"), "path escapes"),
    (_member("evil", tarfile.SYMTYPE, linkname="../../"), "leads outside"),
    (_member("evil", tarfile.SYMTYPE, linkname="/etc/passwd"), "leads outside"),
    (_member("evil", tarfile.LNKTYPE, linkname="../escaped"), "hard link"),
    (_member("evil", tarfile.LNKTYPE, linkname="/etc/passwd"), "hard link"),
    (_member("evil", tarfile.CHRTYPE), "device or FIFO"),
    (_member("evil", tarfile.BLKTYPE), "device or FIFO"),
    (_member("evil", tarfile.FIFOTYPE), "device or FIFO"),
], ids=["absolute", "dotdot", "inner-dotdot", "symlink-up", "symlink-absolute", "hardlink-up",
        "hardlink-absolute", "char-device", "block-device", "fifo"])
def test_hostile_members_are_refused_and_nothing_is_written_outside(tmp_path: Path, dest: Path, hostile,
                                                                    message: str) -> None:
    archive = _tar(_member("fine.img", data=b"ok"), hostile, _member("after.img", data=b"late"))
    with pytest.raises(errdefs.InvalidParameter, match=message):
        safe_extract(archive, str(dest))
    assert _tree(tmp_path) == ["out", "out/fine.img"]  # stopped where the hostile member stood


def test_a_write_through_a_link_that_leads_outside_is_refused(tmp_path: Path, dest: Path) -> None:
    # The archive may not make such a link (see above), but dest may hold one already: a file
    # written under it would land outside.
    os.symlink("..", dest / "up")
    with pytest.raises(errdefs.InvalidParameter, match="through a link outside"):
        safe_extract(_tar(_member("up/escaped", data=b"x")), str(dest))
    assert not (tmp_path / "escaped").exists()

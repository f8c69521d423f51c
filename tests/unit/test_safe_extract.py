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

from ..helpers import tar_bytes, tar_member


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    return io.BytesIO(tar_bytes(*members))


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def test_files_dirs_and_links_inside_are_extracted(dest: Path) -> None:
    names = safe_extract(_tar(
        tar_member("inventory.img", data=b"criu inventory"),
        tar_member("sub", tarfile.DIRTYPE, mode=0o755),
        tar_member("sub/./pages-1.img", data=b"pages"),
        tar_member("sub/link", tarfile.SYMTYPE, linkname="../inventory.img"),
        tar_member("hard", tarfile.LNKTYPE, linkname="sub/pages-1.img"),
    ), str(dest))
    assert names == ["inventory.img", "sub", "sub/pages-1.img", "sub/link", "hard"]  # normalised, in order
    assert (dest / "sub" / "link").read_bytes() == b"criu inventory"
    assert os.stat(dest / "hard").st_ino == os.stat(dest / "sub" / "pages-1.img").st_ino


def test_setuid_and_setgid_bits_are_dropped(dest: Path) -> None:
    safe_extract(_tar(tar_member("tool", data=b"#!/bin/sh\n", mode=0o6755)), str(dest))
    assert stat.S_IMODE(os.stat(dest / "tool").st_mode) == 0o755


def test_a_compressed_stream_is_read_too(dest: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("a.img")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    assert safe_extract(buf, str(dest)) == ["a.img"]


@pytest.mark.parametrize("hostile, message", [
    (tar_member("/abs/escaped", data=b"x"), "path escapes"),
    (tar_member("../escaped", data=b"x"), "path escapes"),
    (tar_member("sub/../../escaped", data=b"x"), "path escapes"),
    (tar_member("evil", tarfile.SYMTYPE, linkname="../../"), "leads outside"),
    (tar_member("evil", tarfile.SYMTYPE, linkname="/etc/passwd"), "leads outside"),
    (tar_member("evil", tarfile.LNKTYPE, linkname="../escaped"), "hard link"),
    (tar_member("evil", tarfile.LNKTYPE, linkname="/etc/passwd"), "hard link"),
    (tar_member("evil", tarfile.CHRTYPE), "device or FIFO"),
    (tar_member("evil", tarfile.BLKTYPE), "device or FIFO"),
    (tar_member("evil", tarfile.FIFOTYPE), "device or FIFO"),
], ids=["absolute", "dotdot", "inner-dotdot", "symlink-up", "symlink-absolute", "hardlink-up",
        "hardlink-absolute", "char-device", "block-device", "fifo"])
def test_hostile_members_are_refused_and_nothing_is_written_outside(tmp_path: Path, dest: Path, hostile,
                                                                    message: str) -> None:
    archive = _tar(tar_member("fine.img", data=b"ok"), hostile, tar_member("after.img", data=b"late"))
    with pytest.raises(errdefs.InvalidParameter, match=message):
        safe_extract(archive, str(dest))
    assert _tree(tmp_path) == ["out", "out/fine.img"]  # stopped where the hostile member stood


def test_a_write_through_a_link_that_leads_outside_is_refused(tmp_path: Path, dest: Path) -> None:
    # The archive may not make such a link (see above), but dest may hold one already: a file
    # written under it would land outside.
    os.symlink("..", dest / "up")
    with pytest.raises(errdefs.InvalidParameter, match="through a link outside"):
        safe_extract(_tar(tar_member("up/escaped", data=b"x")), str(dest))
    assert not (tmp_path / "escaped").exists()

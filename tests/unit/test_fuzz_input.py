"""Bad input, property-tested: every one gets a typed ``errdefs`` error before any RPC and leaves nothing.

"Before any RPC" is checked with a client pointed at an address where nothing serves: a call that got
as far as the wire would fail with ``Unavailable``, so an input that can be judged locally must fail
with ``InvalidParameter`` (or another local error) instead. "Leaves nothing" is checked by listing
the state dir and its parent before and after. No daemon is needed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import libcontainerd
from libcontainerd import errdefs, oci
from libcontainerd.remote._bundle import BUNDLE_LABEL
from libcontainerd.remote._container import Container
from libcontainerd.remote._process import Task

from ..helpers import listing

ID_RULE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*\Z")
#: examples per property; raise it for a longer hunt (e.g. LIBCONTAINERD_FUZZ_EXAMPLES=2000)
EXAMPLES = int(os.environ.get("LIBCONTAINERD_FUZZ_EXAMPLES", "80"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Dead:
    """A client of a socket nobody serves, its state dir, a fake running task, and the 'nothing made' check."""

    def __init__(self) -> None:
        self.parent = tempfile.mkdtemp(prefix="lcd-fuzz-")
        self.state_dir = os.path.join(self.parent, "state")
        self.client = libcontainerd.new_client(os.path.join(self.parent, "nobody.sock"), self.state_dir, "fuzz",
                                               None, timeout=5)
        self.spec = oci.default_spec(os.path.join(self.parent, "rootfs"), ["true"])
        bundle = os.path.join(self.state_dir, "ctr")
        os.mkdir(bundle)
        session = self.client._session
        self.container = Container(session, "ctr", spec=self.spec, labels={BUNDLE_LABEL: bundle},
                                   runtime="io.containerd.runc.v2")
        self.task = Task(session, self.container, 4242)
        self.before = self.snapshot()

    def snapshot(self) -> tuple[list[str], list[str]]:
        return listing(self.state_dir), sorted(os.listdir(self.parent))

    def assert_untouched(self) -> None:
        assert self.snapshot() == self.before

    def close(self) -> None:
        self.client.close()
        shutil.rmtree(self.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def dead() -> Iterator[Dead]:
    d = Dead()
    try:
        yield d
    finally:
        d.close()


# -- ids ----------------------------------------------------------------------------------------------

NASTY_IDS = ["", ".", "..", "../x", "../../etc/passwd", "a/../../b", "/etc", "x/y", "x\x00y", "\x00", "a" * 77,
             "é", "\uff41\uff42\uff43",
             "x\n", "-x", "x-", "a..b", "a__b", " x", "x ", "*", "~", "$HOME", "a\\b", "😀", "\u202e"]


@given(st.one_of(st.text(max_size=90), st.sampled_from(NASTY_IDS), st.from_regex(ID_RULE, fullmatch=True)))
@SETTINGS
@example("a" * 76)
def test_container_ids_are_judged_locally(dead: Dead, cid: str) -> None:
    valid = bool(ID_RULE.match(cid)) and len(cid) <= 76
    expected = errdefs.Unavailable if valid else errdefs.InvalidParameter
    with pytest.raises(expected):
        dead.client.new_container(cid, dead.spec)
    with pytest.raises(expected):
        dead.client.load_container(cid)
    with pytest.raises(expected):
        dead.client.replace_container(cid, dead.spec)
    dead.assert_untouched()


@given(st.one_of(st.text(max_size=90), st.sampled_from(NASTY_IDS)))
@SETTINGS
def test_exec_ids_are_judged_locally(dead: Dead, eid: str) -> None:
    valid = bool(ID_RULE.match(eid)) and len(eid) <= 76
    with pytest.raises(errdefs.Unavailable if valid else errdefs.InvalidParameter):
        dead.task.exec(eid, oci.process_spec(["true"]), attach_stdio=lambda dio: dio)
    dead.assert_untouched()


@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8), st.lists(st.text(max_size=3))))
@SETTINGS
def test_ids_of_the_wrong_type(dead: Dead, cid: Any) -> None:
    with pytest.raises(errdefs.InvalidParameter):
        dead.client.new_container(cid, dead.spec)
    with pytest.raises(errdefs.InvalidParameter):
        dead.task.exec(cid, oci.process_spec(["true"]))
    dead.assert_untouched()


# -- specs --------------------------------------------------------------------------------------------

NON_JSON = st.one_of(
    st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.binary(min_size=1, max_size=4),
    st.sets(st.integers(), min_size=1, max_size=3), st.just(object()), st.just(1 + 2j), st.just(b"\x00"),
)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children,
                                                                                max_size=3)),
    max_leaves=10,
)
ANYTHING = st.recursive(
    st.one_of(JSONISH, NON_JSON),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children,
                                                                                max_size=3)),
    max_leaves=10,
)
SPEC_KEYS = ["process", "root", "linux", "mounts", "annotations", "hostname", "ociVersion"]
PROCESS_KEYS = ["args", "env", "cwd", "terminal", "user", "capabilities", "rlimits", "noNewPrivileges"]
LINUX_KEYS = ["namespaces", "uidMappings", "gidMappings", "resources", "maskedPaths", "cgroupsPath"]


@st.composite
def broken_specs(draw: st.DrawFn) -> Any:
    """A good default spec with some parts replaced by garbage (or removed)."""
    spec = oci.default_spec("/nonexistent/rootfs", ["true"])
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["spec", "process", "linux", "user", "namespace", "mapping"]))
        value = draw(ANYTHING)
        if where == "spec":
            key = draw(st.sampled_from(SPEC_KEYS))
            if draw(st.booleans()):
                spec.pop(key, None)
            else:
                spec[key] = value
        elif isinstance(spec.get("process"), dict) and where in ("process", "user"):
            if where == "user":
                spec["process"]["user"] = {"uid": value, "gid": draw(ANYTHING)}
            else:
                spec["process"][draw(st.sampled_from(PROCESS_KEYS))] = value
        elif isinstance(spec.get("linux"), dict):
            if where == "namespace":
                spec["linux"]["namespaces"] = [{"type": "user"}, value]
            elif where == "mapping":
                spec["linux"]["namespaces"] = [{"type": "user"}]
                spec["linux"][draw(st.sampled_from(["uidMappings", "gidMappings"]))] = [value]
            else:
                spec["linux"][draw(st.sampled_from(LINUX_KEYS))] = value
    return spec


@given(st.one_of(broken_specs(), ANYTHING))
@SETTINGS
@example({})
@example({"process": None})
@example({"process": {"args": []}})
@example({"process": {"args": ["sh"], "cwd": "relative"}})
@example({"process": {"args": ["sh"], "user": {"uid": -1, "gid": 0}}})
@example({"process": {"args": ["a\x00b"]}})
@example({"process": {"args": ["sh"]}, "annotations": {"x": math.nan}})
@example({"process": {"args": ["sh"]},
          "linux": {"namespaces": [{"type": "user"}], "uidMappings": [{"containerID": "x"}]}})
@example({"process": {"args": ["sh"]}, "linux": {"namespaces": [{"type": "user"}, 7]}})
@example({"process": {"args": ["sh"], "user": {"uid": 2**70, "gid": 0}}, "linux": {"namespaces": [{"type": "user"}]}})
def test_malformed_specs_are_judged_locally(dead: Dead, spec: Any) -> None:
    try:
        dead.client.new_container("ctr-new", spec)
    except errdefs.Unavailable:
        pass  # a spec good enough to send: it reached the (absent) wire and its bundle was removed again
    except errdefs.InvalidParameter:
        pass
    dead.assert_untouched()


@given(st.one_of(broken_specs().map(lambda s: s.get("process") if isinstance(s, dict) else s), ANYTHING))
@SETTINGS
def test_malformed_process_specs_are_judged_locally(dead: Dead, process: Any) -> None:
    try:
        dead.task.exec("exec-1", process, attach_stdio=lambda dio: dio)
    except (errdefs.Unavailable, errdefs.InvalidParameter):
        pass
    dead.assert_untouched()


@given(ANYTHING)
@SETTINGS
def test_resources_that_are_not_json(dead: Dead, resources: Any) -> None:
    try:
        dead.task.update_resources(resources)
    except (errdefs.Unavailable, errdefs.InvalidParameter):
        pass


def test_runtime_options_and_labels_are_judged_locally(dead: Dead) -> None:
    for options in ({"no_such_option": 1}, {"binary_name": 5}, 42, "runc"):
        with pytest.raises(errdefs.InvalidParameter):
            dead.client.new_container("ctr-new", dead.spec, runtime_options=options)  # type: ignore[arg-type]
    for labels in ({"a": 1}, {1: "a"}):
        with pytest.raises(errdefs.InvalidParameter):
            dead.client.new_container("ctr-new", dead.spec, labels=labels)  # type: ignore[arg-type]
    for shim in ("", None, 5):
        with pytest.raises(errdefs.InvalidParameter):
            dead.client.new_container("ctr-new", dead.spec, shim)  # type: ignore[arg-type]
    dead.assert_untouched()


# -- signals and terminal sizes -------------------------------------------------------------------------


@given(st.one_of(st.integers(), st.text(max_size=12), st.floats(), st.booleans(), st.none(), st.binary(max_size=4)))
@SETTINGS
@example(0)
@example(65)
@example(-9)
@example(2**64)
@example("SIGNOPE")
@example("")
@example("0")
@example("99")
@example("KILL\x00")
@example("\u00b2")
@example("\u0663")
@example(True)
def test_bad_signals_are_judged_locally(dead: Dead, sig: Any) -> None:
    try:
        dead.task.kill(sig)
    except errdefs.Unavailable:
        # Only a real signal may reach the wire: 1..64, a name, or its number in ASCII digits.
        assert isinstance(sig, (int, str)) and not isinstance(sig, bool)
        assert not isinstance(sig, str) or sig.isascii()
    except errdefs.InvalidParameter:
        pass


@given(st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.text(max_size=3)),
       st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.text(max_size=3)))
@SETTINGS
@example(-1, 10)
@example(10, -1)
@example(2**16, 10)
@example(10, 2**31)
@example(2**64, 2**64)
def test_terminal_sizes_are_judged_locally(dead: Dead, width: Any, height: Any) -> None:
    ok = all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF for v in (width, height))
    with pytest.raises(errdefs.Unavailable if ok else errdefs.InvalidParameter):
        dead.task.resize(width, height)


# -- checkpoint dirs --------------------------------------------------------------------------------------


def test_checkpoint_dirs_that_are_files_or_missing(dead: Dead) -> None:
    a_file = os.path.join(dead.parent, "a-file")
    with open(a_file, "w") as f:
        f.write("not a dir")
    try:
        before = dead.snapshot()
        for bad in (a_file, os.path.join(dead.parent, "missing"), os.path.join(a_file, "under-a-file"), "", 5, None):
            if bad is not None:
                with pytest.raises(errdefs.InvalidParameter):
                    dead.container.start(checkpoint_dir=bad)  # type: ignore[arg-type]
            if bad not in (None, os.path.join(dead.parent, "missing")):
                with pytest.raises(errdefs.InvalidParameter):
                    dead.task.create_checkpoint(bad)  # type: ignore[arg-type]
        assert dead.snapshot() == before
    finally:
        os.unlink(a_file)


# -- state dirs ----------------------------------------------------------------------------------------------


def _new(state_dir: Any) -> None:
    libcontainerd.new_client("/nonexistent/nobody.sock", state_dir, "fuzz", None).close()


def test_state_dir_that_is_a_symlink_a_file_or_under_a_file() -> None:
    parent = tempfile.mkdtemp(prefix="lcd-fuzz-sd-")
    try:
        real = os.path.join(parent, "real")
        os.mkdir(real)
        os.symlink(real, os.path.join(parent, "link"))
        with open(os.path.join(parent, "file"), "w"):
            pass
        os.symlink(os.path.join(parent, "nowhere"), os.path.join(parent, "dangling"))
        before = listing(parent)
        for bad in ("link", "dangling", "file", "file/sub", "file/sub/deeper"):
            with pytest.raises(errdefs.LibcontainerdError) as info:
                _new(os.path.join(parent, bad))
            assert isinstance(info.value, (errdefs.InvalidParameter, errdefs.Forbidden)), info.value
        for bad in ("", "x\x00y", 5, None):
            with pytest.raises(errdefs.InvalidParameter):
                _new(bad)
        assert listing(parent) == before
    finally:
        shutil.rmtree(parent)


def test_state_dir_that_is_not_writable() -> None:
    """As root, permission bits do not stop us: a read-only bind mount does."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a read-only bind mount")
    parent = tempfile.mkdtemp(prefix="lcd-fuzz-ro-")
    ro = os.path.join(parent, "ro")
    os.mkdir(ro)
    mounted = False
    try:
        subprocess.run(["mount", "--bind", ro, ro], check=True)
        mounted = True
        subprocess.run(["mount", "-o", "remount,ro,bind", ro], check=True)
        os.chmod(parent, 0o755)
        for bad in (ro, os.path.join(ro, "sub")):
            with pytest.raises((errdefs.Forbidden, errdefs.InvalidParameter)):
                _new(bad)
        assert os.listdir(ro) == []
        assert stat.S_ISDIR(os.stat(ro).st_mode)
    finally:
        if mounted:
            subprocess.run(["umount", ro], check=True)
        shutil.rmtree(parent)


@given(st.text(max_size=20))
@SETTINGS
def test_namespaces_are_judged_locally(ns: str) -> None:
    parent = tempfile.mkdtemp(prefix="lcd-fuzz-ns-")
    try:
        valid = bool(ID_RULE.match(ns)) and len(ns) <= 76
        if valid:
            libcontainerd.new_client("/nonexistent/nobody.sock", os.path.join(parent, "s"), ns, None).close()
        else:
            with pytest.raises(errdefs.InvalidParameter):
                libcontainerd.new_client("/nonexistent/nobody.sock", os.path.join(parent, "s"), ns, None)
            assert os.listdir(parent) == []
    finally:
        shutil.rmtree(parent)


@given(st.integers(min_value=2**32), st.booleans())
@SETTINGS
def test_uids_beyond_uid_t_are_judged_locally(dead: Dead, uid: int, as_gid: bool) -> None:
    spec = oci.default_spec("/nonexistent/rootfs", ["true"])
    spec["process"]["user"]["gid" if as_gid else "uid"] = uid
    with pytest.raises(errdefs.InvalidParameter):
        dead.client.new_container("ctr-new", spec)
    with pytest.raises(errdefs.InvalidParameter):
        dead.task.exec("exec-1", spec["process"])
    dead.assert_untouched()

"""The documentation's examples run, as a user would paste them, against real daemons.

Every ``.. code-block:: python`` and ``.. code-block:: pycon`` of ``docs/*.rst`` and every
```` ```python```` block of ``README.md`` is executed here, so that the docs cannot drift from the
SDK. :data:`PAGES` says, per page, how its blocks run and how many there are at least (so that a
parsing bug cannot silently run nothing); a page that is not listed must have no Python block.

How blocks run:

* ``"page order"``: the blocks run one after the other in one namespace, as when pasted one after
  the other into one interpreter (quickstart, recipes).
* ``"standalone"``: each block runs in a fresh namespace holding only :attr:`Page.given` (named in
  the page's prose as what its examples assume), so that each must stand alone.
* A ``pycon`` block is a prompt session: each ``>>>`` statement runs in ``single`` mode and what it
  prints must match the page's output, where :func:`_normalise` makes machine-specific values
  equal (every number -- pids, sizes, times -- and the containerd release in ``Version(...)``).
* A block preceded by the rst comment ``.. docs-test: not run: <reason>`` (``<!-- docs-test: not
  run: <reason> -->`` in Markdown) is not run; :data:`PAGES` names each such block's reason, so
  that a block cannot be skipped without saying so twice. Shell sessions and output are shown with
  ``console``, ``sh`` or ``text`` blocks and are not Python.

What the harness changes, and nothing else (:func:`_redirect`): absolute paths in string literals
under ``/var/``, ``/run/``, ``/tmp/``, ``/srv/`` and ``/etc/ssl/`` move under a fresh fake root
(a user writes ``/var/lib/myservice``; the test must not), ``/run/containerd/containerd.sock``
becomes a private containerd started for the page, the registry hosts of the examples are local
``docker-registry`` processes holding the images the examples pull (``registry.example.com`` and
``10.0.0.5:5000`` the TLS one, whose CA is ``/etc/ssl/*-ca.pem`` and, through ``SSL_CERT_FILE``,
trusted; ``127.0.0.1:5000`` the plain one), and ``docker save`` archives are put where the examples
read them (``/srv/images/``). Every containerd an example starts with ``supervisor.start`` and
every client it makes with ``new_client`` is recorded; after each page the harness removes the
containers left in those clients' namespaces (each page says which it leaves on purpose, and
anything else fails the page), closes the clients, stops and removes the daemons, and checks that
no thread the page started is still alive.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

import libcontainerd
from libcontainerd import _testing_images as ti
from libcontainerd import oci, supervisor, testing

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = ("python", "pycon")
NOT_RUN = re.compile(r"^\s*(?:\.\.|<!--)\s*docs-test:\s*not run:\s*(?P<reason>.+?)\s*(?:-->)?\s*$")


@attrs.frozen
class Page:
    mode: str  # "page order" or "standalone"
    min_blocks: int  # Python blocks that must be found and run, at least
    given: tuple[str, ...] = ()  # names a standalone block gets from the harness (the page says it assumes them)
    not_run: tuple[str, ...] = ()  # the reasons of the blocks marked "docs-test: not run"
    left_running: frozenset[str] = frozenset()  # containers the page leaves on purpose (a service's)
    registry: bool = False  # the page pulls or imports images
    criu: bool = False  # the page checkpoints


#: The reason the raw-terminal recipe gives for not running with the rest of its page; it runs in a pty instead
#: (:func:`test_the_terminal_recipe_runs_in_a_pty`).
TERMINAL_RECIPE = "needs your terminal: runs in a pty in test_docs"

PAGES = {
    "README.md": Page("standalone", 1),
    "docs/index.rst": Page("standalone", 1),
    "docs/quickstart.rst": Page("page order", 3),
    "docs/concepts.rst": Page("standalone", 2, given=("client", "task")),
    "docs/images.rst": Page("standalone", 2, given=("client",), registry=True),
    "docs/recipes.rst": Page("page order", 12, not_run=(TERMINAL_RECIPE,), left_running=frozenset({"web"}),
                             registry=True, criu=True),
}


@attrs.frozen
class Block:
    page: str
    lineno: int  # of the block's first line of code in the page
    language: str
    source: str
    not_run: str | None


def _not_run_reason(lines: list[str], i: int) -> str | None:
    """The reason of a not-run marker on the last non-blank line before line ``i``, if it is one."""
    for line in reversed(lines[:i]):
        if line.strip():
            m = NOT_RUN.match(line)
            return m.group("reason") if m else None
    return None


def _rst_blocks(page: str, text: str) -> Iterator[Block]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)\.\. code-block::\s*(\S+)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, language = len(m.group(1)), m.group(2)
        not_run = _not_run_reason(lines, i)
        i += 1
        while i < len(lines) and re.match(r"^\s+:\w[\w-]*:", lines[i]):  # the directive's options
            i += 1
        body: list[str] = []
        start = i + 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        while body and not body[0].strip():
            body.pop(0)
            start += 1
        yield Block(page, start, language, _dedent(body), not_run)


def _md_blocks(page: str, text: str) -> Iterator[Block]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        not_run = _not_run_reason(lines, i)
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        yield Block(page, i + 2, m.group(1), "\n".join(lines[i + 1:j]) + "\n",
                    not_run)
        i = j + 1


def _dedent(body: list[str]) -> str:
    while body and not body[-1].strip():
        body.pop()
    margin = min(len(line) - len(line.lstrip()) for line in body if line.strip())
    return "\n".join(line[margin:] for line in body) + "\n"


def blocks_of(page: str) -> list[Block]:
    with open(os.path.join(CHECKOUT, page), encoding="utf-8") as f:
        text = f.read()
    found = _md_blocks(page, text) if page.endswith(".md") else _rst_blocks(page, text)
    return [b for b in found if b.language in PYTHON]


def _all_pages() -> list[str]:
    docs = sorted(f"docs/{name}" for name in os.listdir(os.path.join(CHECKOUT, "docs")) if name.endswith(".rst"))
    return ["README.md", *docs]


# -- what the harness substitutes ---------------------------------------------------------------------------

@attrs.define
class Stage:
    """Where a page runs: its fake root, its containerd, its registry; what its examples made."""

    root: str
    sock: str
    registry: ti.Registries | None = None
    daemons: list[supervisor.Daemon] = attrs.Factory(list)
    clients: list[libcontainerd.Client] = attrs.Factory(list)


def _redirect(source: str, stage: Stage) -> str:
    """The example's source with the substitutions of the module docstring applied."""
    table = {"/run/containerd/containerd.sock": stage.sock}
    if stage.registry is not None:
        table.update({"/etc/ssl/team-ca.pem": stage.registry.ca_file, "/etc/ssl/private-ca.pem": stage.registry.ca_file,
                      "registry.example.com": stage.registry.tls.address, "10.0.0.5:5000": stage.registry.tls.address,
                      "127.0.0.1:5000": stage.registry.plain.address})
    for n, what in enumerate(table):
        source = source.replace(what, f"\0{n}\0")
    source = re.sub(r"""(?<=["'])(?=/(?:var|run|tmp|srv|etc/ssl)/)""", stage.root, source)
    for n, replacement in enumerate(table.values()):
        source = source.replace(f"\0{n}\0", replacement)
    return source


def _normalise(text: str, stage: Stage) -> str:
    """Output with what differs between machines and runs made equal (see the module docstring)."""
    text = text.replace(stage.root, "")
    text = re.sub(r"Version\(version='[^']*', revision='[^']*'\)", "Version(...)", text)
    return re.sub(r"\d+", "0", text)


def _run_block(block: Block, namespace: dict[str, Any], stage: Stage) -> None:
    source = _redirect(block.source, stage)
    name = f"{block.page}:{block.lineno}"
    if block.language == "python":
        exec(compile("\n" * (block.lineno - 1) + source, block.page, "exec"), namespace)
        return
    checker = doctest.OutputChecker()
    for example in doctest.DocTestParser().get_examples(source):
        assert example.exc_msg is None, f"{name}: an example that shows an exception is not supported here"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile("\n" * (block.lineno + example.lineno - 1) + example.source, block.page, "single"),
                 namespace)
        want, got = _normalise(example.want, stage), _normalise(out.getvalue(), stage)
        assert checker.check_output(want, got, doctest.ELLIPSIS), (
            f"{block.page}, line {block.lineno + example.lineno}: {example.source.strip()}\n"
            f"the page shows:\n{example.want}it printed:\n{out.getvalue()}")


# -- the tests -------------------------------------------------------------------------------------------------

def test_every_page_with_python_blocks_is_run() -> None:
    """A new page with Python blocks, or a block skipped without saying why, fails here."""
    for page in _all_pages():
        blocks = blocks_of(page)
        if page not in PAGES:
            assert not blocks, f"{page} has Python blocks but is not in test_docs.PAGES"
            continue
        assert len(blocks) >= PAGES[page].min_blocks, (page, len(blocks))
        assert tuple(b.not_run for b in blocks if b.not_run) == PAGES[page].not_run, page


def test_the_parser_finds_blocks_and_markers() -> None:
    rst = ("Intro\n\n.. code-block:: python\n   :caption: x\n\n   a = 1\n   if a:\n\n       b = 2\n\nText\n\n"
           ".. docs-test: not run: needs a terminal\n\n.. code-block:: pycon\n\n   >>> 1\n   1\n\n"
           ".. code-block:: console\n\n   $ ls\n")
    found = list(_rst_blocks("x.rst", rst))
    assert [(b.language, b.lineno, b.source, b.not_run) for b in found] == [
        ("python", 6, "a = 1\nif a:\n\n    b = 2\n", None),
        ("pycon", 17, ">>> 1\n1\n", "needs a terminal"),
        ("console", 22, "$ ls\n", None),
    ]
    md = "# T\n\n<!-- docs-test: not run: output -->\n```python\nx = 1\n```\n\n```console\n$ ls\n```\n"
    assert [(b.language, b.lineno, b.source, b.not_run) for b in _md_blocks("x.md", md)] == [
        ("python", 5, "x = 1\n", "output"), ("console", 9, "$ ls\n", None)]


def test_redirect_moves_paths_under_the_fake_root() -> None:
    stage = Stage(root="/tmp/fake", sock="/tmp/d/containerd.sock")
    src = ('supervisor.start("/var/lib/x")\nnew_client("/run/containerd/containerd.sock", \'/run/svc\')\n'
           'open(f"/tmp/a/{n}")\nprint("usr/bin", "/usr/bin")\n')
    assert _redirect(src, stage) == (
        'supervisor.start("/tmp/fake/var/lib/x")\nnew_client("/tmp/d/containerd.sock", \'/tmp/fake/run/svc\')\n'
        'open(f"/tmp/fake/tmp/a/{n}")\nprint("usr/bin", "/usr/bin")\n')
    assert _normalise("<Daemon pid=12 address=/tmp/fake/tmp/q/state/containerd.sock restarts=0>", stage) == \
        "<Daemon pid=0 address=/tmp/q/state/containerd.sock restarts=0>"


@pytest.fixture
def registry(request: pytest.FixtureRequest, rootfs: str, tmp_path: Any) -> Iterator[ti.Registries | None]:
    page = PAGES[request.node.callspec.params["page"]]
    if not page.registry:
        yield None
        return
    testing.require_tools("docker-registry", "skopeo", "openssl")
    short = tempfile.mkdtemp(prefix="lcd-docreg-")
    try:
        with ti.Registries(short) as regs:
            # The images the examples pull: a shell that prints and exits, a worker that keeps running.
            app = ti.build_layout(str(tmp_path / "app"), ti.image_layers(rootfs),
                                  config={"Cmd": ["sh", "-c", "echo hello from the image"]})
            worker = ti.build_layout(str(tmp_path / "worker"), ti.image_layers(rootfs),
                                     config={"Cmd": ["sh", "-c", 'echo "worker $WORKER"; sleep 1000']})
            for layout, names in ((app, ("team/app:1.2", "app:1")), (worker, ("team/worker:2.1",))):
                for name in names:
                    regs.push_layout(layout.layout, name)
            yield regs
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_runs(page: str, rootfs: str, registry: ti.Registries | None, request: pytest.FixtureRequest,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec = PAGES[page]
    if spec.criu:
        request.getfixturevalue("criu")
    blocks = blocks_of(page)
    assert len(blocks) >= spec.min_blocks
    baseline = threading.enumerate()
    root = tempfile.mkdtemp(prefix="lcd-docs-")  # short: sockets under it must fit in 104 bytes
    for d in ("var/lib", "var/log", "run", "tmp", "srv/images", "etc/ssl"):
        os.makedirs(os.path.join(root, d))
    ran = 0
    with testing.PrivateContainerd("lcd-docsd-") as system:
        stage = Stage(root=root, sock=system.address, registry=registry)
        _record(stage, monkeypatch)
        monkeypatch.chdir(CHECKOUT)
        monkeypatch.setenv("REGISTRY_PASSWORD", ti.PASSWORD)
        monkeypatch.setenv("DOCKER_CONFIG", os.path.join(root, "docker-config"))
        if registry is not None:
            monkeypatch.setenv("SSL_CERT_FILE", registry.ca_file)
            layers = ti.image_layers(rootfs)
            for name in ("worker", "bundle"):
                ti.write_docker_save(os.path.join(root, "srv/images", f"{name}.tar"), layers, [f"{name}:latest"])
        shared: dict[str, Any] = {"__name__": "__main__"}
        try:
            for block in blocks:
                if block.not_run:
                    continue
                namespace = shared if spec.mode == "page order" else {"__name__": "__main__"}
                if spec.mode == "standalone" and spec.given:
                    namespace.update(_given(stage, rootfs, spec.given))
                _run_block(block, namespace, stage)
                ran += 1
        finally:
            left = _clean_up(stage)
            shutil.rmtree(root, ignore_errors=True)
    assert ran == len(blocks) - len(spec.not_run) and ran >= spec.min_blocks - len(spec.not_run)
    assert set(left) <= spec.left_running, f"{page} left containers behind: {left}"
    assert _threads_end(baseline) == [], f"{page} left threads running"


def _record(stage: Stage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every daemon and client an example creates known to the clean-up."""
    real_start, real_new_client = supervisor.start, libcontainerd.new_client

    def start(*args: Any, **kwargs: Any) -> supervisor.Daemon:
        daemon = real_start(*args, **kwargs)
        stage.daemons.append(daemon)
        return daemon

    def new_client(*args: Any, **kwargs: Any) -> libcontainerd.Client:
        client = real_new_client(*args, **kwargs)
        stage.clients.append(client)
        return client

    monkeypatch.setattr(supervisor, "start", start)
    monkeypatch.setattr(libcontainerd, "new_client", new_client)


def _given(stage: Stage, rootfs: str, names: tuple[str, ...]) -> dict[str, Any]:
    """What a page's standalone examples assume: a client, and a running task of a container ``given``."""
    client = libcontainerd.new_client(stage.sock, os.path.join(stage.root, "run", "given"), "docs", None,
                                      timeout=60)
    stage.clients.append(client)
    out: dict[str, Any] = {"client": client}
    if "task" in names:
        ctr = client.load_container("given") if "given" in {c.id for c in client.list_containers()} else \
            client.new_container("given", oci.default_spec(rootfs, ["sleep", "1"]))
        with contextlib.suppress(libcontainerd.errdefs.NotFound):
            ctr.task().force_delete()
        out["task"] = ctr.start()
    return {name: out[name] for name in names}


def _clean_up(stage: Stage) -> list[str]:
    """Remove what the page's examples left; return the ids of the containers that were left."""
    left: list[str] = []
    seen: set[tuple[str, str]] = set()
    for client in stage.clients:
        where = (client.address, client.namespace)
        if where in seen:
            continue
        seen.add(where)
        with contextlib.suppress(libcontainerd.errdefs.Unavailable), \
                libcontainerd.new_client(client.address, client.state_dir, client.namespace, None,
                                         timeout=60) as cleaner:
            left += [c for c in testing.remove_containers(cleaner) if c != "given"]
    for client in stage.clients:
        client.close()
    for daemon in stage.daemons:
        leftovers = testing.cleanup_root(daemon)
        assert not testing.daemon_processes(daemon.root_dir), leftovers
    return left


def _threads_end(baseline: list[threading.Thread]) -> list[str]:
    deadline = time.monotonic() + 10
    while (left := testing.leftover_threads(baseline, prefix="")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# The recipe that puts the caller's terminal in raw mode cannot run under pytest's captured stdio: it runs here in
# a child Python whose stdin and stdout are a pty, with the page's preamble (a client and a rootfs) made for it.
_PTY_CHILD = """
import os, sys
import libcontainerd
from libcontainerd import oci, stdio, testing
owner = testing.PrivateContainerd("lcd-docpty-")
daemon = owner.__enter__()
try:
    client = libcontainerd.new_client(daemon.address, os.path.join(sys.argv[1], "state"), "docs-pty", None)
    rootfs = sys.argv[2]
    exec(compile(sys.argv[3], "docs/recipes.rst", "exec"))
    client.close()
finally:
    owner.__exit__(None, None, None)
"""


def test_the_terminal_recipe_runs_in_a_pty(rootfs: str, tmp_path: Any) -> None:
    """recipes.rst's raw-mode block, pasted into a terminal: a shell prompt, ``exit 3``, and ``exit code 3``."""
    import pty
    import select
    import subprocess
    import sys

    (block,) = [b for b in blocks_of("docs/recipes.rst") if b.not_run == TERMINAL_RECIPE]
    source = "\n" * (block.lineno - 1) + block.source
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (CHECKOUT, os.environ.get("PYTHONPATH")) if p)}
    child = subprocess.Popen([sys.executable, "-c", _PTY_CHILD, str(tmp_path), rootfs, source], stdin=slave,
                             stdout=slave, stderr=subprocess.PIPE, env=env, start_new_session=True)
    os.close(slave)
    seen = b""
    sent = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                seen += chunk
            if not sent and b"# " in seen:  # busybox sh's prompt, through the container's terminal
                os.write(master, b"exit 3\r")
                sent = True
            if child.poll() is not None and not ready:
                break
        code = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    assert sent, f"no shell prompt on the terminal; it showed {seen!r}; stderr: {stderr}"
    assert code == 0, stderr
    assert b"exit code 3" in seen, seen

"""The public surface as a prompt user meets it: exported names, help() text, a quiet and quick import."""

from __future__ import annotations

import ast
import inspect
import pathlib
import subprocess
import sys

import pytest

import libcontainerd

PACKAGE = pathlib.Path(libcontainerd.__file__).parent
# The command line (and the _cli package) is the one place allowed to write to the terminal.
TALKERS = {"__main__.py"}


def _public_members(cls: type) -> list[tuple[str, object]]:
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            out.append((name, value.fget))
        elif inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod)):
            out.append((name, getattr(value, "__func__", value)))
    return out


def test_exports_are_exactly_all():
    # dir() is what tab completion offers at a prompt.
    assert [n for n in dir(libcontainerd) if not n.startswith("_")] == sorted(libcontainerd.__all__)
    for name in libcontainerd.__all__:
        assert getattr(libcontainerd, name) is not None


@pytest.mark.parametrize("name", sorted(n for n in libcontainerd.__all__ if not inspect.ismodule(
    getattr(libcontainerd, n))))
def test_every_exported_name_has_a_docstring_with_an_example(name):
    obj = getattr(libcontainerd, name)
    assert obj.__doc__ and ">>>" in obj.__doc__, f"{name} needs a docstring with a >>> example"
    if inspect.isclass(obj):
        for member, fn in _public_members(obj):
            assert fn.__doc__, f"{name}.{member} has no docstring"


@pytest.mark.parametrize("cls", ["Client", "Container", "Task", "Process"])
def test_every_handle_method_shows_an_example(cls):
    methods = {name: fn for name, fn in vars(getattr(libcontainerd, cls)).items()
               if inspect.isfunction(fn) and not name.startswith("_")}
    missing = {name for name, fn in methods.items() if ">>>" not in (fn.__doc__ or "")}
    # force_delete is documented in prose; everything else shows a call.
    assert missing <= {"force_delete"}, missing


@pytest.mark.parametrize("module", sorted(["errdefs", "oci", "stdio", "cio", "supervisor", "testing", "types",
                                           "queue"]))
def test_every_public_module_says_what_it_owns(module):
    mod = getattr(libcontainerd, module) if module != "types" else libcontainerd.types
    assert mod.__doc__ and len(mod.__doc__.split()) > 15


def test_the_library_never_prints():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("_api", "_cli") or path.name in TALKERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_library_logs_under_the_libcontainerd_logger():
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "_api":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger" and node.args):
                arg = node.args[0]
                name = arg.value if isinstance(arg, ast.Constant) else None
                assert name is None or name == "libcontainerd" or name.startswith("libcontainerd."), (path, name)


def test_import_loads_neither_grpc_nor_the_generated_modules():
    code = ("import sys, libcontainerd; "
            "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith('libcontainerd._api')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "[]\n"


def test_a_client_import_leaves_the_checkpoint_services_unloaded():
    code = ("import sys; from libcontainerd import new_client; "
            "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('libcontainerd._api') "
            "and any(s in m for s in ('content', 'images', 'leases'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "[]\n"

"""The error tree and the gRPC mapping."""

from __future__ import annotations

import re

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcontainerd import errdefs


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_every_status_code_but_ok_has_a_class():
    assert set(errdefs.GRPC_CODE_MAP) == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    assert all(issubclass(c, errdefs.LibcontainerdError) for c in errdefs.GRPC_CODE_MAP.values())


@pytest.mark.parametrize("code, cls", sorted(errdefs.GRPC_CODE_MAP.items(), key=lambda kv: kv[0].name))
def test_mapping_keeps_cause_and_message(code, cls):
    err = FakeRpcError(code, "something odd happened")
    with pytest.raises(errdefs.LibcontainerdError) as info, errdefs.grpc_errors("container web-1"):
        raise err
    assert type(info.value) is cls
    assert info.value.__cause__ is err
    assert str(info.value) == "container web-1: something odd happened"
    assert info.value.code is code
    assert info.value.explanation == "something odd happened"


@pytest.mark.parametrize("message", ["container does not exist", "task x: not found", "No such container: x"])
def test_not_found_messages_map_to_not_found(message):
    assert isinstance(errdefs.from_grpc(FakeRpcError(grpc.StatusCode.UNKNOWN, message)), errdefs.NotFound)


@pytest.mark.parametrize("cls, builtin", [
    (errdefs.NotFound, LookupError), (errdefs.InvalidParameter, ValueError), (errdefs.Deadline, TimeoutError),
    (errdefs.Unavailable, ConnectionError), (errdefs.Forbidden, PermissionError),
    (errdefs.Unauthorized, PermissionError), (errdefs.NotImplemented, NotImplementedError),
])
def test_builtin_twins(cls, builtin):
    with pytest.raises(builtin):
        raise cls("x")


def test_str_is_one_sentence_without_a_grpc_dump():
    err = errdefs.from_grpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), "x")
    assert "\n" not in str(err) and "StatusCode" not in str(err) and "debug_error_string" not in str(err)
    assert isinstance(err, errdefs.Unavailable)


def test_no_details_still_says_something():
    err = errdefs.from_grpc(FakeRpcError(grpc.StatusCode.INTERNAL, ""))
    assert str(err) == "internal"


@pytest.mark.parametrize("code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_deadline_exceeded_is_a_deadline_whatever_the_code(code):
    """containerd passes on a shim call's "context deadline exceeded" as UNKNOWN: still a timeout."""
    err = errdefs.from_grpc(FakeRpcError(code, "ttrpc: context deadline exceeded: unknown"), "task t")
    assert isinstance(err, errdefs.Deadline) and isinstance(err, TimeoutError)


@pytest.mark.parametrize("what, details, message", [
    ("container nope", 'container "nope" in namespace "x": not found', 'container "nope" in namespace "x": not found'),
    ("task keep", "task keep not found", "task keep not found"),
    ("exec e1 of container web", "process e1 in web: not found", "process e1 in web: not found"),
    # an id that is only part of a word in the details is not named there: the prefix stays
    ("task web", "webhook failed", "task web: webhook failed"),
    ("exec e1 of container web", "process e1 not found", "exec e1 of container web: process e1 not found"),
])
def test_a_message_that_names_its_objects_gets_no_second_prefix(what, details, message):
    assert str(errdefs.from_grpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, details), what)) == message


# -- whether containerd's message already names the object ------------------------------------


def _names_id_by_regex(details: str, ident: str) -> bool:
    """The definition: ``ident`` not preceded nor followed by a word character, ``.`` or ``-``."""
    return re.search(rf"(?<![\w.-]){re.escape(ident)}(?![\w.-])", details) is not None


_ID_ALPHABET = st.sampled_from([*"ab.-_1 \"'/:é", "\u0301", "\u00a0", "٣"])


@given(st.text(_ID_ALPHABET, max_size=30), st.text(_ID_ALPHABET, min_size=1, max_size=4))
def test_the_scan_for_an_id_agrees_with_its_regex(details: str, ident: str) -> None:
    assert errdefs._names_id(details, ident) == _names_id_by_regex(details, ident)


@pytest.mark.parametrize(("what", "details", "named"), [
    ("container web", 'container "web" in namespace "n": not found', True),
    ("container web", 'container "web-1" in namespace "n": not found', False),
    ("container web", "webby: not found", False),
    ("exec e1 of container web", 'exec "e1" of "web": not found', True),
    ("exec e1 of container web", 'process "e1" not found', False),  # the container is not named
    ("", "not found", False),
])
def test_a_message_that_names_every_object_gets_no_prefix(what: str, details: str, named: bool) -> None:
    assert errdefs._names_all_ids(what, details) is named

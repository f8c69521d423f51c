"""containerd's identifier rules, checked locally before anything touches disk or the wire.

containerd (``pkg/identifiers``) accepts ids made of letters and digits, joined by single
``.``, ``_`` or ``-``, at most 76 characters. Checking here means an id such as ``../x``
can never name a path outside the state dir, and a bad id costs no RPC.
"""

from __future__ import annotations

import re

from . import errdefs

MAX_LENGTH = 76
_PATTERN = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*\Z")


def validate(identifier: object, kind: str = "container id") -> str:
    """Return ``identifier`` if containerd would accept it.

    Raises:
        errdefs.InvalidParameter: it is not a string, empty, too long or has other characters.

    >>> validate("web-1.a_b")
    'web-1.a_b'
    """
    if not isinstance(identifier, str):
        raise errdefs.InvalidParameter(f"{kind} must be a string, not {type(identifier).__name__}")
    if not identifier:
        raise errdefs.InvalidParameter(f"{kind} must not be empty")
    if len(identifier) > MAX_LENGTH:
        raise errdefs.InvalidParameter(f"{kind} {identifier[:20]!r}... is longer than {MAX_LENGTH} characters")
    if not _PATTERN.match(identifier):
        raise errdefs.InvalidParameter(
            f"{kind} {identifier!r} is invalid: use letters and digits joined by single '.', '_' or '-'"
        )
    return identifier

"""Canonical JSON (RFC 8785, JCS) for the project's data: the bytes that get hashed and signed.

The project's data is JSON without fractions: objects with string keys, arrays, strings,
integers, booleans and null. For that subset JCS is:

* no insignificant whitespace; object members sorted by their keys' UTF-16 code units;
* strings as ECMAScript's ``JSON.stringify`` writes them: ``"`` and ``\\`` escaped, the control
  characters below U+0020 as ``\\b \\t \\n \\f \\r`` or ``\\u00XX`` (lowercase hex), everything
  else as itself in UTF-8;
* integers in plain decimal.

Refused with :class:`CanonicalJsonError` (a ``ValueError``): floats (money and counts are
integers here, and a float's decimal form is where JCS implementations disagree), integers
outside IEEE 754's exact range (|n| > 2**53 - 1, which a JCS reader would round), keys that are
not strings, strings holding lone surrogates (not Unicode, so not encodable), and any other type.

Python's ``json`` module already writes that subset exactly as JCS does, except for the order
of keys beyond the Basic Multilingual Plane (code points versus UTF-16 code units), so the
common case runs in its C encoder and only objects with such keys are sorted here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

INTEGER_ABS_MAX = 2**53 - 1

# The standard library's non-ASCII string encoder (its C version): JSON.stringify's escapes.
_encode_string = json.encoder.encode_basestring  # type: ignore[attr-defined]


class CanonicalJsonError(ValueError):
    """The value cannot be written as canonical JSON; the message says where and why."""


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value`` (see the module docstring for the subset)."""
    try:
        astral = _check(value)
    except _Refused as exc:
        where = "$" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in reversed(exc.path)
        )
        raise CanonicalJsonError(f"{where}: {exc.reason}") from None
    if astral:
        text = _slow(value)
    else:
        text = json.dumps(
            value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
        )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalJsonError("a string holds a lone surrogate, which is not Unicode") from None


def canonical_sha256(value: Any) -> str:
    """Hex SHA-256 of :func:`canonical_json`: the one digest of a record's content.

    Offer terms, ledger transfers and idempotent requests are identified by it. For their values
    (ASCII keys, integers below 2**53, any Unicode text) it is the digest that
    ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` gave before
    this helper, so digests stored earlier still match.
    """
    return hashlib.sha256(canonical_json(value)).hexdigest()


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


class _Refused(Exception):
    """A value outside the subset; ``path`` is filled in, innermost first, as it unwinds."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path: list[str | int] = []


def _refuse_scalar(value: Any) -> None:
    """Raise for a scalar that is not in the subset (plain str, bool and None are)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if type(value) is not int:  # an IntEnum or other subclass may not print as a number
            raise _Refused(f"{type(value).__name__} is not a plain integer")
        if not -INTEGER_ABS_MAX <= value <= INTEGER_ABS_MAX:
            raise _Refused(f"integer {value} is beyond 2**53 - 1")
        return
    if isinstance(value, float):
        raise _Refused("floats are not allowed (use integer minor units)")
    raise _Refused(f"{type(value).__name__} is not JSON")


def _check(value: Any) -> bool:
    """Refuse what canonical JSON cannot hold; True when some key lies beyond the BMP.

    The hot path (this runs for every journal record) tests exact types and builds no error
    text; the path to a refused value is collected only when one is found.
    """
    kind = type(value)
    if kind is dict:
        members: Any = value.items()
    elif kind is list or kind is tuple:
        members = enumerate(value)
    else:
        members = None
    if members is not None:
        astral = False
        for key, item in members:
            if kind is dict:
                if type(key) is not str:
                    raise _Refused(f"object keys must be strings, not {key!r}")
                if not key.isascii() and not astral and any(ord(c) > 0xFFFF for c in key):
                    astral = True
            item_kind = type(item)
            if item_kind is str or item is None or item_kind is bool:
                continue
            if item_kind is int and -INTEGER_ABS_MAX <= item <= INTEGER_ABS_MAX:
                continue
            try:
                astral = _check(item) or astral
            except _Refused as exc:
                exc.path.append(key)
                raise
        return astral
    if kind is str or value is None or kind is bool:
        return False
    if kind is int and -INTEGER_ABS_MAX <= value <= INTEGER_ABS_MAX:
        return False
    _refuse_scalar(value)
    return False


def _slow(value: Any) -> str:
    """The encoder for objects whose key order differs between code points and UTF-16."""
    if isinstance(value, dict):
        members = sorted(value.items(), key=lambda kv: _utf16_key(kv[0]))
        return "{" + ",".join(_encode_string(k) + ":" + _slow(v) for k, v in members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_slow(v) for v in value) + "]"
    if isinstance(value, str):
        return _encode_string(value)  # type: ignore[no-any-return]
    return json.dumps(value)

"""RFC 8785 canonical JSON for the project's data: the RFC's own examples, refusals, properties."""

from __future__ import annotations

import enum
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketplace.canonical import INTEGER_ABS_MAX, CanonicalJsonError, canonical_json


def test_members_sort_by_utf16_code_units_as_in_rfc_8785_section_3_2_3():
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = [k for k, _ in json.loads(canonical_json(value), object_pairs_hook=list)]
    # The emoji (surrogates D83D DE00) sorts before U+FB33, unlike in code-point order.
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_strings_are_escaped_as_json_stringify_does():
    value = "\u20ac$\u000f\nA'\u0042\u0022\u005c\\\"/\u007f\u2028\b\t\f\r\u0000"
    assert canonical_json(value) == (
        '"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/\u007f\u2028\\b\\t\\f\\r\\u0000"'.encode()
    )


def test_literals_integers_and_containers_have_no_whitespace():
    value = {"z": [], "y": {}, "x": [True, False, None], "w": -0, "v": INTEGER_ABS_MAX, "u": "中"}
    assert canonical_json(value) == (
        '{"u":"中","v":9007199254740991,"w":0,"x":[true,false,null],"y":{},"z":[]}'.encode()
    )
    assert canonical_json((1, 2)) == b"[1,2]"


class Colour(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (1.5, "floats are not allowed"),
        ({"a": [0, float("nan")]}, "$.a[1]: floats"),
        (2**53, "beyond 2**53 - 1"),
        (-(2**53), "beyond 2**53 - 1"),
        ({1: "x"}, "keys must be strings"),
        ("\ud800", "lone surrogate"),
        ({"\udfff": 1}, "lone surrogate"),
        ({"\U0001f600": "\ud800"}, "lone surrogate"),
        (b"bytes", "bytes is not JSON"),
        ({"s": {1, 2}}, "$.s: set is not JSON"),
        (Colour.RED, "not a plain integer"),
    ],
)
def test_values_outside_the_subset_are_refused_with_their_place(value, where):
    with pytest.raises(CanonicalJsonError, match=re.escape(where)):
        canonical_json(value)


def _reference(value):
    """A direct transcription of RFC 8785 for the subset, independent of the json module."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(_reference(k) + ":" + _reference(v) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_reference(v) for v in value) + "]"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
    short["\r"] = "\\r"
    out = []
    for ch in value:
        if ch in short:
            out.append(short[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-INTEGER_ABS_MAX, INTEGER_ABS_MAX) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)


@given(_json_values)
def test_matches_the_reference_and_round_trips(value):
    encoded = canonical_json(value)
    assert encoded == _reference(value).encode("utf-8")
    assert json.loads(encoded) == value
    assert canonical_json(json.loads(encoded)) == encoded

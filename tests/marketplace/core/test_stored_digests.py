"""Digests already stored (offer terms, ledger transfers, idempotent requests) do not change.

They were written by three hand-rolled ``json.dumps`` calls before all of them went through
:func:`marketplace.canonical.canonical_sha256`; the golden values below were computed by those
calls, and the property tests compare the old formulas' bytes with the canonical ones.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketplace.canonical import INTEGER_ABS_MAX, canonical_json, canonical_sha256
from marketplace.catalog.models import canonical_terms, terms_sha256
from marketplace.ledger.idempotency import request_hash
from marketplace.ledger.services import Leg, Transfer

OFFERS = [
    (
        {
            "listing_id": 1,
            "name": "Standard",
            "kind": "perpetual",
            "currency": "EUR",
            "price_minor": 4900,
            "royalty_per_1k_minor": 0,
            "trial_calls": 100,
            "trial_days": 14,
            "term_days": None,
            "allow_download": True,
            "commercial_use": False,
            "terms_md": "Use it well.\n",
        },
        "f9951798e14fbd5166ad533a1630671c62fbbe8fb5dc343635e33b91d2fa4e9e",
    ),
    (
        {
            "listing_id": 2147483647,
            "name": "按次计费 – naïve ✓ 🚀",
            "kind": "per_inference",
            "currency": "CNY",
            "price_minor": 0,
            "royalty_per_1k_minor": 10**15,
            "trial_calls": 0,
            "trial_days": 0,
            "term_days": 365,
            "allow_download": False,
            "commercial_use": True,
            "terms_md": 'Quotes " and \\ and \t tabs\r\n\u0001 control, \u2028 separators',
        },
        "794040ec35030d71b4b27640c6bf78ef6a541f3c225079e3dad037fc6cba64b4",
    ),
]

REQUESTS = [
    (
        {"offer_id": 7, "accept_terms_sha256": "a" * 64},
        "ff9c4d27371355d7d5a8e019d0ef9c44a210383b592974c14b84d3433e01f3e1",
    ),
    (
        {"amount_minor": 1500, "reason": 'Doppelt bezahlt — 重复 🚀 "quoted"'},
        "d00300408008755d721a1e9e26a403da6a998728216fa5159a0788cd6cee6f17",
    ),
    (
        {"amount_minor": 10**15, "currency": "EUR"},
        "03ce61dbb0f7fcb9010bcf6068de0ef801814fb2ea9041593c04afc69b0eaa7f",
    ),
]

TRANSFERS = [
    (
        Transfer("k1", "top_up", (Leg.debit(1, 500), Leg.credit(2, 500))),
        "6f228faacbfa5a3ae3908b7ed7175b7551b23ef2f30594fced24b857d315af75",
    ),
    (
        Transfer("k2", "purchase", (Leg.credit(9, 10**15), Leg.debit(3, 10**15)), pending=True),
        "5a137e471ec11882cd3b88739c3168f6283aaf1e12bd8067d9e6db45c5946730",
    ),
    (
        Transfer("k3", "void", (), resolves_id=42),
        "f7d4d3a0dd5ca0973469b75475524726c1e74329514adc70a4d5471fb74ad21f",
    ),
    (
        Transfer("k4", "reversal", (Leg.debit(2, 7), Leg.credit(1, 7)), reverses_id=2147483647),
        "9e7644ed08bb7204630e43fc57ea06290be6c427fcab982a2b12b6a6426b1774",
    ),
]


@pytest.mark.parametrize(("fields", "digest"), OFFERS)
def test_terms_digests_stored_before_are_unchanged(fields: dict[str, Any], digest: str) -> None:
    offer = SimpleNamespace(**fields)
    assert terms_sha256(offer) == digest
    assert hashlib.sha256(canonical_terms(offer)).hexdigest() == digest


@pytest.mark.parametrize(("payload", "digest"), REQUESTS)
def test_request_digests_stored_before_are_unchanged(payload: dict[str, Any], digest: str) -> None:
    assert request_hash(payload) == digest


@pytest.mark.parametrize(("transfer", "digest"), TRANSFERS)
def test_transfer_digests_stored_before_are_unchanged(transfer: Transfer, digest: str) -> None:
    assert transfer.request_hash() == digest


def _old_unicode(value: Any) -> bytes:
    """The formula of the terms digest and of idempotent requests before canonical_json."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _old_ascii(value: Any) -> bytes:
    """The formula of the ledger transfer digest before canonical_json."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


_ints = st.integers(-INTEGER_ABS_MAX, INTEGER_ABS_MAX)
# Small records: the property is per value, and large ones only slow generation down.
_scalars = st.none() | st.booleans() | _ints | st.text(max_size=24)
_records = st.dictionaries(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    _scalars | st.lists(_scalars, max_size=3),
    max_size=6,
)


@given(_records)
def test_the_old_unicode_formula_writes_canonical_json(record: dict[str, Any]) -> None:
    assert _old_unicode(record) == canonical_json(record)


@given(
    st.dictionaries(
        st.sampled_from(["kind", "legs", "pending", "resolves_id", "reverses_id"]),
        st.none()
        | st.booleans()
        | _ints
        | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E))
        | st.lists(st.tuples(_ints, st.sampled_from(["debit", "credit"]), _ints).map(list)),
    )
)
def test_the_old_ascii_formula_writes_canonical_json_for_transfers(record: dict[str, Any]) -> None:
    assert _old_ascii(record) == canonical_json(record)
    assert hashlib.sha256(_old_ascii(record)).hexdigest() == canonical_sha256(record)

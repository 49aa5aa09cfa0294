"""Allocation and royalty arithmetic: parts always sum to the whole."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketplace.ledger.money import (
    allocate,
    calls_affordable,
    royalty_due,
    split_fee,
)


@given(
    total=st.integers(min_value=0, max_value=10**15),
    weights=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=8).filter(
        lambda w: sum(w) > 0
    ),
)
def test_allocation_sums_to_the_total_and_stays_within_one_unit(total, weights):
    parts = allocate(total, weights)
    assert sum(parts) == total
    for part, weight in zip(parts, weights, strict=True):
        exact = total * weight / sum(weights)
        assert part >= 0 and abs(part - exact) < 1 + 1e-6 * exact


@given(gross=st.integers(min_value=0, max_value=10**13), fee_bps=st.integers(0, 10_000))
def test_fee_split_sums_exactly(gross, fee_bps):
    split = split_fee(gross, fee_bps)
    assert split.vendor + split.platform == gross
    assert split.platform * 10_000 <= gross * fee_bps + 10_000


@pytest.mark.parametrize(
    ("gross", "currency", "vendor", "platform"),
    [
        (999, "JPY", 899, 100),  # zero-decimal: 99.9 yen fee rounds to 100, vendor gets the rest
        (1, "JPY", 1, 0),
        (5, "JPY", 5, 0),
        (15, "JPY", 14, 1),  # 13.5 + 1.5: remainders tie, the earlier (vendor) part gets the unit
        (12_345, "CNY", 11_111, 1_234),  # 123.45 CNY: 111.105 + 12.345, the tie goes to the vendor
        (12_346, "CNY", 11_111, 1_235),  # 111.114 + 12.346: the larger remainder (fee) wins
        (10_000, "CNY", 9_000, 1_000),
    ],
)
def test_jpy_and_cny_splits(gross, currency, vendor, platform):
    split = split_fee(gross, 1000)
    assert (split.vendor, split.platform) == (vendor, platform)
    assert split.vendor + split.platform == gross


def test_allocation_refuses_nonsense():
    with pytest.raises(ValueError):
        allocate(-1, [1])
    with pytest.raises(ValueError):
        allocate(1, [0, 0])
    with pytest.raises(ValueError):
        split_fee(1, 10_001)


@given(
    batches=st.lists(st.integers(min_value=0, max_value=5_000), max_size=20),
    royalty=st.integers(min_value=0, max_value=100_000),
)
def test_batched_royalties_equal_the_floor_of_the_total(batches, royalty):
    charged = calls = 0
    for batch in batches:
        charged += royalty_due(calls + batch, royalty) - royalty_due(calls, royalty)
        calls += batch
    assert charged == calls * royalty // 1000


@given(total=st.integers(0, 10**9), royalty=st.integers(1, 10**6))
def test_calls_affordable_is_the_largest_covered_count(total, royalty):
    n = calls_affordable(total, royalty)
    assert royalty_due(n, royalty) <= total < royalty_due(n + 1, royalty)

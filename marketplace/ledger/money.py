"""Money arithmetic on integer minor units: allocation, fee splits, metered royalties.

No floats anywhere: an amount is a count of the currency's smallest unit, and every split is
computed so that its parts add up to the whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BPS_WHOLE = 10_000  # basis points in one


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` by largest remainder; parts sum to ``total``.

    Each part gets the floor of its exact quota; the units left over go one each to the parts
    with the largest fractional remainders (ties to the earlier part), so the result is
    deterministic and no part is ever more than one unit from its exact share.
    """
    if total < 0:
        raise ValueError("cannot allocate a negative amount")
    if not weights or any(w < 0 for w in weights) or sum(weights) == 0:
        raise ValueError("weights must be non-negative with a positive sum")
    weight_sum = sum(weights)
    parts = [total * w // weight_sum for w in weights]
    remainders = [total * w % weight_sum for w in weights]
    left = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        parts[i] += 1
    return parts


@dataclass(frozen=True)
class Split:
    """A gross amount divided between the vendor and the platform."""

    gross: int
    vendor: int
    platform: int


def split_fee(gross: int, fee_bps: int) -> Split:
    """The vendor's share and the platform's fee of ``gross``; they always sum to ``gross``."""
    if not 0 <= fee_bps <= BPS_WHOLE:
        raise ValueError("fee_bps must be between 0 and 10000")
    vendor, platform = allocate(gross, [BPS_WHOLE - fee_bps, fee_bps])
    return Split(gross=gross, vendor=vendor, platform=platform)


def split_increment(total_before: int, total_after: int, fee_bps: int) -> Split:
    """The split of ``total_after - total_before`` as a step of a running total.

    Splitting each step on its own rounds every step (a 1-unit royalty would always go whole
    to the vendor); splitting the running total and taking differences makes any number of
    steps add up to exactly ``split_fee(total_after)``.
    """
    if not 0 <= total_before <= total_after:
        raise ValueError("a running total only grows")
    before, after = split_fee(total_before, fee_bps), split_fee(total_after, fee_bps)
    return Split(
        gross=total_after - total_before,
        vendor=after.vendor - before.vendor,
        platform=after.platform - before.platform,
    )


def royalty_due(calls: int, royalty_per_1k_minor: int) -> int:
    """What ``calls`` metered calls cost in total: ``floor(calls * royalty_per_1k_minor / 1000)``.

    Settling the difference ``royalty_due(n1) - royalty_due(n0)`` for each batch of calls makes
    the running total exact after every batch, whatever the batch sizes.
    """
    if calls < 0 or royalty_per_1k_minor < 0:
        raise ValueError("calls and royalty must not be negative")
    return calls * royalty_per_1k_minor // 1000


def calls_affordable(total_minor: int, royalty_per_1k_minor: int) -> int:
    """The largest call count whose :func:`royalty_due` does not exceed ``total_minor``."""
    if royalty_per_1k_minor <= 0:
        raise ValueError("free royalties make every call count affordable")
    # floor(n * r / 1000) <= m  <=>  n * r < 1000 * (m + 1)
    return (1000 * (total_minor + 1) - 1) // royalty_per_1k_minor

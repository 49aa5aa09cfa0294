"""Idempotency keys for requests that create money records (top-ups, orders, refunds)."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from marketplace.canonical import canonical_sha256
from marketplace.ledger.errors import IdempotencyKeyReused


class _Keyed(Protocol):
    request_hash: str


K = TypeVar("K", bound=_Keyed)


def request_hash(payload: dict[str, Any]) -> str:
    """SHA-256 of a request's canonical JSON: the same key must come with the same request."""
    return canonical_sha256(payload)


def replay(found: K | None, digest: str, noun: str) -> K | None:
    """The record a repeated request created before, or None; 409 for a different request."""
    if found is not None and found.request_hash != digest:
        raise IdempotencyKeyReused(f"This idempotency key was used for a different {noun}.")
    return found

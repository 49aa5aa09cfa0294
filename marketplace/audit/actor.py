"""Who a journal record says made the change: carried in a context variable.

Views, pages and the CLI know who acts; services do not, and must not import Flask to learn
it. So the OAuth layer (on every verified token), the pages (on a session login) and the CLI
set the actor here, and :mod:`marketplace.audit.journal` reads it when it appends. Nothing here
imports the database layer, so the command line can set it at start-up for free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Actor:
    """Who asked for a change: an organisation and its API client, and by which way in."""

    organization_id: int | None = None
    client_id: str | None = None
    # "api" (a request with a token), "web" (a page with a session), "cli" (an operator's
    # command), "system" (work nobody asked for, such as settlement on a timer).
    via: str = "system"

    def as_record(self) -> dict[str, Any]:
        return {
            "organization_id": self.organization_id,
            "client_id": self.client_id,
            "via": self.via,
        }


SYSTEM = Actor()
_actor: ContextVar[Actor] = ContextVar("audit_actor", default=SYSTEM)


def current_actor() -> Actor:
    return _actor.get()


def set_actor(actor: Actor) -> Token[Actor]:
    """Make ``actor`` the author of what this context appends (until reset)."""
    return _actor.set(actor)


def reset_actor(token: Token[Actor]) -> None:
    _actor.reset(token)


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    token = set_actor(actor)
    try:
        yield actor
    finally:
        reset_actor(token)

"""Reading a row's attributes by name, for the value objects and records built from rows."""

from __future__ import annotations

from typing import Any


def attributes(row: object, names: str) -> dict[str, Any]:
    """``row``'s attributes ``names`` (separated by spaces), each under its own name.

    Read with ``getattr``, so the expired attributes of an ORM row load as they do when read one
    by one (``model_dump`` of such a row silently leaves them out).
    """
    return {name: getattr(row, name) for name in names.split()}

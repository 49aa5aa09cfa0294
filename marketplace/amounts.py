"""Amounts for people: integer minor units as text such as ``¥1,234.50`` (framework-free).

Amounts are integer minor units everywhere; the number of decimals comes from the ledger's
currency table (the exponent), the one source of it. The pages and the API both format here.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from babel.numbers import format_decimal, get_currency_symbol

# The symbol people in the currency's own country write. Babel's standard symbols depend on
# the viewer's locale (CN¥ to an English reader, JP¥ to a Chinese one); a marketplace shows the
# price as its vendor wrote it, and the code stays in the element's title for the ambiguous.
HOME_SYMBOLS = {
    "CNY": "¥",
    "JPY": "¥",
    "USD": "$",
    "EUR": "€",
    "GBP": "£",
    "HKD": "HK$",
    "KRW": "₩",
}

# Journal records and evaluation reports are signed bytes (their canonical form is hashed into
# the audit chain or signed): a field added to one would break its signature, so they are
# passed through as they are.
SIGNED_KEYS = frozenset({"record", "report"})
MINOR_SUFFIX = "_minor"
DISPLAY_SUFFIX = "_display"
API_LOCALE = "en"


def money(amount_minor: int, currency: str, exponent: int, locale: str) -> str:
    """``amount_minor`` of ``currency`` as text, e.g. ``¥1,234.50`` or ``-$3.00``."""
    value = Decimal(abs(int(amount_minor))).scaleb(-exponent)
    pattern = "#,##0" + ("." + "0" * exponent if exponent > 0 else "")
    digits = format_decimal(value, format=pattern, locale=locale)
    symbol = HOME_SYMBOLS.get(currency) or get_currency_symbol(currency, locale=locale)
    return f"{'-' if amount_minor < 0 else ''}{symbol}{digits}"


def with_displays(value: Any, exponent_of: Callable[[str], int | None]) -> Any:
    """``value`` (decoded JSON) with ``X_display`` beside every integer ``X_minor`` whose
    currency is known: the ``currency`` of the object or of the nearest object around it.

    Lists whose first item is not an object (tensor data) are passed through unread, and so
    are signed journal records and reports (:data:`SIGNED_KEYS`).
    """
    return _walk(value, None, exponent_of)


def _walk(value: Any, currency: str | None, exponent_of: Callable[[str], int | None]) -> Any:
    if isinstance(value, list):
        if not value or not isinstance(value[0], dict):
            return value
        return [_walk(item, currency, exponent_of) for item in value]
    if not isinstance(value, dict):
        return value
    own = value.get("currency")
    if isinstance(own, str):
        currency = own
    exponent = exponent_of(currency) if currency else None
    out: dict[str, Any] = {}
    for key, item in value.items():
        out[key] = item if key in SIGNED_KEYS else _walk(item, currency, exponent_of)
        if (
            exponent is not None
            and currency
            and key.endswith(MINOR_SUFFIX)
            and isinstance(item, int)
            and not isinstance(item, bool)
        ):
            out[key[: -len(MINOR_SUFFIX)] + DISPLAY_SUFFIX] = money(
                item, currency, exponent, API_LOCALE
            )
    return out


def add_display_schemas(schemas: dict[str, Any]) -> None:
    """Declare ``X_display`` beside every ``X_minor`` property of the OpenAPI ``schemas``."""
    for schema in schemas.values():
        properties = schema.get("properties") if isinstance(schema, dict) else None
        if not properties:
            continue
        for name in [n for n in properties if n.endswith(MINOR_SUFFIX)]:
            display = name[: -len(MINOR_SUFFIX)] + DISPLAY_SUFFIX
            properties.setdefault(
                display,
                {
                    "type": "string",
                    "description": f"`{name}` formatted for people, such as ¥12.50; present "
                    "when the amount's currency is known",
                    "examples": ["¥12.50"],
                },
            )

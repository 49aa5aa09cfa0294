"""Display formats for people: money per currency, times in the viewer's zone, and back again.

Amounts are integer minor units everywhere else; here they become text such as ``¥1,234.50``
(CNY, two decimals) or ``¥1,235`` (JPY, none), with the digits grouped the viewer's way. The
number of decimals comes from the ledger's currency table (the exponent), the one source of it.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from decimal import Decimal, InvalidOperation

from babel.dates import format_datetime as babel_format_datetime

from marketplace.amounts import money

__all__ = ["local_date", "local_time", "money", "parse_amount", "zone"]

# ASCII digits only: \d alone also takes full-width and Arabic-Indic digits, which a person
# did not mean as an amount of money.
_AMOUNT = re.compile(r"^\s*(\d{1,15})(?:[.](\d{1,6}))?\s*$", re.ASCII)


def parse_amount(text: str, exponent: int) -> int:
    """A decimal amount typed by a person (``12.5``) as integer minor units; ValueError when it
    is not a plain non-negative number with at most ``exponent`` decimals."""
    found = _AMOUNT.match(text or "")
    if found is None:
        raise ValueError("not an amount")
    whole, fraction = found.group(1), found.group(2) or ""
    if len(fraction) > exponent:
        raise ValueError(f"at most {exponent} decimals")
    try:
        return int(Decimal(f"{whole}.{fraction or '0'}").scaleb(exponent))
    except InvalidOperation:
        raise ValueError("not an amount") from None


def zone(name: str | None, default: str = "UTC") -> zoneinfo.ZoneInfo:
    """The IANA zone ``name``, or ``default`` when it is missing or unknown."""
    if name and len(name) <= 64:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return zoneinfo.ZoneInfo(default)


def local_time(value: dt.datetime, tz: zoneinfo.ZoneInfo, locale: str) -> str:
    """A stored UTC time in the viewer's zone, e.g. ``2026-11-27 13:05 CST``."""
    local = value.astimezone(tz)
    text = babel_format_datetime(local, "yyyy-MM-dd HH:mm", tzinfo=tz, locale=locale)
    return f"{text} {local.tzname() or tz.key}"


def local_date(value: dt.datetime, tz: zoneinfo.ZoneInfo) -> dt.date:
    return value.astimezone(tz).date()

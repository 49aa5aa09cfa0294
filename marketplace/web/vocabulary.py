"""Words the pages translate from stored values (licence kinds, statuses, ledger kinds,
payment-provider calls).

Listed here so that message extraction finds them; templates translate the stored value with
``_(value)`` and show it unchanged when a new value has no translation yet.
"""

from __future__ import annotations

from flask_babel import lazy_gettext as _l

STORED_VALUES = (
    # licence and offer kinds
    _l("trial"),
    _l("perpetual"),
    _l("subscription"),
    _l("per_inference"),
    # licence, listing and order statuses
    _l("active"),
    _l("expired"),
    _l("exhausted"),
    _l("revoked"),
    _l("suspended"),
    _l("paid"),
    _l("partially_refunded"),
    _l("refunded"),
    # ledger transaction kinds and account codes
    _l("top_up"),
    _l("purchase"),
    _l("royalty"),
    _l("refund"),
    _l("reservation"),
    _l("reservation_release"),
    _l("wallet"),
    _l("vendor_payable"),
    _l("platform_revenue"),
    _l("royalty_accrual"),
    _l("payment_clearing"),
    _l("payout"),
    # payment-provider calls (their kinds) and what sending one came to
    _l("transfer"),
    _l("top_up_cancel"),
    _l("done"),
    _l("refused"),
    _l("retry"),
    _l("failed"),
    _l("already_recorded"),
)

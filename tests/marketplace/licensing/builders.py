"""Small builders for money tests: catalog rows, organisations and funded wallets."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlmodel import Session

from marketplace.accounts.models import Organization
from marketplace.catalog.models import Listing, ModelVersion, Offer, terms_sha256
from marketplace.config import Settings
from marketplace.ledger import services as ledger
from marketplace.ledger.models import PAYMENT_CLEARING, WALLET
from marketplace.licensing.services import LicensingService
from marketplace.payments.gateway import OfflineGateway, PaymentGateway
from marketplace.payments.services import PaymentsService


@dataclass(frozen=True)
class Catalog:
    listing_id: int
    version_id: int
    offer_id: int
    terms_sha256: str
    vendor_id: int


def make_organization(session: Session, roles: str = "buyer") -> int:
    org = Organization(name=f"org {uuid.uuid4().hex[:8]}", roles=roles)
    session.add(org)
    session.commit()
    assert org.id is not None
    return org.id


def make_offer(
    session: Session, vendor_id: int, *, listing_id: int | None = None, **fields: Any
) -> Catalog:
    """A listing (unless given) with one version and an offer; ``fields`` override the offer."""
    if listing_id is None:
        listing = Listing(
            organization_id=vendor_id,
            slug=f"m-{uuid.uuid4().hex[:10]}",
            name="Defect detector",
            task="image-classification",
        )
        session.add(listing)
        session.flush()
        assert listing.id is not None
        listing_id = listing.id
    version = ModelVersion(
        listing_id=listing_id,
        version=f"1.0.{uuid.uuid4().int % 100000}",
        sha256="0" * 64,
        size_bytes=1,
        blob_key="onnx/sha256/00/00",
        ir_version=8,
    )
    session.add(version)
    values: dict[str, Any] = {
        "listing_id": listing_id,
        "name": "Standard",
        "kind": "perpetual",
        "currency": "CNY",
        "price_minor": 10_000,
        "royalty_per_1k_minor": 0,
        "trial_calls": 0,
        "trial_days": 0,
        "term_days": None,
        "allow_download": False,
        "commercial_use": True,
        "terms_md": "Use it well.",
    }
    values.update(fields)
    offer = Offer(**values, terms_sha256="")
    offer.terms_sha256 = terms_sha256(offer)
    session.add(offer)
    session.commit()
    assert version.id is not None and offer.id is not None
    return Catalog(listing_id, version.id, offer.id, offer.terms_sha256, vendor_id)


def fund_wallet(
    session: Session, organization_id: int, amount_minor: int, currency: str = "CNY"
) -> int:
    """Credit the organisation's wallet as a completed top-up would; the wallet's account id."""

    def work(s: Session) -> int:
        clearing = ledger.ensure_account(
            s, organization_id=None, code=PAYMENT_CLEARING, currency=currency
        )
        wallet = ledger.ensure_account(
            s, organization_id=organization_id, code=WALLET, currency=currency
        )
        ledger.apply_transfers(
            s,
            [
                ledger.Transfer(
                    idempotency_key=f"test-fund:{uuid.uuid4().hex}",
                    kind="top_up",
                    legs=(
                        ledger.Leg.debit(clearing, amount_minor),
                        ledger.Leg.credit(wallet, amount_minor),
                    ),
                )
            ],
        )
        return wallet

    return ledger.run_in_transaction(session, work)


def wallet_available(session: Session, organization_id: int, currency: str = "CNY") -> int:
    account = ledger.find_account(
        session, organization_id=organization_id, code=WALLET, currency=currency
    )
    if account is None:
        return 0
    return ledger.balances(session, account_ids=[account])[0].available


def account_posted(
    session: Session, organization_id: int | None, code: str, currency: str = "CNY"
) -> int:
    account = ledger.find_account(
        session, organization_id=organization_id, code=code, currency=currency
    )
    if account is None:
        return 0
    return ledger.balances(session, account_ids=[account])[0].posted


def licensing_service(fee_bps: int = 1000) -> LicensingService:
    """The licensing service on a platform fee of ``fee_bps``, without a payment provider."""
    return LicensingService(platform_fee_bps=fee_bps, page_size_max=100)


def payments_service(gateway: PaymentGateway | None = None, **bounds: Any) -> PaymentsService:
    """The payments service on the default settings, with other ``bounds`` where given."""
    service = PaymentsService.from_settings(Settings(), gateway or OfflineGateway())
    return replace(service, **bounds)

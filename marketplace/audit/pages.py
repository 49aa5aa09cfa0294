"""Pages of the auditor API's long lists, each page bounded by a setting."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sqlmodel import Session

from marketplace.audit import platform, services
from marketplace.audit.schemas import LedgerQuery, PlatformLedger, RecordItem, RecordPage
from marketplace.config import FromSettings, setting


@dataclass(frozen=True)
class AuditPages(FromSettings):
    """Sequenced records, ``records_page_max`` a page at most, and the platform ledger's
    transactions, ``ledger_page_max`` a page at most; built once by ``init_app``."""

    records_page_max: int = field(metadata=setting("audit_records_page_max"))
    ledger_page_max: int = field(metadata=setting("page_size_max"))

    def records(
        self, session: Session, *, from_seq: int, to_seq: int | None, page_size: int
    ) -> RecordPage:
        """Records ``from_seq..to_seq`` (inclusive), one page, and where the next one starts."""
        size, items = services.records(
            session,
            from_seq=from_seq,
            to_seq=to_seq,
            limit=min(page_size, self.records_page_max),
        )
        last = items[-1].seq if items else None
        end = size - 1 if to_seq is None else to_seq
        return RecordPage(
            tree_size=size,
            items=[RecordItem.model_validate(dataclasses.asdict(i)) for i in items],
            next_from_seq=None if last is None or last >= end else last + 1,
        )

    def ledger_transactions(self, session: Session, query: LedgerQuery) -> PlatformLedger:
        """One page of the transactions ``query`` matches, with totals over all of them."""
        return platform.ledger_transactions(
            session=session, query=query, limit=min(query.page_size, self.ledger_page_max)
        )

"""OAuth2 scopes and which organisation roles may hold them (DESIGN §4)."""

from __future__ import annotations

from collections.abc import Iterable

MODELS_READ = "models:read"
MODELS_WRITE = "models:write"
SANDBOX_RUN = "sandbox:run"
LICENSES_WRITE = "licenses:write"
LEDGER_READ = "ledger:read"
AUDIT_READ = "audit:read"
ADMIN = "admin"
# Creating and revoking the organisation's API clients: a credential that outlives any token.
CLIENTS_MANAGE = "clients:manage"
PAYOUTS_WRITE = "payouts:write"  # where a vendor's money is sent

ALL_SCOPES = (
    MODELS_READ,
    MODELS_WRITE,
    SANDBOX_RUN,
    LICENSES_WRITE,
    LEDGER_READ,
    AUDIT_READ,
    ADMIN,
    CLIENTS_MANAGE,
    PAYOUTS_WRITE,
)

SCOPE_DESCRIPTIONS = {
    MODELS_READ: "Read listings and download licensed artifacts",
    MODELS_WRITE: "Create listings, upload versions, publish offers (vendors)",
    SANDBOX_RUN: "Evaluate versions in the sandbox (trials and licences)",
    LICENSES_WRITE: "Start trials and buy offers (buyers)",
    LEDGER_READ: "Read the organisation's wallet, orders and statements",
    AUDIT_READ: "Read and export the audit journal (auditors)",
    ADMIN: "Platform administration: suspensions, refunds, payouts",
    CLIENTS_MANAGE: "Create and revoke the organisation's API clients (only when requested)",
    PAYOUTS_WRITE: "Set where a vendor's payouts are sent",
}

# Scopes a token carries only when its request names them: a token requested without a scope
# gets every other scope of its client, so the everyday token that leaks from a log or a CI job
# cannot mint permanent clients.
EXPLICIT_ONLY_SCOPES = frozenset({CLIENTS_MANAGE})

# Organisation roles: vendor and buyer are chosen at registration; auditor and admin are platform
# roles granted only by an administrator (CLI `jishi users create --role`).
ORG_ROLES = ("vendor", "buyer", "auditor", "admin")
SELF_SERVICE_ROLES = ("vendor", "buyer")

SCOPES_BY_ROLE: dict[str, frozenset[str]] = {
    "vendor": frozenset(
        {MODELS_READ, MODELS_WRITE, SANDBOX_RUN, LEDGER_READ, CLIENTS_MANAGE, PAYOUTS_WRITE}
    ),
    "buyer": frozenset({MODELS_READ, SANDBOX_RUN, LICENSES_WRITE, LEDGER_READ, CLIENTS_MANAGE}),
    "auditor": frozenset({MODELS_READ, AUDIT_READ, LEDGER_READ, CLIENTS_MANAGE}),
    "admin": frozenset({MODELS_READ, LEDGER_READ, ADMIN, CLIENTS_MANAGE}),
}


def allowed_scopes(roles: Iterable[str]) -> frozenset[str]:
    """Every scope an organisation with ``roles`` may hold."""
    out: set[str] = set()
    for role in roles:
        out |= SCOPES_BY_ROLE.get(role, frozenset())
    return frozenset(out)


def split_scope(scope: str | None) -> list[str]:
    return sorted({s for s in (scope or "").split() if s})


def join_scope(scopes: Iterable[str]) -> str:
    return " ".join(sorted(set(scopes)))

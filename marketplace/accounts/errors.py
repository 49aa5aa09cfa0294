"""Accounts errors with stable codes (tests assert the codes)."""

from __future__ import annotations

from marketplace.errors import DomainError, Forbidden, ServiceUnavailable


class RegistrationBusy(ServiceUnavailable):
    code = "registration_busy"
    title = "Too many registrations at once"


class TooManyRegistrations(DomainError):
    code = "too_many_registrations"
    status = 429
    title = "Too many registrations from this address"


class OrganizationNotVerified(Forbidden):
    code = "organization_not_verified"
    title = "The organisation is not verified"

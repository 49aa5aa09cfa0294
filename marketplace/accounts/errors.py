"""Accounts errors with stable codes (tests assert the codes)."""

from __future__ import annotations

from marketplace.errors import DomainError, Forbidden, ServiceUnavailable


class RegistrationBusy(ServiceUnavailable, code="registration_busy"): ...


class TooManyRegistrations(DomainError, code="too_many_registrations"): ...


class OrganizationNotVerified(Forbidden, code="organization_not_verified"): ...

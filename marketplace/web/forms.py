"""The pages' forms (Flask-WTF): fields, visible labels and the CSRF token.

Forms check only what a browser gets wrong (a missing field, a box left unticked); the domain's
own request schemas and services decide everything else, as they do for the API.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    EmailField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    ValidationError,
)
from wtforms.widgets import CheckboxInput, ListWidget

from marketplace.api import IDEMPOTENCY_KEY_LENGTH_MAX
from marketplace.bounds import ID_MAX


def _at_least_one(_form: FlaskForm, field: Any) -> None:
    if not field.data:
        raise ValidationError(_l("Choose at least one."))


class LoginForm(FlaskForm):
    email = EmailField(_l("E-mail address"), validators=[DataRequired(), Length(max=254)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=256)])


class RegisterForm(FlaskForm):
    email = EmailField(_l("E-mail address"), validators=[DataRequired(), Length(max=254)])
    password = PasswordField(
        _l("Password (at least 12 characters, letters with digits or symbols)"),
        validators=[DataRequired(), Length(max=256)],
    )
    organization_name = StringField(
        _l("Organisation name"), validators=[DataRequired(), Length(max=200)]
    )
    organization_roles = SelectMultipleField(
        _l("What your organisation does here"),
        choices=[
            SelectChoice("vendor", _l("Sell models (vendor)")),
            SelectChoice("buyer", _l("Buy models (buyer)")),
        ],
        # Not DataRequired: its "required" flag would make the browser demand every box.
        validators=[_at_least_one],
        option_widget=CheckboxInput(),
        widget=ListWidget(prefix_label=False),
    )


class EmptyForm(FlaskForm):
    """A button that changes something: only the CSRF token."""


class AcceptTermsForm(FlaskForm):
    accept_terms_sha256 = HiddenField(validators=[DataRequired()])
    idempotency_key = HiddenField()
    accept = BooleanField(_l("I have read and accept these terms"), validators=[DataRequired()])


class ListingForm(FlaskForm):
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=200)])
    summary = StringField(_l("Summary"), validators=[Optional(), Length(max=500)])
    task = StringField(_l("Task (e.g. image-classification)"), validators=[DataRequired()])
    tags = StringField(_l("Tags (comma-separated)"), validators=[Optional()])
    filing_number = StringField(_l("Filing number (算法备案号), if any"), validators=[Optional()])
    description_md = TextAreaField(_l("Model card (Markdown)"), validators=[Optional()])


class UploadForm(FlaskForm):
    version = StringField(_l("Version (e.g. 1.0.0)"), validators=[DataRequired()])
    model = FileField(_l("ONNX file"), validators=[FileRequired()])


class SampleForm(FlaskForm):
    sample = FileField(_l("Sample input (.npz)"), validators=[FileRequired()])


class OfferForm(FlaskForm):
    name = StringField(_l("Offer name"), validators=[DataRequired(), Length(max=200)])
    kind = SelectField(
        _l("Kind"),
        choices=[
            SelectChoice("per_inference", _l("Pay per inference")),
            SelectChoice("perpetual", _l("Perpetual licence")),
            SelectChoice("subscription", _l("Subscription")),
        ],
    )
    currency = SelectField(_l("Currency"), choices=[])
    price = StringField(_l("Price"), default="0")
    royalty_per_1k = StringField(_l("Royalty per 1,000 calls"), default="0")
    term_days = IntegerField(_l("Term in days (subscriptions)"), validators=[Optional()])
    trial_calls = IntegerField(
        _l("Trial calls"), default=0, validators=[InputRequired(), NumberRange(min=0)]
    )
    trial_days = IntegerField(
        _l("Trial days"), default=0, validators=[InputRequired(), NumberRange(min=0)]
    )
    trial_requires_verified_org = BooleanField(
        _l("Trials only for organisations the platform has verified")
    )
    allow_download = BooleanField(_l("Licensees may download the model"))
    commercial_use = BooleanField(_l("Commercial use allowed"))
    terms_md = TextAreaField(_l("Licence terms (Markdown)"), validators=[Optional()])


class TopUpForm(FlaskForm):
    amount = StringField(_l("Amount"), validators=[DataRequired()])
    currency = SelectField(_l("Currency"), choices=[])
    idempotency_key = HiddenField()


class RefundForm(FlaskForm):
    # Bounded like every id in a path or query: past the column's range the lookup itself fails.
    order_id = IntegerField(
        _l("Order number"), validators=[InputRequired(), NumberRange(min=1, max=ID_MAX)]
    )
    amount = StringField(_l("Amount to refund (empty: all that is left)"), validators=[Optional()])
    reason = StringField(_l("Reason"), validators=[Optional(), Length(max=500)])
    idempotency_key = HiddenField()


class PreferencesForm(FlaskForm):
    language = SelectField(
        _l("Language"), choices=[SelectChoice("zh", "中文"), SelectChoice("en", "English")]
    )
    timezone = SelectField(_l("Time zone"), choices=[])


class AuditExportForm(FlaskForm):
    from_seq = IntegerField(
        _l("From record (seq, inclusive; empty: 0)"),
        validators=[Optional(), NumberRange(min=0, max=2**62)],
    )
    to_size = IntegerField(
        _l("To tree size (exclusive; empty: the whole sequenced journal)"),
        validators=[Optional(), NumberRange(min=0, max=2**62)],
    )
    format = SelectField(
        _l("Format"),
        choices=[
            SelectChoice("jsonl", _l("JSONL with the signed manifest (verifiable)")),
            SelectChoice("csv", _l("CSV for spreadsheets (not verifiable)")),
        ],
    )


class PayoutAccountForm(FlaskForm):
    account_ref = StringField(
        _l("Connected account for payouts (e.g. acct_…)"),
        validators=[DataRequired(), Length(max=255)],
    )


class PayoutRunForm(FlaskForm):
    organization_id = IntegerField(
        _l("Only this vendor (organisation number; empty: every vendor)"),
        validators=[Optional(), NumberRange(min=1, max=ID_MAX)],
    )


def ledger_key(submitted: str | None) -> str:
    """The idempotency key a page's form posts under: ``web:`` and the key the page gave it.

    A form posted twice (a double click, a reload) is one purchase, top-up or refund. The key
    is cut to fit the ledger's 128-character columns with its prefix (a 128-character key with
    the prefix overflowed PostgreSQL's column: a 500); without one, the post is its own.
    """
    key = (submitted or "").strip()[: IDEMPOTENCY_KEY_LENGTH_MAX - len(_LEDGER_KEY_PREFIX)]
    return _LEDGER_KEY_PREFIX + (key or uuid.uuid4().hex)


_LEDGER_KEY_PREFIX = "web:"

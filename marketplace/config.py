"""Settings: typed defaults, then ``MARKETPLACE_*`` environment variables, then an explicit dict.

Every limit is a named setting with its unit last. The README lists every variable; a test
checks that the README and this class agree.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, get_type_hints

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ENV_PREFIX = "MARKETPLACE_"
# Settings read under the payment provider's own variable names, without the prefix, so that an
# operator's existing Stripe environment works as it is.
UNPREFIXED = frozenset({"stripe_api_key", "stripe_webhook_secret", "stripe_api_base"})
DEVELOPMENT_SECRET_KEY = "development-only-secret-key-change-me"
DEVELOPMENT_ENVS = frozenset({"development", "testing"})


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message says which setting and why."""


@dataclasses.dataclass
class Settings:
    # Where and how the marketplace runs.
    env: str = "development"
    secret_key: str = DEVELOPMENT_SECRET_KEY
    database_url: str = ""  # empty: SQLite file in the instance folder
    storage_url: str = ""  # empty: filesystem blobs under instance/blobs
    payments: str = "offline"  # offline | stripe
    instance_path: str = ""  # empty: Flask's instance folder
    log_level: str = "INFO"
    # Reverse proxies in front of the app whose X-Forwarded-For/-Proto/-Host/-Port are believed
    # (Werkzeug's ProxyFix); 0 when clients connect directly. Client addresses, the https
    # scheme OAuth needs and the issuer's host name come from these headers.
    trusted_proxy_hops: int = 0
    # The host names this node answers to, comma-separated (a leading dot admits subdomains);
    # empty: any. Other Host headers are refused (400), so a forged one is never echoed into
    # the OAuth metadata's URLs or anything else built from the request's host.
    trusted_hosts: str = ""
    # How long a statement waits for a lock another transaction holds (SQLite busy timeout,
    # PostgreSQL lock_timeout) before the request is answered 503 with Retry-After.
    database_lock_timeout_s: float = 30.0

    # OAuth2.
    access_token_ttl_s: int = 3600
    token_failures_max: int = 10  # failed token requests per client before it is slowed down
    token_failures_window_s: int = 60
    # A verified access token is served from a process's memory for this long: the bound on
    # how late a revocation or suspension made on another process or node takes effect.
    token_cache_ttl_s: float = 5.0

    # Registration: anyone may call it, and each call costs an argon2 hash (64 MiB, ~0.1 s).
    registrations_per_address_max: int = 10  # per client address within the window
    registrations_window_s: int = 3600
    password_hash_concurrency_max: int = 2  # argon2 hashes running at once on a node
    password_hash_wait_s: float = 2.0  # wait for a free hashing slot before 503

    # Request limits.
    json_body_bytes_max: int = 1024 * 1024
    page_size_max: int = 100

    # Registry.
    model_bytes_max: int = 2 * 1024**3
    artifact_url_ttl_s: int = 300
    inspect_timeout_s: int = 120  # wall-clock deadline of one confined ONNX inspection
    inspect_node_count_max: int = 100_000  # nodes, subgraphs and functions included
    inspect_subgraph_depth_max: int = 4
    inspect_initializer_bytes_max: int = 2 * 1024**3  # declared, not stored, bytes
    inspect_extra_domains: str = ""  # comma-separated operator domains allowed beyond the default
    inspect_concurrency_max: int = 2  # confined inspections at once per node; more get 503
    inspect_memory_base_bytes: int = 512 * 1024**2  # address space of one inspection, plus...
    inspect_memory_per_model_byte: int = 3  # ...this many bytes per byte of the upload
    upload_spool_dir: str = ""  # empty: instance/spool; uploads are staged here for inspection
    blob_grace_s: int = 3600  # unreferenced blobs younger than this are kept by the sweeper
    # Verified models kept on local disk by content hash, so a cold start reads no S3.
    blob_cache_dir: str = ""  # empty: instance/blob-cache
    blob_cache_bytes_max: int = 4 * 1024**3  # 0 switches the cache off

    # Sandbox (evaluation).
    eval_timeout_s: float = 10.0
    eval_body_bytes_max: int = 64 * 1024 * 1024
    eval_input_bytes_max: int = 64 * 1024 * 1024
    eval_input_elements_max: int = 16 * 1024 * 1024
    eval_output_bytes_max: int = 64 * 1024 * 1024
    # JSON costs a Python object per value on both sides, so it gets much smaller limits than
    # npz: larger tensors must travel as application/x-npz.
    eval_json_body_bytes_max: int = 16 * 1024 * 1024
    eval_json_input_bytes_max: int = 4 * 1024 * 1024
    eval_json_output_bytes_max: int = 4 * 1024 * 1024
    # Evaluations in flight on a node (all server processes together); beyond it 503.
    eval_concurrency_max: int = 16
    # How long a process may serve a version/listing/entitlement lookup from its cache: the
    # bound on how late a revoke or suspension made on another process or node is seen.
    eval_lookup_cache_ttl_s: float = 2.0
    # How long a leader of a group commit waits for other running calls' usage records (less
    # when commits have been quicker than that).
    usage_commit_window_s: float = 0.001
    sandbox_workers_max: int = 4
    sandbox_queue_max: int = 32
    sandbox_memory_budget_bytes: int = 8 * 1024**3
    sandbox_worker_memory_bytes_max: int = 2 * 1024**3
    sandbox_throttle_s: float = 30.0  # a caller whose call hit the deadline or crashed waits
    sandbox_quarantine_callers: int = 3  # distinct crashing callers before a version is held

    # Money.
    platform_fee_bps: int = 1000  # 10 % of every sale and royalty goes to the platform
    top_up_amount_minor_max: int = 100_000_000  # largest single wallet top-up
    metering_reserve_calls: int = 1000  # calls a metered licence reserves (and settles) at once
    # How often each node settles every licence's unsettled calls, so that an idle licence's
    # usage is charged within this bound (0: only at reservation boundaries and by the CLI).
    metering_settle_interval_s: float = 300.0
    statement_entries_max: int = 1000  # entries in one statement response

    # Pages for people.
    web_session_ttl_s: int = 12 * 3600  # a browser login lasts this long
    web_api_token_ttl_s: int = 600  # lifetime of the sandbox:run token a page gets for try-it
    login_failures_max: int = 10  # failed logins per address or per e-mail within the window
    login_failures_window_s: int = 300
    sample_bytes_max: int = 1024 * 1024  # largest sample input (npz) a vendor may attach
    # Payments through Stripe (MARKETPLACE_PAYMENTS=stripe); the first three keep Stripe's names.
    stripe_api_key: str = dataclasses.field(default="", repr=False)
    # Comma-separated: several secrets while one is rolled.
    stripe_webhook_secret: str = dataclasses.field(default="", repr=False)
    stripe_api_base: str = ""  # empty: Stripe's own API; any Stripe-compatible server otherwise
    stripe_test_key_allowed: bool = False  # production refuses sk_test_ keys unless this is set
    stripe_timeout_s: float = 30.0  # one HTTP request to the provider
    stripe_webhook_tolerance_s: int = 300  # how old a webhook signature may be
    payments_outbox_interval_s: float = 5.0  # how often each node sends due provider calls
    payments_outbox_batch_max: int = 50  # provider calls one worker pass claims
    payments_outbox_attempts_max: int = 10  # tries before a provider call waits for an admin
    payments_outbox_backoff_s: float = 2.0  # first retry delay; it doubles with every attempt
    payments_outbox_lease_s: float = 120.0  # a claimed call is another node's after this
    payments_reconcile_interval_s: float = 300.0  # how often each node polls open payments
    payments_reconcile_batch_max: int = 200  # open payments one reconciliation pass retrieves
    top_up_expiry_s: int = 86_400  # an unpaid top-up's payment is canceled after this (0: never)
    top_ups_open_max: int = 10  # unpaid top-ups one organisation may have at once
    payout_minimum_minor: int = 1000  # a vendor's payable balance below this is not paid out
    withdrawal_refunds_max: int = 10  # card payments one withdrawal may be refunded to

    # Evaluation jobs (a buyer's dataset against model versions, on a task queue).
    # The broker: amqp://USER:PASS@HOST:PORT/VHOST (RabbitMQ) or redis://HOST:PORT/DB. Empty: a
    # queue in files under instance/broker that every process of one node shares (no server).
    broker_url: str = dataclasses.field(default="", repr=False)
    job_queue_name: str = "jishi.jobs"
    dataset_bytes_max: int = 1024**3  # largest dataset (npz) upload
    dataset_samples_max: int = 1_000_000  # samples (first axis) of one dataset
    dataset_arrays_max: int = 64  # arrays in one dataset
    datasets_per_organization_max: int = 100  # datasets an organisation keeps at once
    job_versions_max: int = 8  # versions compared side by side in one job
    job_batch_samples_max: int = 256  # largest batch_size (samples per sandbox call)
    job_chunk_samples: int = 256  # samples per task; a multiple of the batch size is used
    jobs_active_per_organization_max: int = 10  # queued or running jobs of one organisation
    # The deadline of one sample in the sandbox; a batch gets this much per sample it holds.
    job_sample_timeout_s: float = 10.0
    # A started chunk whose worker stopped renewing its lease for this long is published again
    # (the worker renews it every third of that while it runs).
    job_lease_s: float = 60.0
    job_requeue_s: float = 300.0  # a published chunk no worker started is published again
    job_sweep_interval_s: float = 10.0  # how often each node looks for such chunks (0: never)
    job_results_bytes_max: int = 1024**3  # largest results download (npz) of one version
    # Largest outputs one sample of a job may give; a sample past it fails alone
    # (`sample_outputs_too_large`). A chunk holds its outputs in memory until they are stored,
    # so this times the chunk's samples bounds it: 256 MiB with the defaults.
    job_sample_outputs_bytes_max: int = 1024**2
    # Threads of the worker `jishi serve` runs in one of its processes (0: none; then only
    # `jishi worker` nodes run jobs).
    job_embedded_worker_threads: int = 2

    # Audit journal.
    audit_origin: str = ""  # empty: the host name and "/jishi"; names the log and its key
    audit_key_path: str = ""  # empty: generated under the instance folder (development only)
    audit_sequence_interval_s: float = 1.0  # how often each node sequences committed records
    audit_checkpoint_interval_records: int = 1000  # a checkpoint after this many new records
    audit_checkpoint_interval_s: int = 60  # or after this long with new records
    audit_records_page_max: int = 1000  # records in one page of GET /audit/records
    audit_exports_max: int = 4  # concurrent exports per node; more get 503

    def __post_init__(self) -> None:
        if self.env not in {"development", "testing", "production"}:
            raise ConfigError(
                f"MARKETPLACE_ENV must be development, testing or production, not {self.env!r}"
            )
        if self.payments not in {"offline", "stripe"}:
            raise ConfigError(
                f"MARKETPLACE_PAYMENTS must be offline or stripe, not {self.payments!r}"
            )
        if self.job_chunk_samples < 1 or self.job_batch_samples_max < 1:
            raise ConfigError(
                f"{env_name('job_chunk_samples')} and {env_name('job_batch_samples_max')} "
                "must be at least 1"
            )
        if self.job_sample_timeout_s <= 0 or self.job_lease_s < 3:
            raise ConfigError(
                f"{env_name('job_sample_timeout_s')} must be positive and "
                f"{env_name('job_lease_s')} at least 3"
            )
        if self.password_hash_concurrency_max < 1:
            raise ConfigError(f"{ENV_PREFIX}PASSWORD_HASH_CONCURRENCY_MAX must be at least 1")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if (
                field.name.endswith(
                    ("_max", "_s", "_bps", "_hops", "_minor", "_samples", "_threads")
                )
                and isinstance(value, int | float)
                and value < 0
            ):
                raise ConfigError(f"{env_name(field.name)} must not be negative")
        if self.payments_outbox_lease_s < 2 * self.stripe_timeout_s:
            # A lease shorter than a provider call would let a second node send the same call
            # while the first still waits for its answer.
            raise ConfigError(
                f"{env_name('payments_outbox_lease_s')} must be at least twice "
                f"{env_name('stripe_timeout_s')}"
            )

    @property
    def is_development(self) -> bool:
        return self.env in DEVELOPMENT_ENVS

    def check_production_secrets(self) -> None:
        """Refuse to run outside development with a development secret or simulated money."""
        if self.is_development:
            return
        if self.secret_key == DEVELOPMENT_SECRET_KEY or len(self.secret_key) < 32:
            raise ConfigError(
                "MARKETPLACE_SECRET_KEY is unset or a development default; "
                "set a random value of at least 32 characters to run in production"
            )
        if self.payments == "offline":
            # Offline top-ups credit wallets with money nobody paid; in production that is
            # real credit against real vendors' payouts.
            raise ConfigError(
                "MARKETPLACE_PAYMENTS=offline simulates payments and is refused in production; "
                "configure a real payment gateway (MARKETPLACE_PAYMENTS=stripe)"
            )
        if (
            self.payments == "stripe"
            and self.stripe_api_key.startswith(("sk_test_", "rk_test_"))
            and not self.stripe_test_key_allowed
        ):
            raise ConfigError(
                "STRIPE_API_KEY is a test-mode key; production takes live money only "
                "(set MARKETPLACE_STRIPE_TEST_KEY_ALLOWED=1 for a staging run in test mode)"
            )

    def check_payments(self) -> None:
        """Refuse a Stripe configuration that could not take or verify a payment."""
        if self.payments != "stripe":
            return
        if not self.stripe_api_key:
            raise ConfigError("MARKETPLACE_PAYMENTS=stripe needs STRIPE_API_KEY")
        if not self.webhook_secrets:
            raise ConfigError("MARKETPLACE_PAYMENTS=stripe needs STRIPE_WEBHOOK_SECRET")

    @property
    def webhook_secrets(self) -> list[str]:
        """The webhook signing secrets in force (more than one while a secret is rolled)."""
        return [s.strip() for s in self.stripe_webhook_secret.split(",") if s.strip()]

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from defaults, then the environment, then ``overrides``."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(env_name(field.name))
            if raw is not None:
                values[field.name] = _coerce(field.name, hints[field.name], raw)
        for key, value in (overrides or {}).items():
            name = key.lower()
            if name not in hints:
                continue  # plain Flask keys (TESTING, SERVER_NAME, ...) pass through to app.config
            values[name] = value
        return cls(**values)

    def instance_dir(self, default: str) -> Path:
        return Path(self.instance_path or default)


def _coerce(name: str, kind: Any, raw: str) -> Any:
    if kind is float or kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{env_name(name)} must be a number, not {raw!r}") from None
    if kind is int or kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{env_name(name)} must be an integer, not {raw!r}") from None
    if kind is bool or kind == "bool":
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    return raw


def env_name(field_name: str) -> str:
    """The environment variable a setting is read from."""
    return field_name.upper() if field_name in UNPREFIXED else ENV_PREFIX + field_name.upper()


def setting_names() -> list[str]:
    """Every environment variable the settings read, for the README check."""
    return [env_name(f.name) for f in dataclasses.fields(Settings)]


# --- Objects built from the settings ----------------------------------------------------------
# A service or a set of limits is a frozen dataclass built once from the settings. Its fields
# say which setting feeds them, so that the mapping stands beside each field's declaration and
# one function builds every such class.

# What feeds a field: the name of a setting, or a function computing the value from them.
SettingSource: TypeAlias = str | Callable[[Settings], Any]
_SOURCE = "marketplace.setting"
_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(Settings))
_Built = TypeVar("_Built", bound="DataclassInstance")


def setting(source: SettingSource) -> dict[str, SettingSource]:
    """Field metadata, ``field(metadata=setting(...))``: the field is fed by the setting named
    ``source`` or by what ``source`` computes from the settings (see :func:`build_from_settings`).
    """
    return {_SOURCE: source}


def build_from_settings(
    cls: type[_Built],
    settings: Settings,
    /,
    *,
    prefix: str = "",
    sources: Mapping[str, SettingSource] | None = None,
    **values: Any,
) -> _Built:
    """The dataclass ``cls`` with its fields fed by ``settings``.

    A field takes its value from ``values`` if it is there, else from its source: the one
    ``sources`` names for it, or the one its metadata declares (:func:`setting`). A field
    without a source is fed by the setting named ``prefix`` and the field's name, unless it has
    a default: then it keeps the default, so that a class defined outside the marketplace takes
    only the settings that ``sources`` lists for it.
    """
    sources = sources or {}
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in values:
            kwargs[f.name] = values[f.name]
            continue
        source: SettingSource | None = sources.get(f.name, f.metadata.get(_SOURCE))
        if source is None:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            source = prefix + f.name
            if source not in _SETTING_NAMES:
                raise TypeError(f"{cls.__name__}.{f.name}: no setting {source!r} feeds it")
        kwargs[f.name] = source(settings) if callable(source) else getattr(settings, source)
    return cls(**kwargs)


class FromSettings:
    """Base of the frozen dataclasses built once from the settings alone."""

    @classmethod
    def from_settings(cls: type[_Built], settings: Settings) -> _Built:
        return build_from_settings(cls, settings)

"""A stateful Stripe-compatible HTTP server for tests, driven by the real ``stripe`` SDK.

It keeps PaymentIntents, Accounts, Transfers, Refunds, Events and the platform balance in
memory and follows Stripe's documented behaviour where the marketplace relies on it:

- form-encoded requests with bracketed nested keys; JSON answers; lists newest first with
  ``limit``/``starting_after``/``created[gte]``; Stripe-shaped errors
  (``{"error": {"type", "code", "message", ...}}``) with the documented status codes;
- idempotent POSTs: the first answer to a key is saved once the endpoint starts executing and
  replayed for a repeat with the same parameters (``Idempotent-Replayed: true``); the same key
  with other parameters is a 400 ``idempotency_error``; a repeat while the first is running is
  a 409 ``idempotency_key_in_use``;
- test payment methods: ``pm_card_visa`` succeeds, ``pm_card_chargeDeclined`` and
  ``pm_card_visa_chargeDeclinedInsufficientFunds`` are declined (402 ``card_error``, the
  intent back in ``requires_payment_method`` with ``last_payment_error``);
- transfers need an account whose ``transfers`` capability is active and an available balance
  (``insufficient_capabilities_for_transfer``, ``balance_insufficient``); refunds never exceed
  what was captured minus earlier refunds (``amount_too_large``, ``charge_already_refunded``);
- events for every state change, delivered as webhooks signed like Stripe's
  (``Stripe-Signature: t=...,v1=...``, one ``v1`` per endpoint secret).

Faults are switchable per test: 500s before the work, timeouts after the work (the answer is
saved, then withheld past the client's deadline), and dropped, duplicated, held (late) and
reordered webhooks. It is a test peer, not product code.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

log = logging.getLogger(__name__)

API_VERSION = "2024-06-20"
OPEN_INTENT = ("requires_payment_method", "requires_confirmation", "requires_action", "processing")
DECLINES = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_visa_chargeDeclinedInsufficientFunds": "insufficient_funds",
}
SUCCEEDS = {"pm_card_visa", "pm_card_mastercard", "pm_card_bypassPending"}


class StripeFailure(Exception):
    """An error answer, shaped as Stripe's."""

    def __init__(self, status: int, type_: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, **extra}}


def _missing(kind: str, object_id: str, param: str = "id") -> StripeFailure:
    return StripeFailure(
        404,
        "invalid_request_error",
        f"No such {kind}: '{object_id}'",
        code="resource_missing",
        param=param,
    )


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracketed form keys (``metadata[a]``, ``expand[0]``) as nested dicts."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _int(params: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    raw = params.get(name)
    if raw is None:
        if required:
            raise StripeFailure(
                400,
                "invalid_request_error",
                f"Missing required param: {name}.",
                code="parameter_missing",
                param=name,
            )
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise StripeFailure(
            400,
            "invalid_request_error",
            f"Invalid integer: {raw}",
            code="parameter_invalid_integer",
            param=name,
        ) from None
    if value <= 0:
        raise StripeFailure(
            400,
            "invalid_request_error",
            "This value must be greater than or equal to 1.",
            code="amount_too_small",
            param=name,
        )
    return value


@dataclass
class Fault:
    method: str
    path_prefix: str
    # "500": fail before doing the work; "timeout": do the work, answer after the client's
    # deadline; "hang": do the work, answer only when the test calls unhang() (a client that
    # dies meanwhile never hears).
    mode: str
    times: int


@dataclass
class Delivery:
    event: dict[str, Any]
    attempts: int = 0


@dataclass
class WebhookFaults:
    drop: int = 0  # the next N events are never delivered
    duplicate: int = 0  # the next N events are delivered twice
    hold: bool = False  # keep deliveries back until release()
    event_types: set[str] | None = None  # only events of these types are affected


@dataclass
class _Saved:
    fingerprint: str
    status: int | None = None  # None while the first request still runs
    body: Any = None


@dataclass
class FakeStripe:
    """The server's state and switches; :meth:`start` serves it on 127.0.0.1."""

    api_key: str = "sk_test_fake_jishi"
    webhook_secrets: list[str] = field(default_factory=lambda: ["whsec_fake_jishi"])
    timeout_delay_s: float = 1.5  # how long a "timeout" fault withholds its answer
    refund_status: str = "succeeded"  # what new refunds start as: succeeded | pending

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.idempotency: dict[str, _Saved] = {}
        self.balance: dict[str, int] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, idempotency key
        self.webhook_faults = WebhookFaults()
        self.webhook_target: Callable[[bytes, dict[str, str]], int] | None = None
        self.queue: list[Delivery] = []
        self.held: list[Delivery] = []
        self.delivered: list[tuple[str, int]] = []  # event id, status
        self._seq = itertools.count(1)
        self._unhang = threading.Event()
        self.worked = threading.Event()  # set when a "hang" fault has done its work
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- Lifecycle and switches (for tests) -------------------------------------------------

    def start(self) -> FakeStripe:
        self._server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reset_switches(self) -> None:
        """Back to a well-behaved server (state is kept: ids never repeat)."""
        with self.lock:
            self.faults.clear()
            self.webhook_faults = WebhookFaults()
            self.webhook_target = None
            self.queue.clear()
            self.held.clear()
            self.refund_status = "succeeded"
            self.worked.clear()
        self.unhang()

    def unhang(self) -> None:
        """Let requests held by a "hang" fault answer."""
        self._unhang.set()

    def inject(self, method: str, path_prefix: str, mode: str, times: int = 1) -> None:
        """Make the next ``times`` matching requests fail: ``500`` or ``timeout``."""
        if mode not in ("500", "timeout", "hang"):
            raise ValueError(mode)
        if mode == "hang":
            self._unhang.clear()
        with self.lock:
            self.faults.append(Fault(method.upper(), path_prefix, mode, times))

    def _take_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and path.startswith(fault.path_prefix) and fault.times:
                    fault.times -= 1
                    return fault.mode
        return None

    # --- Webhooks -----------------------------------------------------------------------------

    def sign(self, payload: str, timestamp: int | None = None) -> str:
        """A ``Stripe-Signature`` header for ``payload``, one v1 per endpoint secret."""
        ts = int(time.time()) if timestamp is None else timestamp
        sigs = [
            hmac.new(s.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
            for s in self.webhook_secrets
        ]
        return ",".join([f"t={ts}", *(f"v1={sig}" for sig in sigs)])

    def _emit(self, type_: str, obj: dict[str, Any], request_key: str | None) -> None:
        event = {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "type": type_,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": f"req_{secrets.token_hex(7)}", "idempotency_key": request_key},
            "data": {"object": json.loads(json.dumps(obj))},
        }
        self.events.append(event)
        faults = self.webhook_faults
        if faults.event_types is not None and type_ not in faults.event_types:
            self.queue.append(Delivery(event))
            return
        if faults.drop:
            faults.drop -= 1
            return
        copies = 1
        if faults.duplicate:
            faults.duplicate -= 1
            copies = 2
        for _ in range(copies):
            (self.held if faults.hold else self.queue).append(Delivery(event))

    def release(self, *, reverse: bool = False) -> None:
        """Let held deliveries go (newest first with ``reverse``: out of order)."""
        with self.lock:
            held = list(reversed(self.held)) if reverse else list(self.held)
            self.held.clear()
            self.webhook_faults.hold = False
            self.queue.extend(held)

    def deliver(self, attempts_max: int = 3) -> list[tuple[str, int]]:
        """Deliver queued events now, in the calling thread; (event id, status) per delivery.

        A delivery that is not answered 2xx is tried again (Stripe retries for days; here a
        few times at once), then given up.
        """
        out = []
        while True:
            with self.lock:
                if not self.queue:
                    return out
                delivery = self.queue.pop(0)
                target = self.webhook_target
            if target is None:
                continue
            payload = json.dumps(delivery.event)
            headers = {"Stripe-Signature": self.sign(payload), "Content-Type": "application/json"}
            try:
                status = target(payload.encode(), headers)
            except Exception:
                log.exception("webhook delivery failed")
                status = 0
            delivery.attempts += 1
            out.append((delivery.event["id"], status))
            with self.lock:
                self.delivered.append((delivery.event["id"], status))
                if not 200 <= status < 300 and delivery.attempts < attempts_max:
                    self.queue.append(delivery)

    # --- Views for tests ----------------------------------------------------------------------

    def get(self, object_id: str) -> dict[str, Any]:
        with self.lock:
            return json.loads(json.dumps(self.objects[object_id]))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(json.dumps(o)) for o in self.objects.values() if o["object"] == kind]

    def create_account(self, *, transfers: str = "active") -> str:
        with self.lock:
            account = self._new(
                "acct",
                "account",
                {
                    "type": "express",
                    "capabilities": {"transfers": transfers},
                    "charges_enabled": transfers == "active",
                    "payouts_enabled": transfers == "active",
                    "metadata": {},
                },
            )
        return str(account["id"])

    def settle_refund(self, refund_id: str, status: str) -> None:
        """A pending refund succeeds or fails (failed: the money is the platform's again)."""
        with self.lock:
            refund = self.objects[refund_id]
            if refund["status"] != "pending":
                raise ValueError("only a pending refund settles")
            refund["status"] = status
            if status == "failed":
                refund["failure_reason"] = "expired_or_canceled_card"
                self.balance[refund["currency"]] += refund["amount"]
                intent = self.objects[refund["payment_intent"]]
                intent["_refunded"] -= refund["amount"]
                self._emit("refund.failed", self._public(refund), None)
            self._emit("refund.updated", self._public(refund), None)

    # --- HTTP ---------------------------------------------------------------------------------

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self._handle(request)
        return response(environ, start_response)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
        response = Response(json.dumps(body), status=status, mimetype="application/json")
        response.headers["Request-Id"] = f"req_{secrets.token_hex(7)}"
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    def _handle(self, request: Request) -> Response:
        method, path = request.method, request.path
        key = request.headers.get("Idempotency-Key")
        with self.lock:
            self.requests.append((method, path, key))
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            return self._json(
                401,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": "Invalid API Key provided.",
                    }
                },
            )
        fault = self._take_fault(method, path)
        if fault == "500":
            # Before the endpoint runs: nothing is done and nothing is saved for the key.
            return self._json(
                500, {"error": {"type": "api_error", "message": "An unknown error occurred."}}
            )
        if method == "POST":
            params = parse_form(list(request.form.items(multi=True)))
        else:
            params = parse_form(list(request.args.items(multi=True)))
        fingerprint = json.dumps([method, path, params], sort_keys=True)
        saved: _Saved | None = None
        if method == "POST" and key:
            scoped = f"{self.api_key}:{key}"
            with self.lock:
                saved = self.idempotency.get(scoped)
                if saved is None:
                    saved = self.idempotency[scoped] = _Saved(fingerprint)
                    first = True
                else:
                    first = False
            if not first:
                if saved.fingerprint != fingerprint:
                    return self._json(
                        400,
                        {
                            "error": {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used with the same "
                                "parameters they were first used with.",
                            }
                        },
                    )
                if saved.status is None:
                    return self._json(
                        409,
                        {
                            "error": {
                                "type": "invalid_request_error",
                                "code": "idempotency_key_in_use",
                                "message": "There is currently another in-progress request using this "
                                "Idempotent Key.",
                            }
                        },
                    )
                return self._json(
                    saved.status,
                    saved.body,
                    {"Idempotency-Key": key, "Idempotent-Replayed": "true"},
                )
        try:
            with self.lock:
                status, body = 200, self._route(method, path, params, key)
        except StripeFailure as exc:
            status, body = exc.status, exc.body
        if saved is not None:
            if status == 400 and body["error"].get("code") in (
                "parameter_missing",
                "parameter_invalid_integer",
            ):
                # Parameters that fail validation: the endpoint never ran; nothing is saved.
                with self.lock:
                    self.idempotency.pop(f"{self.api_key}:{key}", None)
            else:
                saved.status, saved.body = status, body
        if fault == "timeout":
            # The work is done and saved; the answer comes after the client stopped waiting.
            time.sleep(self.timeout_delay_s)
        elif fault == "hang":
            self.worked.set()
            self._unhang.wait(30)
        return self._json(status, body, {"Idempotency-Key": key} if key else None)

    def _route(self, method: str, path: str, params: dict[str, Any], key: str | None) -> Any:
        parts = path.strip("/").split("/")
        if parts[0] != "v1" or len(parts) < 2:
            raise StripeFailure(
                404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})."
            )
        resource, rest = parts[1], parts[2:]
        handler = getattr(self, f"_{method.lower()}_{resource}", None)
        if handler is None:
            raise StripeFailure(
                404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})."
            )
        return handler(rest, params, key)

    # --- Objects ------------------------------------------------------------------------------

    def _new(self, prefix: str, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        obj = {
            "id": f"{prefix}_{secrets.token_hex(12)}",
            "object": kind,
            "created": int(time.time()),
            "livemode": False,
            "_seq": next(self._seq),
            **fields,
        }
        self.objects[obj["id"]] = obj
        return obj

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _find(self, kind: str, object_id: str, param: str = "id") -> dict[str, Any]:
        obj = self.objects.get(object_id)
        if obj is None or obj["object"] != kind:
            raise _missing(kind, object_id, param)
        return obj

    def _list(
        self, kind: str, params: dict[str, Any], match: Callable[[dict[str, Any]], bool]
    ) -> Any:
        limit = min(int(params.get("limit", 10)), 100)
        created = params.get("created") or {}
        rows = sorted(
            (o for o in self.objects.values() if o["object"] == kind and match(o)),
            key=lambda o: o["_seq"],
            reverse=True,
        )
        if "gte" in created:
            rows = [o for o in rows if o["created"] >= int(created["gte"])]
        if params.get("starting_after"):
            ids = [o["id"] for o in rows]
            after = params["starting_after"]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        page = rows[:limit]
        return {
            "object": "list",
            "url": f"/v1/{kind}s",
            "has_more": len(rows) > limit,
            "data": [self._public(o) for o in page],
        }

    # PaymentIntents

    def _post_payment_intents(
        self, rest: list[str], params: dict[str, Any], key: str | None
    ) -> Any:
        if not rest:
            amount = _int(params, "amount")
            currency = str(params.get("currency", "")).lower()
            if len(currency) != 3:
                raise StripeFailure(
                    400,
                    "invalid_request_error",
                    "Invalid currency.",
                    code="parameter_invalid_string",
                    param="currency",
                )
            intent = self._new(
                "pi",
                "payment_intent",
                {
                    "amount": amount,
                    "amount_received": 0,
                    "amount_capturable": 0,
                    "currency": currency,
                    "status": "requires_payment_method",
                    "capture_method": "automatic",
                    "confirmation_method": "automatic",
                    "automatic_payment_methods": {"enabled": True}
                    if params.get("automatic_payment_methods")
                    else None,
                    "metadata": dict(params.get("metadata") or {}),
                    "description": params.get("description"),
                    "last_payment_error": None,
                    "latest_charge": None,
                    "payment_method": None,
                    "canceled_at": None,
                    "cancellation_reason": None,
                    "_refunded": 0,
                },
            )
            intent["client_secret"] = f"{intent['id']}_secret_{secrets.token_hex(12)}"
            self._emit("payment_intent.created", self._public(intent), key)
            if params.get("payment_method"):
                intent["status"] = "requires_confirmation"
                intent["payment_method"] = params["payment_method"]
            if str(params.get("confirm", "")).lower() == "true":
                return self._confirm(intent, params, key)
            return self._public(intent)
        intent = self._find("payment_intent", rest[0], "intent")
        if rest[1:] == ["confirm"]:
            return self._confirm(intent, params, key)
        if rest[1:] == ["cancel"]:
            if intent["status"] not in OPEN_INTENT:
                raise self._unexpected(intent, "cancel")
            intent["status"] = "canceled"
            intent["canceled_at"] = int(time.time())
            intent["cancellation_reason"] = params.get(
                "cancellation_reason", "requested_by_customer"
            )
            self._emit("payment_intent.canceled", self._public(intent), key)
            return self._public(intent)
        raise StripeFailure(404, "invalid_request_error", "Unrecognized request URL.")

    def _unexpected(self, intent: dict[str, Any], action: str) -> StripeFailure:
        return StripeFailure(
            400,
            "invalid_request_error",
            f"You cannot {action} this PaymentIntent because it has a status of {intent['status']}.",
            code="payment_intent_unexpected_state",
            payment_intent=self._public(intent),
        )

    def _confirm(self, intent: dict[str, Any], params: dict[str, Any], key: str | None) -> Any:
        if intent["status"] not in ("requires_payment_method", "requires_confirmation"):
            raise self._unexpected(intent, "confirm")
        method = params.get("payment_method") or intent.get("payment_method")
        if not method:
            raise StripeFailure(
                400,
                "invalid_request_error",
                "You must provide a payment method.",
                code="payment_intent_unexpected_state",
            )
        intent["payment_method"] = method
        if method in DECLINES:
            intent["status"] = "requires_payment_method"
            error = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": DECLINES[method],
                "message": "Your card was declined.",
            }
            intent["last_payment_error"] = error
            self._emit("payment_intent.payment_failed", self._public(intent), key)
            raise StripeFailure(
                402,
                "card_error",
                "Your card was declined.",
                code="card_declined",
                decline_code=DECLINES[method],
                payment_intent=self._public(intent),
            )
        if method not in SUCCEEDS:
            raise _missing("payment_method", method, "payment_method")
        intent["status"] = "succeeded"
        intent["amount_received"] = intent["amount"]
        intent["last_payment_error"] = None
        intent["latest_charge"] = f"ch_{secrets.token_hex(12)}"
        self.balance[intent["currency"]] = (
            self.balance.get(intent["currency"], 0) + intent["amount"]
        )
        self._emit("payment_intent.succeeded", self._public(intent), key)
        return self._public(intent)

    def _get_payment_intents(self, rest: list[str], params: dict[str, Any], key: str | None) -> Any:
        if rest:
            return self._public(self._find("payment_intent", rest[0], "intent"))
        return self._list("payment_intent", params, lambda o: True)

    # Accounts

    def _post_accounts(self, rest: list[str], params: dict[str, Any], key: str | None) -> Any:
        if rest:
            raise StripeFailure(404, "invalid_request_error", "Unrecognized request URL.")
        requested = ((params.get("capabilities") or {}).get("transfers") or {}).get("requested")
        active = str(requested).lower() == "true"
        account = self._new(
            "acct",
            "account",
            {
                "type": params.get("type", "express"),
                "capabilities": {"transfers": "active" if active else "inactive"},
                "charges_enabled": active,
                "payouts_enabled": active,
                "metadata": dict(params.get("metadata") or {}),
            },
        )
        return self._public(account)

    def _get_accounts(self, rest: list[str], params: dict[str, Any], key: str | None) -> Any:
        if not rest:
            return self._list("account", params, lambda o: True)
        return self._public(self._find("account", rest[0], "account"))

    # Transfers

    def _post_transfers(self, rest: list[str], params: dict[str, Any], key: str | None) -> Any:
        if rest:
            raise StripeFailure(404, "invalid_request_error", "Unrecognized request URL.")
        amount = _int(params, "amount")
        assert amount is not None
        currency = str(params.get("currency", "")).lower()
        destination = str(params.get("destination", ""))
        account = self.objects.get(destination)
        if account is None or account["object"] != "account":
            raise StripeFailure(
                400,
                "invalid_request_error",
                f"No such destination: '{destination}'",
                code="resource_missing",
                param="destination",
            )
        if account["capabilities"].get("transfers") != "active":
            raise StripeFailure(
                400,
                "invalid_request_error",
                "Your destination account needs to have at least one of the "
                "following capabilities enabled: transfers.",
                code="insufficient_capabilities_for_transfer",
                param="destination",
            )
        if self.balance.get(currency, 0) < amount:
            raise StripeFailure(
                400,
                "invalid_request_error",
                "You have insufficient available funds in your Stripe account.",
                code="balance_insufficient",
            )
        self.balance[currency] -= amount
        transfer = self._new(
            "tr",
            "transfer",
            {
                "amount": amount,
                "amount_reversed": 0,
                "currency": currency,
                "destination": destination,
                "destination_payment": f"py_{secrets.token_hex(12)}",
                "transfer_group": params.get("transfer_group"),
                "metadata": dict(params.get("metadata") or {}),
                "reversed": False,
            },
        )
        self._emit("transfer.created", self._public(transfer), key)
        return self._public(transfer)

    def _get_transfers(self, rest: list[str], params: dict[str, Any], key: str | None) -> Any:
        if rest:
            return self._public(self._find("transfer", rest[0], "transfer"))
        group, destination = params.get("transfer_group"), params.get("destination")
        return self._list(
            "transfer",
            params,
            lambda o: (
                (group is None or o["transfer_group"] == group)
                and (destination is None or o["destination"] == destination)
            ),
        )

    # Refunds

    def _post_refunds(self, rest: list[str], params: dict[str, Any], key: str | None) -> Any:
        if rest:
            raise StripeFailure(404, "invalid_request_error", "Unrecognized request URL.")
        intent = self._find(
            "payment_intent", str(params.get("payment_intent", "")), "payment_intent"
        )
        if intent["status"] != "succeeded":
            raise StripeFailure(
                400,
                "invalid_request_error",
                "This PaymentIntent does not have a successful charge to refund.",
                code="charge_not_refundable",
            )
        left = intent["amount_received"] - intent["_refunded"]
        amount = _int(params, "amount", required=False) or left
        if left == 0:
            raise StripeFailure(
                400,
                "invalid_request_error",
                "Charge has already been refunded.",
                code="charge_already_refunded",
            )
        if amount > left:
            raise StripeFailure(
                400,
                "invalid_request_error",
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                code="amount_too_large",
                param="amount",
            )
        intent["_refunded"] += amount
        self.balance[intent["currency"]] -= amount
        refund = self._new(
            "re",
            "refund",
            {
                "amount": amount,
                "currency": intent["currency"],
                "payment_intent": intent["id"],
                "charge": intent["latest_charge"],
                "status": self.refund_status,
                "reason": params.get("reason"),
                "failure_reason": None,
                "metadata": dict(params.get("metadata") or {}),
            },
        )
        self._emit("refund.created", self._public(refund), key)
        return self._public(refund)

    def _get_refunds(self, rest: list[str], params: dict[str, Any], key: str | None) -> Any:
        if rest:
            return self._public(self._find("refund", rest[0], "refund"))
        intent = params.get("payment_intent")
        return self._list(
            "refund", params, lambda o: intent is None or o["payment_intent"] == intent
        )

    # Events and balance

    def _get_events(self, rest: list[str], params: dict[str, Any], key: str | None) -> Any:
        if rest:
            for event in self.events:
                if event["id"] == rest[0]:
                    return event
            raise _missing("event", rest[0])
        limit = min(int(params.get("limit", 10)), 100)
        rows = list(reversed(self.events))
        if params.get("type"):
            rows = [e for e in rows if e["type"] == params["type"]]
        return {
            "object": "list",
            "url": "/v1/events",
            "has_more": len(rows) > limit,
            "data": rows[:limit],
        }

    def _get_balance(self, rest: list[str], params: dict[str, Any], key: str | None) -> Any:
        return {
            "object": "balance",
            "livemode": False,
            "available": [{"amount": a, "currency": c} for c, a in sorted(self.balance.items())],
            "pending": [],
        }

"""GET /api/v1/orders: a buyer's purchases and a vendor's sales, and nobody else's."""

from __future__ import annotations

from tests.marketplace.licensing.builders import fund_wallet, make_offer


def buy(client, org, catalog, key):
    resp = client.post(
        f"/api/v1/offers/{catalog.offer_id}/purchase",
        json={"accept_terms_sha256": catalog.terms_sha256},
        headers=org.headers("licenses:write", **{"Idempotency-Key": key}),
    )
    assert resp.status_code == 201, resp.json
    return resp.json


def test_orders_by_side_newest_first_and_paged(client, db_session, make_org):
    vendor, buyer, bystander = (
        make_org(["vendor"]),
        make_org(["buyer"]),
        make_org(["buyer", "vendor"]),
    )
    subscriptions = make_offer(
        db_session, vendor.id, kind="subscription", term_days=30, price_minor=1_000
    )
    fund_wallet(db_session, buyer.id, 10_000)
    orders = [buy(client, buyer, subscriptions, f"k{i}") for i in range(3)]
    mine = client.get("/api/v1/orders?role=buyer", headers=buyer.headers("ledger:read")).json
    assert [o["id"] for o in mine["items"]] == [o["id"] for o in reversed(orders)]
    assert mine["total"] == 3 and {o["role"] for o in mine["items"]} == {"buyer"}
    assert mine["items"][0]["listing_id"] == subscriptions.listing_id
    assert mine["items"][0]["listing_name"] == "Defect detector"
    sales = client.get("/api/v1/orders?role=vendor&page_size=2", headers=vendor.headers()).json
    assert sales["total"] == 3 and len(sales["items"]) == 2 and sales["page_size"] == 2
    assert {o["buyer_organization_id"] for o in sales["items"]} == {buyer.id}
    assert {o["role"] for o in sales["items"]} == {"vendor"}
    page2 = client.get(
        "/api/v1/orders?role=vendor&page_size=2&page=2", headers=vendor.headers()
    ).json
    assert [o["id"] for o in page2["items"]] == [orders[0]["id"]]
    assert client.get("/api/v1/orders?role=buyer", headers=vendor.headers()).json["total"] == 0
    both = client.get("/api/v1/orders", headers=bystander.headers()).json
    assert both == {"items": [], "total": 0, "page": 1, "page_size": 20}


def test_orders_need_ledger_read_and_a_valid_query(client, make_org):
    buyer = make_org(["buyer"])
    narrow = client.get("/api/v1/orders", headers=buyer.headers("models:read"))
    assert narrow.status_code == 403 and narrow.json["code"] == "insufficient_scope"
    assert client.get("/api/v1/orders").status_code == 401
    bad = client.get("/api/v1/orders?role=admin", headers=buyer.headers())
    assert bad.status_code == 422 and bad.json["code"] == "validation_failed"

"""Listings: creation, model cards, ownership, visibility and search."""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from flask.testing import FlaskClient

from marketplace.catalog.markdown import render_model_card
from tests.conftest import Org
from tests.marketplace.catalog.conftest import listing_body


def test_create_and_read_a_listing(client: FlaskClient, vendor: Org) -> None:
    resp = client.post(
        "/api/v1/models",
        json=listing_body(name="钢材缺陷检测 Steel Defects", filing_number="网信算备 1101-2026"),
        headers=vendor.headers("models:write"),
    )
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert body["slug"] == "steel-defects"
    assert body["vendor"]["id"] == vendor.id
    assert body["tags"] == ["vision", "manufacturing"]
    assert body["status"] == "active"
    assert body["filing_number"] == "网信算备 1101-2026"
    assert body["description_html"].startswith("<h1>Steel defects</h1>")
    anonymous = client.get(f"/api/v1/models/{body['id']}")
    assert anonymous.status_code == 200
    assert anonymous.json["versions"] == [] and anonymous.json["offers"] == []
    # Same name again: a different slug.
    again = client.post("/api/v1/models", json=listing_body(name="Steel Defects"),
                        headers=vendor.headers("models:write"))  # fmt: skip
    assert again.json["slug"] != body["slug"] and again.json["slug"].startswith("steel-defects")


@pytest.mark.parametrize(
    "patch",
    [
        {"name": ""},
        {"task": "Not A Task!"},
        {"tags": ["a b"]},
        {"tags": ["x"] * 21},
        {"unknown": 1},
        {"status": "suspended"},
    ],
)
def test_invalid_changes_are_refused(
    client: FlaskClient, vendor: Org, listing: dict[str, Any], patch: dict[str, Any]
) -> None:
    resp = client.patch(
        f"/api/v1/models/{listing['id']}", json=patch, headers=vendor.headers("models:write")
    )
    assert resp.status_code == 422
    assert resp.json["code"] == "validation_failed"


def test_owner_patches_others_get_404(
    client: FlaskClient, vendor: Org, make_org: Callable[..., Org], listing: dict[str, Any]
) -> None:
    url = f"/api/v1/models/{listing['id']}"
    resp = client.patch(
        url,
        json={"summary": "Now faster.", "tags": ["Vision", "steel"], "description_md": "*new*"},
        headers=vendor.headers("models:write"),
    )
    assert resp.status_code == 200, resp.json
    assert resp.json["summary"] == "Now faster."
    assert resp.json["tags"] == ["vision", "steel"]
    assert resp.json["description_html"] == "<p><em>new</em></p>\n"
    other = make_org(["vendor"])
    resp = client.patch(url, json={"summary": "mine now"}, headers=other.headers("models:write"))
    assert resp.status_code == 404
    assert resp.json["code"] == "model_not_found"
    missing = client.patch(
        "/api/v1/models/999999", json={"summary": "x"}, headers=other.headers("models:write")
    )
    assert missing.status_code == 404 and missing.json["code"] == "model_not_found"
    assert client.get(url).json["summary"] == "Now faster."


def test_buyers_cannot_create_listings(client: FlaskClient, buyer: Org) -> None:
    resp = client.post("/api/v1/models", json=listing_body(), headers=buyer.headers())
    assert resp.status_code == 403
    assert resp.json["code"] == "insufficient_scope"
    assert client.post("/api/v1/models", json=listing_body()).status_code == 401


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@pytest.mark.parametrize(
    "markdown",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "[click](javascript:alert(1))",
        "[click](JaVaScRiPt:alert(1))",
        "[click](  javascript:alert(1))",
        "![x](javascript:alert(1))",
        '<a href="javascript:alert(1)" onclick="x()">a</a>',
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "<svg onload=alert(1)>",
        "<iframe src=//evil>",
        "[x](vbscript:msgbox)",
    ],
)
def test_model_cards_are_sanitised(markdown: str) -> None:
    parser = _Tags()
    parser.feed(render_model_card("# Card\n\n" + markdown + "\n\n[ok](https://example.com)"))
    names = [t for t, _ in parser.tags]
    assert "script" not in names and "iframe" not in names and "svg" not in names
    for _tag, attrs in parser.tags:
        assert not any(name.startswith("on") for name in attrs)
        for name in ("href", "src"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("javascript:", "data:", "vbscript:")), attrs
    assert ("a", {"href": "https://example.com", "rel": "nofollow noopener noreferrer"}) in (
        parser.tags
    )


def test_search_filters_sorts_and_pages(
    client: FlaskClient, vendor: Org, make_org: Callable[..., Org], create_listing: Any
) -> None:
    other = make_org(["vendor"])
    a = create_listing(vendor, name="Alpha crack finder", task="detection", tags=["steel"])
    b = create_listing(vendor, name="Beta weld checker", summary="Finds CRACKS in welds",
                       task="detection", tags=["welding"])  # fmt: skip
    c = create_listing(other, name="Gamma remote sensing", task="segmentation",
                       tags=["satellite", "遥感"])  # fmt: skip

    def ids(**params: Any) -> list[int]:
        resp = client.get("/api/v1/models", query_string=params)
        assert resp.status_code == 200, resp.json
        return [item["id"] for item in resp.json["items"]]

    assert set(ids()) >= {a["id"], b["id"], c["id"]}
    assert ids(q="crack", sort="name") == [a["id"], b["id"]]  # name, or summary, any case
    assert ids(q="遥感") == [c["id"]]  # tags, in Chinese too
    assert ids(q="weld checker") == [b["id"]]  # every word must match
    assert ids(q="100%_") == []  # LIKE wildcards are literal
    assert ids(task="detection", sort="oldest") == [a["id"], b["id"]]
    assert ids(tag="steel") == [a["id"]]
    assert ids(tag="stee") == []  # tags match whole
    assert ids(vendor=other.id) == [c["id"]]
    assert ids(vendor=vendor.id, sort="newest") == [b["id"], a["id"]]
    page = client.get("/api/v1/models", query_string={"vendor": vendor.id, "page_size": 1,
                                                      "page": 2, "sort": "oldest"}).json  # fmt: skip
    assert page["total"] == 2 and page["page"] == 2 and page["page_size"] == 1
    assert [i["id"] for i in page["items"]] == [b["id"]]
    capped = client.get("/api/v1/models", query_string={"page_size": 10_000}).json
    assert capped["page_size"] == 100
    for bad in ({"sort": "price"}, {"page": 0}, {"page_size": 0}, {"vendor": "x"}, {"zz": 1}):
        resp = client.get("/api/v1/models", query_string=bad)
        assert resp.status_code == 422, bad


def test_suspended_listings_are_hidden_from_others(
    app: Any, client: FlaskClient, vendor: Org, buyer: Org, listing: dict[str, Any]
) -> None:
    from marketplace.catalog import services

    session = app.extensions["db"].session()
    services.set_listing_status(session=session, listing_id=listing["id"], status="suspended")
    session.close()
    url = f"/api/v1/models/{listing['id']}"
    assert client.get(url).status_code == 404
    assert client.get(url, headers=buyer.headers()).status_code == 404
    assert client.get(url, headers=vendor.headers()).json["status"] == "suspended"
    assert listing["id"] not in [i["id"] for i in client.get("/api/v1/models").json["items"]]
    mine = client.get("/api/v1/models", headers=vendor.headers()).json["items"]
    assert listing["id"] in [i["id"] for i in mine]


def test_an_invalid_token_on_a_public_read_is_401(client: FlaskClient, listing: Any) -> None:
    resp = client.get(f"/api/v1/models/{listing['id']}", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401

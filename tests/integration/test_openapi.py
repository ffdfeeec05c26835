"""The OpenAPI document (API.md: ``The OpenAPI document is served at /openapi.json``)
describes the bodies API.md lists, field by field: a client generated from it has the
types it needs, even where the app validates later than the envelope (batch items, one by
one) or returns a value as stored (a stream's settings)."""

from __future__ import annotations

from typing import Any

import pytest

#: API.md, "Settings fields": the limits every stream type takes.
LIMITS = {"max_per_second", "max_per_recipient_per_hour", "max_per_day", "quiet_hours"}


def _schema(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow ``$ref`` and a nullable ``anyOf`` to the object schema."""
    while True:
        if "$ref" in node:
            node = doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
        elif "anyOf" in node:
            node = next(n for n in node["anyOf"] if n.get("type") != "null")
        else:
            return node


def _answer(doc: dict[str, Any], path: str, verb: str, status: str = "200") -> dict[str, Any]:
    response = doc["paths"][path][verb]["responses"][status]
    return _schema(doc, response["content"]["application/json"]["schema"])


def test_openapi_documents_the_send_item_fields(client):
    """API.md: ``POST /v1/messages`` takes ``{"messages": [{"internal_id", "sender",
    "recipient_phone", "message_content", "send_at", "callback_url"}]}`` (plus
    ``event_key``/``variables``, WhatsApp's ``template``/``media``).

    The envelope takes any JSON value per item, so that a bad item is rejected alone
    (invariant 7); the document must still give the item its fields. Described only as
    ``{"type": "object"}``, an item told a generated client nothing, not ``send_at``
    (scheduling) nor ``validity_seconds`` (expiry): it could not learn how to schedule or
    expire a message."""
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/v1/messages"]["post"]["requestBody"]["content"]["application/json"]
    envelope = _schema(doc, body["schema"])
    item = _schema(doc, envelope["properties"]["messages"]["items"])
    documented = {"internal_id", "sender", "recipient_phone", "message_content", "send_at"}
    wanted = documented | {"callback_url", "validity_seconds"}
    wanted |= {"event_key", "variables", "template", "media"}
    missing = wanted - item.get("properties", {}).keys()
    assert not missing, f"/openapi.json send item lacks {sorted(missing)}: {item}"
    assert "recipient_phone" in item.get("required", []), item


@pytest.mark.parametrize("verb", ["get", "put"])
def test_openapi_documents_the_settings_the_settings_route_returns(client, verb):
    """API.md: ``GET/PUT /api/v1/streams/{id}/settings`` -- ``OTP code settings and sending
    limits``; the limits are ``max_per_second``, ``max_per_recipient_per_hour``,
    ``max_per_day`` and ``quiet_hours``.

    The routes return the settings as stored; typed as any object, their 200 answer showed a
    client none of the limits it reads back (they were only in the request body's
    ``StreamSettings``)."""
    doc = client.get("/openapi.json").json()
    schema = _answer(doc, "/api/v1/streams/{stream_id}/settings", verb)
    missing = LIMITS - schema.get("properties", {}).keys()
    assert not missing, f"{verb.upper()} settings answer lacks {sorted(missing)}: {schema}"


def test_openapi_documents_a_streams_own_settings(client):
    """API.md: ``GET /api/v1/streams/{id}`` -- one stream: ``id``, ..., ``settings``. The
    stream's ``settings`` are the same stored settings, and typed the same way."""
    doc = client.get("/openapi.json").json()
    stream = _answer(doc, "/api/v1/streams/{stream_id}", "get")
    settings = _schema(doc, stream["properties"]["settings"])
    missing = LIMITS - settings.get("properties", {}).keys()
    assert not missing, f"a stream's settings lack {sorted(missing)}: {settings}"

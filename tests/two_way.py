"""Helpers for the two-way and WhatsApp tests: signing as a provider or customer would, and
streams set up through the API."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.testclient import TestClient

from core.signatures import SIGNATURE_HEADER, streams_signature
from tests.conftest import auth

PHONE_NUMBER_ID = "106540352242922"
ACCESS_TOKEN = "EAAGm0PX4ZCpsBAKZC1234abcd"
APP_SECRET = "d8c1e5f0a3b24c6e9f7a1b2c3d4e5f60"
VERIFY_TOKEN = "verify-me-please"


def signing_secret(client: TestClient, key: str, stream_id: str) -> str:
    response = client.get(f"/api/v1/streams/{stream_id}/webhooks", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()["callback"]["signing_secret"]


def post_signed_inbound(
    client: TestClient,
    stream_id: str,
    secret: str,
    body: dict[str, Any],
    *,
    timestamp: int | None = None,
    tamper: bool = False,
) -> Any:
    raw = json.dumps(body).encode()
    header = streams_signature(
        secret, raw, timestamp if timestamp is not None else int(time.time())
    )
    if tamper:
        raw = raw.replace(b"Hello", b"Hallo").replace(b"STOP", b"STAP")
    return client.post(
        f"/webhooks/{stream_id}/inbound",
        content=raw,
        headers={SIGNATURE_HEADER: header, "Content-Type": "application/json"},
    )


def whatsapp_stream(
    make_stream: Any,
    client: TestClient,
    key: str,
    phone_number_id: str = PHONE_NUMBER_ID,
    **fields: Any,
) -> dict[str, Any]:
    """A WhatsApp stream with its Cloud API set-up saved (so it is ready)."""
    stream = make_stream(
        **{"name": "WhatsApp", "type": "whatsapp", "default_sender": None, **fields}
    )
    response = client.put(
        f"/api/v1/streams/{stream['id']}/whatsapp",
        json={
            "business_account_id": "102290129340398",
            "phone_number_id": phone_number_id,
            "access_token": ACCESS_TOKEN,
            "app_secret": APP_SECRET,
            "verify_token": VERIFY_TOKEN,
        },
        headers=auth(key),
    )
    assert response.status_code == 200, response.text
    return stream


def add_template(client: TestClient, key: str, stream_id: str, **fields: Any) -> dict[str, Any]:
    body = {
        "name": "order_shipped",
        "language": "en_US",
        "category": "utility",
        "body": "Hi {{1}}, your order {{2}} has shipped.",
        **fields,
    }
    response = client.post(
        f"/api/v1/streams/{stream_id}/whatsapp/templates", json=body, headers=auth(key)
    )
    assert response.status_code == 201, response.text
    return response.json()

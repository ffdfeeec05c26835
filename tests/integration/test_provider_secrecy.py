"""Invariant 8 for provider credentials: a WhatsApp access token and app secret, the HTTP
provider's auth header and the webhook signing secrets never reach a log line or an error
body, even when the provider refuses them."""

from __future__ import annotations

import pytest

from core.logs import configure_logging
from core.settings import WhatsAppApiSettings
from tests.conftest import auth
from tests.fakes.server import serve
from tests.fakes.whatsapp_cloud import VERSION, FakeWhatsAppCloud
from tests.processes import wait_until
from tests.two_way import ACCESS_TOKEN, APP_SECRET, PHONE_NUMBER_ID, signing_secret, whatsapp_stream
from workers.pool import start_worker


@pytest.fixture
def cloud():
    fake = FakeWhatsAppCloud(tokens={PHONE_NUMBER_ID: "the-real-token-is-elsewhere"})
    with serve(fake.app()) as base:
        fake.base_url = base
        yield fake


@pytest.fixture
def settings(settings, cloud):
    return settings.model_copy(
        update={
            "whatsapp": WhatsAppApiSettings(
                api_base_url=cloud.base_url, api_version=VERSION, _env_file=None
            )
        }
    )


def test_invariant_8_provider_credentials_never_reach_logs(
    restore_logging, client, runtime, make_stream, account_key, capfd
):
    configure_logging("DEBUG", "json")
    stream = whatsapp_stream(make_stream, client, account_key)
    secret = signing_secret(client, account_key, stream["id"])
    response = client.post(
        "/v1/messages",
        json={"messages": [{"recipient_phone": "+972524265292", "message_content": "hi"}]},
        headers=auth(stream["token"]),
    )
    message_id = response.json()["results"][0]["message_id"]
    worker = start_worker(runtime, ["whatsapp"], threads=1)
    try:
        assert wait_until(
            lambda: (
                client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()[
                    "status"
                ]
                == "failed"
            ),
            15,
        )
    finally:
        worker.stop(timeout=5_000)
    shown = client.get(f"/api/v1/streams/{stream['id']}/whatsapp", headers=auth(account_key))
    message = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key))
    logged = "".join(capfd.readouterr())
    assert '"event": "whatsapp_credentials_refused"' in logged
    assert '"event": "whatsapp_setup_saved"' in logged
    for text in (logged, shown.text, message.text):
        for secret_value in (ACCESS_TOKEN, APP_SECRET, secret, secret[6:20]):
            assert secret_value not in text

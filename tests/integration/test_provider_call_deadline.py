"""A provider call's deadline (``workers.providers.http_client.post_within``) against a
local server that answers in parts: an answer complete when its last part comes in, just
past the deadline, is the carrier's answer, not a timeout."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.settings import WhatsAppApiSettings
from workers.providers.base import OutboundMessage
from workers.providers.whatsapp_cloud import WhatsAppCloudProvider, WhatsAppCredentials

ANSWER = json.dumps({"messaging_product": "whatsapp", "messages": [{"id": "wamid.TAKEN"}]})


class _AnswersInTwoParts(BaseHTTPRequestHandler):
    """Meta takes the message and answers 200 at once; its body comes in two parts, each
    0.55 s apart: every read is well inside the 1 s timeout, the whole answer is complete
    1.1 s into the call."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = ANSWER.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        for part in (body[:10], body[10:]):
            time.sleep(0.55)
            self.wfile.write(part)
            self.wfile.flush()


class _Credentials:
    def credentials(self, stream_id: str) -> WhatsAppCredentials:
        return WhatsAppCredentials(phone_number_id="1234", access_token="token")

    def report_problem(self, stream_id: str, code: str, message: str) -> None:
        pass


@pytest.fixture
def meta() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AnswersInTwoParts)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_complete_whatsapp_answer_read_just_past_the_deadline_is_not_thrown_away(meta):
    """Meta's whole answer (200, all its Content-Length, the message's wamid) arrives 1.1 s
    into a call with a 1 s timeout, each part well inside the read timeout: the message is
    taken, with its wamid. Thrown away as a timeout, it would become an unknown outcome,
    and a replay of its dead letter would send it twice."""
    settings = WhatsAppApiSettings(api_base_url=meta, timeout_seconds=1.0)
    provider = WhatsAppCloudProvider(settings, _Credentials())
    outbound = OutboundMessage(
        reference="m-1",
        sender=None,
        recipient="+15550000001",
        body="hello",
        segments=1,
        encoding="gsm7",
        stream_id="s-1",
    )
    try:
        accepted = provider.send(outbound)
    finally:
        provider.close()
    assert accepted.provider_message_id == "wamid.TAKEN"

"""A provider call's deadline (``workers.providers.http_client.post_within``) against a
local server that answers in parts: an answer complete when its last part comes in, just
past the deadline, is the carrier's answer, not a timeout."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from core.settings import WhatsAppApiSettings
from workers.providers.base import OutboundMessage
from workers.providers.http_client import post_within, provider_client
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


def _serve(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def run() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            try:
                answer(conn)
            except OSError:
                pass
            finally:
                conn.close()

    threading.Thread(target=run, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _drips_chunked_with_small_length(conn: socket.socket) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n"
    )
    for _ in range(12):  # 12 x 0.25 s: every read inside a 0.5 s read timeout
        conn.sendall(b"1\r\n \r\n")
        time.sleep(0.25)
    conn.sendall(b"2\r\n{}\r\n0\r\n\r\n")


@pytest.fixture
def dripping() -> Iterator[str]:
    yield from _serve(_drips_chunked_with_small_length)


def test_a_chunked_answer_with_a_stray_content_length_still_ends_by_the_deadline(dripping):
    """A chunked answer dripped a byte every 0.25 s, with a stray Content-Length of 1
    beside it: HTTP/1.1 frames the body by its chunks, so that length says nothing about
    when it ends, and the deadline still cuts the call off."""
    client = provider_client(0.5)
    began = time.monotonic()
    try:
        with pytest.raises(httpx.ReadTimeout):
            post_within(client, dripping, 0.5, json={}, headers={})
    finally:
        client.close()
    assert time.monotonic() - began < 1.5


def _gzip_in_two_parts(conn: socket.socket) -> None:
    body = gzip.compress(b'{"id": "taken"}' * 50)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    conn.sendall(body[:10])
    time.sleep(0.7)
    conn.sendall(body[10:])


@pytest.fixture
def gzipped() -> Iterator[str]:
    yield from _serve(_gzip_in_two_parts)


def test_a_complete_gzip_answer_past_the_deadline_is_kept(gzipped):
    """A gzipped answer, complete 0.7 s into a 0.5 s call: its Content-Length counts the
    compressed bytes, as they are read, so it is kept, and decoded."""
    client = provider_client(1.0)
    try:
        response = post_within(client, gzipped, 0.5, json={}, headers={})
    finally:
        client.close()
    assert response.content == b'{"id": "taken"}' * 50

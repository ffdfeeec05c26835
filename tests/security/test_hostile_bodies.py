"""Issue 8, item 6: hostile bodies. A 10 MB body, deeply nested JSON, invalid UTF-8, NUL
characters, overlong phone numbers and unicode tricks get a clear 4xx (413, or 422 naming
the field) and store nothing; none is a 500.

The size limit is tested through a real ``streams serve`` on a socket, as a client would
hit it: with a Content-Length over the limit (refused from the headers alone, before any
body byte is read) and with a chunked body that has no Content-Length (refused once the
limit is passed). The rest runs in process.

Unicode decisions (``schemas/text_rules.py``, ``core/phones.py``): phone numbers take only
ASCII digits and separators (fullwidth digits, zero-width and direction characters are
refused, not normalised: a number must be exactly what the caller meant); tags are
NFKC-normalised and refuse invisible characters; names keep any script but refuse
control and text-direction characters.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from sqlalchemy import func, select

from schemas.tables import Message, Stream, StreamTag
from tests.conftest import auth, message
from tests.processes import ingress
from tests.two_way import post_signed_inbound, signing_secret

TEN_MB = 10 * 1024 * 1024


def count(runtime, table) -> int:
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def send(client, token, *items, raw: bytes | None = None):
    if raw is not None:
        return client.post(
            "/v1/messages",
            content=raw,
            headers={**auth(token), "Content-Type": "application/json"},
        )
    return client.post("/v1/messages", json={"messages": list(items)}, headers=auth(token))


def assert_error(response, status: int, code: str | None = None, field: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) <= {"code", "message", "field"} and error["message"]
    if code:
        assert error["code"] == code
    if field:
        assert error.get("field") == field


# ---------------------------------------------------------------- 10 MB through a socket


def http_exchange(port: int, head: bytes, body_chunks=(), deadline: float = 30) -> bytes:
    """Send ``head`` then the chunks (stopping quietly if the server closes), and return
    everything the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=deadline) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the body was all sent
        answer = b""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                part = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not part:
                break
            answer += part
            if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1].endswith(b"}"):
                break
        return answer


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, json.loads(body)


@pytest.mark.slow
def test_a_10_mb_body_is_413_before_parsing_on_a_real_socket(
    settings, runtime, make_stream, tmp_path
):
    stream = make_stream()
    with ingress(settings, tmp_path / "ingress.log") as base:
        port = int(base.rsplit(":", 1)[1])
        request = (
            "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {stream['token']}\r\nContent-Type: application/json\r\n"
        )

        # Declared: refused from the headers alone; not one body byte is sent.
        declared = http_exchange(port, f"{request}Content-Length: {TEN_MB}\r\n\r\n".encode())

        # Not declared (chunked): refused once the limit is passed while streaming.
        piece = b"x" * 65536
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        opening = b'{"messages": [{"recipient_phone": "+972524265292", "message_content": "'
        chunks = [f"{len(opening):x}\r\n".encode() + opening + b"\r\n"]
        chunks += [chunk] * (TEN_MB // len(piece))
        chunked = http_exchange(
            port, f"{request}Transfer-Encoding: chunked\r\n\r\n".encode(), chunks
        )

    for answer in (declared, chunked):
        status, body = status_and_body(answer)
        assert status == 413, answer[:300]
        assert body["error"]["code"] == "body_too_large"
    assert count(runtime, Message) == 0


# ---------------------------------------------------------------- nesting, bytes, NUL


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_json_is_422_not_a_recursion_error(
    client, runtime, make_stream, account_key, depth
):
    stream = make_stream()
    nested = "[" * depth + "]" * depth
    as_messages = f'{{"messages": {nested}}}'.encode()
    as_variables = (
        '{"messages": [{"recipient_phone": "+972524265292", "event_key": "k", "variables": '
        + '{"a": ' * depth
        + "1"
        + "}" * depth
        + "}]}"
    ).encode()

    for raw in (as_messages, as_variables):
        assert_error(send(client, stream["token"], raw=raw), 422, "invalid_json")
    created = client.post(
        "/api/v1/streams",
        content=f'{{"name": "n", "type": "marketing", "tags": {nested}}}'.encode(),
        headers={**auth(account_key), "Content-Type": "application/json"},
    )
    assert_error(created, 422, "invalid_json")
    assert count(runtime, Message) == 0
    assert count(runtime, Stream) == 1


def test_an_integer_of_5000_digits_is_422_invalid_json(client, runtime, make_stream, account_key):
    """Python reads integers of at most 4,300 digits; a longer one is a body that does not
    parse, on the management API and the send API alike."""
    stream = make_stream()
    big = b"9" * 5000
    settings = client.put(
        f"/api/v1/streams/{stream['id']}/settings",
        content=b'{"max_per_second": ' + big + b"}",
        headers={**auth(account_key), "Content-Type": "application/json"},
    )
    assert_error(settings, 422, "invalid_json")
    item = b'{"recipient_phone": "+972524265292", "message_content": "x", "validity_seconds": '
    sent = send(client, stream["token"], raw=b'{"messages": [' + item + big + b"}]}")
    assert_error(sent, 422, "invalid_json")
    assert count(runtime, Message) == 0


def test_deeply_nested_json_on_a_signed_webhook_is_422(client, runtime, make_stream, account_key):
    stream = make_stream(
        name="Chat", type="two_way", demo=True, settings={"callback_url": "https://a.example/h"}
    )
    secret = signing_secret(client, account_key, stream["id"])
    from core.signatures import SIGNATURE_HEADER, streams_signature

    raw = b"[" * 100_000 + b"]" * 100_000
    response = client.post(
        f"/webhooks/{stream['id']}/inbound",
        content=raw,
        headers={SIGNATURE_HEADER: streams_signature(secret, raw, int(time.time()))},
    )
    assert_error(response, 422, "invalid_json")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": [{"recipient_phone": "+972524265292", "message_content": "\xff\xfe"}]}',
        b'{"messages": [{"recipient_phone": "+972524265292", "message_content": "\xc3\x28"}]}',
        b"\xef\xbb\xbf\xff",
    ],
)
def test_invalid_utf8_is_422_invalid_json_and_stores_nothing(client, runtime, make_stream, raw):
    stream = make_stream()
    assert_error(send(client, stream["token"], raw=raw), 422, "invalid_json")
    assert count(runtime, Message) == 0


def test_an_encoded_lone_surrogate_is_an_item_error(client, runtime, make_stream):
    """UTF-8 bytes of a lone surrogate (U+D800) decode to JSON but not to text."""
    stream = make_stream()
    raw = b'{"messages": [{"recipient_phone": "+972524265292", "message_content": "\xed\xa0\x80"}]}'
    result = send(client, stream["token"], raw=raw).json()["results"][0]
    assert result["status"] == "rejected"
    assert result["error"]["field"] == "messages[0].message_content"
    assert count(runtime, Message) == 0


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "single"])
def test_a_lone_surrogate_internal_id_is_an_item_error(client, runtime, make_stream, batch):
    """``"internal_id": "\\udfff"`` (a JSON escape of a lone surrogate) is this item's
    error naming ``messages[i].internal_id``, and its result leaves the id out (it cannot be
    encoded): the response does not fail once the batch's other items are committed."""
    stream = make_stream()
    good = b'{"recipient_phone": "+972524265292", "message_content": "ok"}, ' if batch else b""
    bad = b'{"recipient_phone": "+972524265292", "message_content": "ok", "internal_id": '
    bad += b'"\\udfff"}'
    response = send(client, stream["token"], raw=b'{"messages": [' + good + bad + b"]}")
    assert response.status_code == 202, response.text
    rejected = response.json()["results"][-1]
    assert rejected["status"] == "rejected"
    assert rejected["error"]["field"] == f"messages[{int(batch)}].internal_id"
    assert "internal_id" not in rejected or rejected["internal_id"] is None
    assert count(runtime, Message) == int(batch)


def test_nul_characters_are_refused_naming_the_item_and_its_field(client, runtime, make_stream):
    stream = make_stream()
    response = send(
        client,
        stream["token"],
        message(message_content="a\x00b"),
        message(internal_id="id\x00"),
        message(),
    )
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["rejected", "rejected", "queued"]
    assert results[0]["error"]["field"] == "messages[0].message_content"
    assert results[1]["error"]["field"] == "messages[1].internal_id"
    assert count(runtime, Message) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "n", "type": "marketing", "description": "a\x00b"}, "description"),
        ({"name": "a\x00b", "type": "marketing"}, "name"),
        ({"name": "n", "type": "marketing", "tags": ["a\x00"]}, "tags"),
        (
            {"name": "n", "type": "marketing", "settings": {"quiet_hours": {"end": "\x00"}}},
            "settings.quiet_hours.end",
        ),
    ],
)
def test_nul_characters_in_a_new_stream_are_422_naming_the_field(
    client, runtime, account_key, body, field
):
    response = client.post("/api/v1/streams", json=body, headers=auth(account_key))
    assert_error(response, 422, field=field)
    assert "U+0000" in response.json()["error"]["message"]
    assert count(runtime, Stream) == 0


@pytest.mark.parametrize(
    ("credential", "path", "params", "field"),
    [
        ("account", "/api/v1/streams", {"name": "a\x00b"}, "name"),
        ("account", "/api/v1/streams", {"tag": "a\x00b"}, "tag[0]"),
        ("token", "/v1/messages", {"internal_id": "a\x00b"}, "internal_id"),
    ],
)
def test_nul_in_a_query_parameter_is_422_naming_the_parameter(
    client, make_stream, account_key, credential, path, params, field
):
    """Free-text query parameters refuse NUL before the route runs, naming the parameter
    (as body fields do), instead of reaching PostgreSQL."""
    stream = make_stream()
    key = account_key if credential == "account" else stream["token"]
    response = client.get(path, params=params, headers=auth(key))
    assert_error(response, 422, field=field)
    assert "U+0000" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("patch", "/api/v1/streams/{id}", {"description": "a\x00"}, "description"),
        ("patch", "/api/v1/streams/{id}", {"tags": ["ok", "b\x00"]}, "tags"),
        (
            "put",
            "/api/v1/streams/{id}/settings",
            {"callback_headers": {"X-Key": "a\x00"}},
            "callback_headers",
        ),
        (
            "post",
            "/api/v1/streams/{id}/events",
            {"key": "k", "name": "a\x00", "template": "Hi"},
            "name",
        ),
        (
            "post",
            "/api/v1/streams/{id}/events",
            {"key": "k", "name": "n", "template": "Hi \x00"},
            "template",
        ),
    ],
)
def test_nul_characters_in_management_input_are_422_naming_the_field_and_change_nothing(
    client, runtime, make_stream, account_key, method, path, body, field
):
    stream = make_stream(description="before", tags=["ok"])
    url = path.format(id=stream["id"])
    response = getattr(client, method)(url, json=body, headers=auth(account_key))
    assert_error(response, 422, field=field)
    after = client.get(f"/api/v1/streams/{stream['id']}", headers=auth(account_key)).json()
    assert after == {k: v for k, v in stream.items() if k != "token"}
    events = client.get(f"/api/v1/streams/{stream['id']}/events", headers=auth(account_key))
    assert events.json()["items"] == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/otp/send", {"recipient_phone": "+972524265292\x00"}, "recipient_phone"),
        (
            "/v1/otp/send",
            {"recipient_phone": "+972524265292", "variables": {"a": "\x00"}},
            "variables",
        ),
        ("/v1/otp/verify", {"recipient_phone": "+972524265292", "code": "12\x00"}, "code"),
    ],
)
def test_nul_characters_in_otp_bodies_are_422_naming_the_field(
    client, runtime, make_stream, path, body, field
):
    stream = make_stream(name="Codes", type="otp", demo=True)
    response = client.post(path, json=body, headers=auth(stream["token"]))
    assert_error(response, 422, field=field)
    assert count(runtime, Message) == 0


# ---------------------------------------------------------------- phones and unicode


@pytest.mark.parametrize(
    "phone",
    [
        "+" + "9" * 40,
        "+" + "9" * 10_000,
        "+９７２５２４２６５２９２",  # fullwidth digits
        "+972\u200b524265292",  # zero-width space
        "\u202e+972524265292",  # right-to-left override
        "+972524265292\u2069",  # pop directional isolate
        "+٩٧٢٥٢٤٢٦٥٢٩٢",  # Arabic-Indic digits
        "+972 52 426 5292 ext. 1",
        "",
    ],
)
def test_hostile_phone_numbers_are_item_errors(client, runtime, make_stream, phone):
    stream = make_stream()
    response = send(client, stream["token"], message(recipient_phone=phone), message())
    assert response.status_code == 202, response.text
    rejected, accepted = response.json()["results"]
    assert rejected["status"] == "rejected"
    assert rejected["error"]["field"] == "messages[0].recipient_phone"
    assert accepted["status"] == "queued"
    assert count(runtime, Message) == 1
    test_send = client.post(
        f"/api/v1/streams/{stream['id']}/test",
        json={"recipient_phone": phone},
        headers=auth(stream["token"]),
    )
    assert test_send.status_code in (401, 422)


@pytest.mark.parametrize(
    "name",
    ["Orders\u202e", "Ord\u2066ers", "Or\x07ders", "Orders\x1b[31m"],
)
def test_names_with_control_or_direction_characters_are_refused(client, runtime, account_key, name):
    response = client.post(
        "/api/v1/streams",
        json={"name": name, "type": "marketing", "default_sender": "Acme"},
        headers=auth(account_key),
    )
    assert_error(response, 422, field="name")
    assert count(runtime, Stream) == 0


def test_names_keep_their_script_and_tags_are_normalised(client, account_key, make_stream):
    """Look-alike letters are legitimate names (Cyrillic 'р' in 'рaypal' stays as given);
    a fullwidth tag is the ASCII tag, and invisible characters are refused."""
    stream = make_stream(name="рaypal", tags=["ｖｉｐ", "vip", "ca\u0301fe"])
    assert stream["name"] == "рaypal"
    assert stream["tags"] == ["vip", "cáfe"]
    found = client.get("/api/v1/streams", params={"tag": "ｖｉｐ"}, headers=auth(account_key))
    assert [item["id"] for item in found.json()["items"]] == [stream["id"]]
    for tag in ["v\u200bip", "vip\u202e", "\u2060vip"]:
        refused = client.post(
            "/api/v1/streams",
            json={"name": "n", "type": "marketing", "tags": [tag]},
            headers=auth(account_key),
        )
        assert_error(refused, 422, field="tags[0]")


def test_a_tag_that_normalises_past_64_characters_is_refused_naming_it(
    client, runtime, account_key, make_stream
):
    """The 64-character bound holds after NFKC: four U+FDFA become 72 characters. Create
    and PATCH (the console's forms too) answer 422 naming ``tags[0]`` and store nothing."""
    stream = make_stream(tags=["kept"])
    tag = "\ufdfa" * 4
    created = client.post(
        "/api/v1/streams",
        json={"name": "n", "type": "transactional", "tags": [tag]},
        headers=auth(account_key),
    )
    assert_error(created, 422, field="tags[0]")
    patched = client.patch(
        f"/api/v1/streams/{stream['id']}", json={"tags": [tag]}, headers=auth(account_key)
    )
    assert_error(patched, 422, field="tags[0]")
    assert count(runtime, Stream) == 1
    assert count(runtime, StreamTag) == 1


def test_inbound_text_with_tricks_is_stored_as_sent(client, runtime, make_stream, account_key):
    """Inbound messages are what a person wrote: kept byte for byte (they are never a
    name or an identifier), except NUL, which no store can hold."""
    stream = make_stream(
        name="Chat", type="two_way", demo=True, settings={"callback_url": "https://a.example/h"}
    )
    secret = signing_secret(client, account_key, stream["id"])
    kept = post_signed_inbound(
        client, stream["id"], secret, {"from": "+972524265292", "text": "hi \u202e\u200b"}
    )
    assert kept.status_code == 200, kept.text
    refused = post_signed_inbound(
        client, stream["id"], secret, {"from": "+972524265292", "text": "a\x00b"}
    )
    assert refused.status_code == 422, refused.text


def test_true_or_false_for_a_number_is_refused_naming_the_field(
    client, runtime, make_stream, account_key
):
    """pydantic's lax mode reads ``true`` as 1: a validity of one second, a limit of one
    message a second. Refused instead, naming the field; nothing changes."""
    stream = make_stream()
    response = send(
        client,
        stream["token"],
        message(validity_seconds=True),
        message(validity_seconds=False),
        message(),
    )
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["rejected", "rejected", "queued"]
    assert results[0]["error"]["field"] == "messages[0].validity_seconds"
    assert results[1]["error"]["field"] == "messages[1].validity_seconds"
    assert count(runtime, Message) == 1

    before = client.get(f"/api/v1/streams/{stream['id']}/settings", headers=auth(account_key))
    for field in ("max_per_second", "max_per_recipient_per_hour", "max_per_day"):
        for value in (False, True):
            refused = client.put(
                f"/api/v1/streams/{stream['id']}/settings",
                json={field: value},
                headers=auth(account_key),
            )
            assert_error(refused, 422, field=field)
    after = client.get(f"/api/v1/streams/{stream['id']}/settings", headers=auth(account_key))
    assert after.json() == before.json()

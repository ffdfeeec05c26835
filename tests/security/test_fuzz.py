"""Issue 8, item 5: schemathesis fuzzes every operation of ``/openapi.json``.

What is asserted, for every generated request (valid and invalid data, as the fuzzer likes):

* no 500 (schemathesis' ``not_a_server_error``), and every 4xx/5xx body is the contract's
  error shape ``{"error": {"code", "message", "field"?}}`` (our own ``error_shape`` check);
* the response conforms to the OpenAPI document: status codes, content types, bodies,
  headers (schemathesis' conformance checks). A gap there is fixed in the app's OpenAPI.

Why in process: ``schemathesis.openapi.from_asgi`` on ``create_app(settings)`` with the test
fixtures' real PostgreSQL and Redis. It reaches every route with the same code a real
``streams serve`` runs, shows a failing request's traceback, and costs no process start.
What only a socket shows (uvicorn's parsing, body limits on the wire) is in
``test_hostile_bodies.py`` against a real ``streams serve``.

How fuzzing gets past auth and signatures: every request carries the right credential for
its route (the account key, the token of a stream of the right type), comes from an allowed
client address (``CLIENT_IP``), and provider webhooks are signed, by an ASGI shim that plays
the provider, over the bytes the fuzzer actually sent. Half the cases (a hypothesis choice,
so it is shrinkable and repeatable) use real ids in the path; the other half keep the
fuzzer's ids, so malformed ids are tried too.

Bounded and repeatable: ``max_examples`` per operation, no deadline, ``derandomize``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
import redis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from pydantic import SecretStr
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.accounts import create_account
from core.runtime import Runtime, build_runtime
from core.settings import Settings
from core.signatures import SIGNATURE_HEADER, streams_signature
from dispatcher.app import create_app
from tests.conftest import CLIENT_IP, REDIS_URL, _empty_database, auth, base_settings
from tests.two_way import APP_SECRET, signing_secret, whatsapp_stream

MAX_EXAMPLES = 20
REQUEST_SECONDS = 30
FEED_SECONDS = 0.5
PROVIDER_WEBHOOK_SECRET = "provider-webhook-secret-for-fuzzing"
PHONE = "+972524265292"
SEND_PATH = "/v1/messages"
#: Where, in the send body's schema, a batch item's schema sits.
SEND_ITEMS_POINTER = "/properties/messages/items"


@schemathesis.check
def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx and 5xx body is ``{"error": {"code", "message", "field"?}}`` (API.md)."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} body is not JSON: {response.content[:200]!r}"
        ) from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an error body: {body!r}"
    assert isinstance(error, dict), f"not an error body: {body!r}"
    assert set(error) <= {"code", "message", "field"}, f"unexpected keys: {body!r}"
    assert isinstance(error.get("code"), str) and error["code"], body
    assert error["code"] == error["code"].lower() and " " not in error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    assert "field" not in error or (isinstance(error["field"], str) and error["field"]), body
    return True


def negative_body_rejected(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' ``negative_data_rejection``, for cases whose invalid part is the body.

    A query string or headers cannot carry what the negative generator makes there (an
    object becomes repeated keys, a removed ``Authorization`` is put back by our
    credentials) and unknown query keys are ignored by design, so its verdicts on those
    parts are about serialization, not about the app.
    """
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return None
    if meta.phase.data.parameter_location is not ParameterLocation.BODY:
        return None
    if _only_send_items_broken(case):
        return _broken_items_rejected_alone(response)
    return negative_data_rejection(ctx, response, case)


def _only_send_items_broken(case: Any) -> bool:
    """A send whose invalid part lies in its batch items (the envelope is sound)."""
    mutations = case.meta.phase.data.mutations
    return (
        case.operation.method.upper() == "POST"
        and case.operation.path == SEND_PATH
        and bool(mutations)
        and all(m.schema_pointer.startswith(SEND_ITEMS_POINTER) for m in mutations)
    )


def _broken_items_rejected_alone(response: Any) -> bool:
    """Invariant 7: a bad item rejects that item alone. The batch is answered 202 with the
    item ``rejected``, not refused whole (what ``negative_data_rejection`` would want); a
    refusal for another reason (the batch's size, the ingress quota) is still a 4xx."""
    if response.status_code != 202:
        assert 400 <= response.status_code < 500, f"{response.status_code} to a bad item"
        return True
    answer = json.loads(response.content)
    assert answer["rejected"] >= 1, f"an item against the schema was accepted: {answer!r}"
    return True


def signing_shim(app: ASGIApp, signers: dict[str, Callable[[bytes], dict[str, str]]]) -> ASGIApp:
    """The app as reached from ``CLIENT_IP``; a request to a path in ``signers`` gets the
    headers its signer makes from the body actually sent (as the provider would sign)."""

    async def shim(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        scope = {**scope, "client": (CLIENT_IP, 40000)}
        signer = signers.get(f"{scope['method']} {scope['path']}")
        if signer is None:
            await app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        body = b"".join(chunks)
        extra = [(k.lower().encode(), v.encode()) for k, v in signer(body).items()]
        scope["headers"] = [*scope["headers"], *extra]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return shim


@pytest.fixture(scope="module")
def fuzz_runtime(database_url: str) -> Iterator[Runtime]:
    """One runtime and data set for the whole module: the fuzzer's cases pile up in it,
    which is what a long-lived service sees too (and it saves a set-up per operation)."""
    settings = base_settings(database_url)
    settings = settings.model_copy(
        update={
            "http_provider": settings.http_provider.model_copy(
                update={"webhook_secret": SecretStr(PROVIDER_WEBHOOK_SECRET)}
            )
        }
    )
    redis.Redis.from_url(REDIS_URL).flushdb()
    runtime = build_runtime(settings)
    _empty_database(runtime)
    yield runtime
    runtime.close()
    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture(scope="module")
def fuzz_world(fuzz_runtime: Runtime) -> Iterator[dict[str, Any]]:
    """The app as the fuzzer reaches it, and what real ids point at: streams of every
    kind, a message, an event template."""
    app = create_app(fuzz_runtime.settings, runtime=fuzz_runtime)
    key = create_account(fuzz_runtime.session_factory, "Fuzzed")[1]
    client = TestClient(app, client=(CLIENT_IP, 40000), raise_server_exceptions=False)

    def make_stream(**fields: Any) -> dict[str, Any]:
        body = {"name": "Orders", "type": "transactional", "default_sender": "Acme", **fields}
        created = client.post("/api/v1/streams", json=body, headers=auth(key))
        assert created.status_code == 201, created.text
        stream = created.json()
        token = client.get(f"/api/v1/streams/{stream['id']}/token", headers=auth(key))
        return {**stream, "token": token.json()["token"]}

    allowed = [f"{CLIENT_IP}/32"]
    world: dict[str, Any] = {
        "account_key": key,
        "make_stream": make_stream,
        "managed": make_stream(name="Managed", allowed_ips=allowed),
        "sending": make_stream(name="Sending", allowed_ips=allowed),
        "otp": make_stream(name="Codes", type="otp", allowed_ips=allowed),
        "two_way": make_stream(
            name="Chat",
            type="two_way",
            demo=True,
            settings={"callback_url": "https://example.com/h"},
        ),
        "whatsapp": whatsapp_stream(lambda **f: make_stream(**f), client, key),
    }
    sent = client.post(
        "/v1/messages",
        json={"messages": [{"recipient_phone": PHONE, "message_content": "Hi"}]},
        headers=auth(world["sending"]["token"]),
    )
    assert sent.status_code == 202, sent.text
    world["message_id"] = sent.json()["results"][0]["message_id"]
    event = client.post(
        f"/api/v1/streams/{world['managed']['id']}/events",
        json={"key": "order.shipped", "name": "Shipped", "template": "Order {order_id} shipped"},
        headers=auth(key),
    )
    assert event.status_code == 201, event.text
    two_way_secret = signing_secret(client, key, world["two_way"]["id"])
    signature_header = fuzz_runtime.settings.http_provider.signature_header
    signers: dict[str, Callable[[bytes], dict[str, str]]] = {
        f"POST /webhooks/{world['two_way']['id']}/inbound": lambda body: {
            SIGNATURE_HEADER: streams_signature(two_way_secret, body, int(time.time()))
        },
        f"POST /webhooks/{world['whatsapp']['id']}/whatsapp": lambda body: {
            "X-Hub-Signature-256": "sha256=" + _hmac_hex(APP_SECRET, body)
        },
        "POST /webhooks/dlr/http": lambda body: {
            signature_header: _hmac_hex(PROVIDER_WEBHOOK_SECRET, body)
        },
    }
    schema = schemathesis.openapi.from_asgi("/openapi.json", signing_shim(app, signers))
    world["operations"] = {
        operation.label: operation
        for operation in (result.ok() for result in schema.get_all_operations())
    }
    yield world
    client.close()
    shutdown_lifespans()


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def credentials_for(path: str, world: dict[str, Any]) -> dict[str, str]:
    if path.startswith("/api/"):
        return auth(world["account_key"])
    if path.startswith("/v1/otp/"):
        return auth(world["otp"]["token"])
    if path.startswith("/v1/"):
        return auth(world["sending"]["token"])
    return {}


def real_path_parameters(method: str, path: str, world: dict[str, Any]) -> dict[str, str]:
    """Ids that exist, of the kind each route wants."""
    if path.startswith("/webhooks/") and "{stream_id}/inbound" in path:
        stream = world["two_way"]
    elif "whatsapp" in path:
        stream = world["whatsapp"]
    elif "/webhooks" in path or "/callbacks/" in path:
        stream = world["two_way"]
    elif method == "DELETE" and path == "/api/v1/streams/{stream_id}":
        stream = world["make_stream"](name="Doomed")  # each case deletes its own
    else:
        stream = world["managed"]
    return {
        "stream_id": stream["id"],
        "message_id": world["message_id"],
        "key": "order.shipped",
        "provider": "http",
    }


def operation_labels() -> list[str]:
    """Every operation of the app's OpenAPI document (``GET /healthz``), for collection. The
    document does not depend on settings, so an app on placeholder settings lists them."""
    placeholder = Settings(database_url="sqlite://", secret_key="placeholder", _env_file=None)
    loaded = schemathesis.openapi.from_dict(create_app(placeholder).openapi())
    return sorted(result.ok().label for result in loaded.get_all_operations())


@pytest.mark.parametrize("label", operation_labels())
def test_fuzz_every_operation(label: str, fuzz_world: dict[str, Any]) -> None:
    world = fuzz_world
    operation = world["operations"][label]
    method, path = operation.method.upper(), operation.path
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=cases, real_ids=st.booleans())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        # No shrinking: it would re-send many requests; the report shows the failing case.
        phases=[Phase.explicit, Phase.generate],
    )
    def fuzz(case, real_ids):
        if real_ids and case.path_parameters:
            wanted = real_path_parameters(method, path, world)
            for name in case.path_parameters:
                if name in wanted:
                    case.path_parameters[name] = wanted[name]
        case.call_and_validate(
            headers=credentials_for(path, world),
            additional_checks=[error_shape, negative_body_rejected],
            excluded_checks=[positive_data_acceptance, negative_data_rejection],
            # The realtime feed never ends by itself: what it sent by then is validated.
            timeout=FEED_SECONDS if path == "/api/v1/realtime" else REQUEST_SECONDS,
        )

    fuzz()

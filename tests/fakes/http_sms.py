"""A fake generic HTTP SMS API, speaking what ``workers.providers.http`` is configured for:
``POST /sms`` with a JSON body ``{"from", "to", "text", "reference"}`` and an
``Authorization: Bearer <key>`` header; answers ``{"message_id": …}``, refuses bad numbers
with 400 ``{"error": {"code", "message"}}`` and a wrong key with 401, and can be told to fail
the next N requests (500/503, 429 with ``Retry-After``, or a delay past the client timeout).
A scripted status 200 with a delay is a late success: the message is taken, but the answer
may come after the client gave up; one with a body answers that body. Like a real provider
with idempotency keys, a repeated reference gets the first answer (``by_reference`` holds
one id per message it took). With ``conflict_while_in_progress``, as the Idempotency-Key
draft (draft-ietf-httpapi-idempotency-key-header) says a server does, a request whose
``Idempotency-Key`` is still being answered for an earlier one gets 409 instead."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.settings import HttpProviderSettings
from tests.fakes.failures import Failure, FailurePlan, scripted_answer

API_KEY = "fake-sms-key-1234"
WEBHOOK_SECRET = "http-provider-webhook-secret"
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


@dataclass
class FakeHttpSms:
    api_key: str = API_KEY
    failures: FailurePlan = field(default_factory=FailurePlan)
    requests: list[dict[str, Any]] = field(default_factory=list)
    by_reference: dict[str, str] = field(default_factory=dict)
    #: How long every request takes, as a carrier's own latency.
    latency_seconds: float = 0.0
    #: How long requests to these recipients take instead (a carrier stuck on one number).
    latency_by_recipient: dict[str, float] = field(default_factory=dict)
    #: Requests being answered now, and the most there ever were at once.
    in_flight: int = 0
    most_in_flight: int = 0
    #: Answer 409 to a request whose ``Idempotency-Key`` an earlier one still holds.
    conflict_while_in_progress: bool = False
    #: The ``Idempotency-Key`` of each request being answered now.
    keys_in_flight: set[str] = field(default_factory=set)
    _lock: Lock = field(default_factory=Lock)

    def fail_next(self, times: int, status: int, **kwargs: Any) -> None:
        self.failures.fail_next(times, Failure(status=status, **kwargs))

    def accepted(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("answered") == 200]

    async def send(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        body = await request.json()
        with self._lock:
            if self.conflict_while_in_progress and key in self.keys_in_flight:
                record = {"body": body, "headers": dict(request.headers), "answered": 409}
                self.requests.append(record)
                return JSONResponse(
                    {
                        "title": "A request is outstanding for this Idempotency-Key",
                        "detail": "A request with the same Idempotency-Key is being processed.",
                    },
                    status_code=409,
                    media_type="application/problem+json",
                )
            if key is not None:
                self.keys_in_flight.add(key)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            latency = self.latency_by_recipient.get(body.get("to"), self.latency_seconds)
            if latency:
                await asyncio.sleep(latency)
            return await self._answer(request, body)
        finally:
            with self._lock:
                self.in_flight -= 1
                self.keys_in_flight.discard(key or "")

    async def _answer(self, request: Request, body: Any) -> Response:
        record = {"body": body, "headers": dict(request.headers)}
        with self._lock:
            self.requests.append(record)
        failure = self.failures.take()
        if failure is not None and failure.delay_seconds:
            await asyncio.sleep(failure.delay_seconds)
        if failure is not None and failure.status == 200 and failure.body is not None:
            record["answered"] = 200  # taken, with the scripted answer
            return scripted_answer(failure, failure.body, 200)
        if failure is not None and failure.status != 200:
            record["answered"] = failure.status
            return JSONResponse(
                failure.body or {"error": {"code": "server_error", "message": "try later"}},
                status_code=failure.status,
                headers=failure.headers,
            )
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            record["answered"] = 401
            return JSONResponse(
                {"error": {"code": "unauthorized", "message": "bad API key"}}, status_code=401
            )
        to = body.get("to")
        if not isinstance(to, str) or not _E164.fullmatch(to) or to.startswith("+999"):
            record["answered"] = 400
            return JSONResponse(
                {"error": {"code": "invalid_number", "message": f"cannot route {to}"}},
                status_code=400,
            )
        reference = str(body.get("reference"))
        with self._lock:
            provider_id = self.by_reference.setdefault(reference, "sms-" + uuid.uuid4().hex)
        record["answered"] = 200
        return JSONResponse({"message_id": provider_id, "status": "accepted"})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/sms", self.send, methods=["POST"])])


def provider_settings(
    base_url: str, timeout_seconds: float = 1, **extra: Any
) -> HttpProviderSettings:
    """``workers.providers.http`` configured for a ``FakeHttpSms`` served at ``base_url``."""
    return HttpProviderSettings(
        url=f"{base_url}/sms",
        auth_value=f"Bearer {API_KEY}",
        timeout_seconds=timeout_seconds,
        webhook_secret=WEBHOOK_SECRET,
        _env_file=None,
        **extra,
    )

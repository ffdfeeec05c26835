"""A fake WhatsApp Cloud API (Graph API), speaking Meta's protocol closely enough for the
adapter: ``POST /{version}/{phone_number_id}/messages`` with ``Authorization: Bearer``;
answers ``{"messaging_product", "contacts", "messages": [{"id": "wamid…"}]}``; errors as
``{"error": {"message", "type", "code", "error_subcode"?, "fbtrace_id"}}`` with Meta's codes
(190 expired token → 401, 132001 unknown template, 132000 parameter count, 100 invalid
parameter). ``fail_next`` scripts other answers (130429, 131056, 131000 …).

Also builds what Meta posts back to us: status and message webhooks, signed with
``X-Hub-Signature-256``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.failures import Failure, FailurePlan, scripted_answer

VERSION = "v21.0"
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


def meta_error(
    code: int, message: str, *, kind: str = "OAuthException", subcode: int | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message,
        "type": kind,
        "code": code,
        "fbtrace_id": "A" + uuid.uuid4().hex[:22],
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


@dataclass
class FakeWhatsAppCloud:
    #: phone_number_id → the access token that works for it.
    tokens: dict[str, str] = field(default_factory=dict)
    #: (name, language) → number of body parameters.
    templates: dict[tuple[str, str], int] = field(default_factory=dict)
    failures: FailurePlan = field(default_factory=FailurePlan)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _lock: Lock = field(default_factory=Lock)

    def fail_next(
        self, times: int, code: int, message: str = "error", status: int = 400, **kwargs: Any
    ) -> None:
        self.failures.fail_next(
            times, Failure(status=status, body=meta_error(code, message), **kwargs)
        )

    def accepted(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["answered"] == 200]

    async def messages(self, request: Request) -> Response:
        phone_number_id = request.path_params["phone_number_id"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        record: dict[str, Any] = {
            "phone_number_id": phone_number_id,
            "version": request.path_params["version"],
            "body": body,
            "authorization": request.headers.get("authorization"),
            "answered": None,
            "at": time.monotonic(),
        }
        with self._lock:
            self.requests.append(record)
        failure = self.failures.take()
        if failure is not None:
            if failure.delay_seconds:
                await asyncio.sleep(failure.delay_seconds)
            record["answered"] = failure.status
            return scripted_answer(failure, failure.body, failure.status)
        answer = self._check(phone_number_id, request.headers.get("authorization"), body)
        if answer is not None:
            record["answered"] = answer.status_code
            return answer
        record["answered"] = 200
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"].lstrip("+")}],
                "messages": [{"id": "wamid." + uuid.uuid4().hex.upper()}],
            }
        )

    def _check(
        self, phone_number_id: str, authorization: str | None, body: Any
    ) -> JSONResponse | None:
        expected = self.tokens.get(phone_number_id)
        if expected is None or authorization != f"Bearer {expected}":
            return JSONResponse(
                meta_error(
                    190,
                    "Error validating access token: Session has expired.",
                    subcode=463,
                ),
                status_code=401,
            )
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return JSONResponse(
                meta_error(100, "(#100) The parameter messaging_product is required."),
                status_code=400,
            )
        kind = body.get("type")
        to = body.get("to")
        if not isinstance(to, str) or not to.lstrip("+").isdigit():
            return JSONResponse(meta_error(100, "(#100) Invalid parameter: to"), status_code=400)
        if kind == "text":
            if not isinstance(body.get("text"), dict) or not body["text"].get("body"):
                return JSONResponse(
                    meta_error(100, "(#100) text.body is required"), status_code=400
                )
        elif kind == "template":
            template = body.get("template") or {}
            key = (template.get("name"), (template.get("language") or {}).get("code"))
            if key not in self.templates:
                return JSONResponse(
                    meta_error(132001, "(#132001) Template name does not exist in the translation"),
                    status_code=404,
                )
            given = sum(
                len(c.get("parameters", []))
                for c in template.get("components", [])
                if c.get("type") == "body"
            )
            if given != self.templates[key]:
                return JSONResponse(
                    meta_error(
                        132000,
                        "(#132000) Number of parameters does not match the expected number"
                        " of params",
                    ),
                    status_code=400,
                )
        elif kind in MEDIA_TYPES:
            media = body.get(kind)
            if not isinstance(media, dict) or not (media.get("link") or media.get("id")):
                return JSONResponse(
                    meta_error(100, f"(#100) {kind}.link or id is required"), status_code=400
                )
        else:
            return JSONResponse(meta_error(100, f"(#100) Unsupported type {kind}"), status_code=400)
        return None

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/{version}/{phone_number_id}/messages", self.messages, methods=["POST"])]
        )


# ---------------------------------------------------------------- what Meta posts to us


def webhook(
    phone_number_id: str,
    *,
    statuses: list[dict[str, Any]] | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
    }
    if statuses:
        value["statuses"] = statuses
    if messages:
        value["contacts"] = [{"profile": {"name": "Dana"}, "wa_id": m["from"]} for m in messages]
        value["messages"] = messages
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }


def status(
    wamid: str, state: str, *, reference: str | None = None, error_code: int | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": wamid,
        "status": state,
        "timestamp": str(int(time.time())),
        "recipient_id": "972524265292",
    }
    if reference is not None:
        item["biz_opaque_callback_data"] = reference
    if error_code is not None:
        item["errors"] = [{"code": error_code, "title": "Message undeliverable"}]
    return item


def text_message(sender: str, text: str, message_id: str | None = None) -> dict[str, Any]:
    return {
        "from": sender,
        "id": message_id or "wamid.IN" + uuid.uuid4().hex.upper(),
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }


def signed(payload: dict[str, Any], app_secret: str) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers Meta would send."""
    raw = json.dumps(payload).encode()
    digest = hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()
    return raw, {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}

"""``whatsapp_cloud``: the WhatsApp Cloud API (Meta's Graph API).

``POST {base}/{version}/{phone_number_id}/messages`` with the stream's access token, one
request per message: a template (``type: template`` with body and button parameters), a text
reply, or media. Our message id travels as ``biz_opaque_callback_data``, which Meta echoes in
its status webhooks, so a status that beats the worker's ``sent`` still finds its message.

Meta's error ``code`` decides what happens (HTTP status only when the code is unknown):
throughput limits (130429, 4, 80007) and Meta's own outages are retried; the pair rate limit
(131056: too many messages to one person) is retried later; an invalid or expired token (190)
or missing permission fails the message and puts the stream's WhatsApp set-up in an error
state; everything else about the message (unknown template, wrong parameters, undeliverable
number) fails it for good.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import structlog

from core.settings import WhatsAppApiSettings
from workers.providers.base import Accepted, OutboundMessage, ProviderError
from workers.providers.http_answers import error_text, retry_after_seconds
from workers.providers.http_client import post_within, provider_client

log = structlog.get_logger(__name__)

#: Meta error code → (our error code, transient).
_KNOWN_CODES: dict[int, tuple[str, bool]] = {
    1: ("whatsapp_unknown_error", True),
    2: ("whatsapp_service_unavailable", True),
    4: ("whatsapp_throttled", True),
    80007: ("whatsapp_throttled", True),
    130429: ("whatsapp_rate_limited", True),
    131000: ("whatsapp_unknown_error", True),
    131016: ("whatsapp_service_unavailable", True),
    133004: ("whatsapp_service_unavailable", True),
    100: ("whatsapp_invalid_request", False),
    131008: ("whatsapp_invalid_request", False),
    131009: ("whatsapp_invalid_request", False),
    131026: ("whatsapp_undeliverable", False),
    131030: ("whatsapp_recipient_not_allowed", False),
    131031: ("whatsapp_account_locked", False),
    131042: ("whatsapp_payment_issue", False),
    131047: ("whatsapp_reengagement_required", False),
    131048: ("whatsapp_spam_rate_limited", False),
    131051: ("whatsapp_unsupported_type", False),
    132000: ("whatsapp_template_parameters", False),
    132001: ("whatsapp_unknown_template", False),
    132015: ("whatsapp_template_paused", False),
    132016: ("whatsapp_template_disabled", False),
    133010: ("whatsapp_number_not_registered", False),
    368: ("whatsapp_account_blocked", False),
}
PAIR_RATE_LIMIT = 131056
#: Codes that mean the stream's credentials are wrong, not the message.
_CREDENTIAL_CODES: dict[int, str] = {0: "whatsapp_invalid_token", 190: "whatsapp_invalid_token"}
_PERMISSION_CODES = frozenset({3, 10, *range(200, 300)})
#: Codes that mean the business account or number cannot send at all (locked, blocked for a
#: policy, a payment problem, not registered with the Cloud API): our set-up, not the
#: message. With the credential and permission codes, a message refused so fails as a dead
#: letter to replay once the account is mended (``ProviderError.configuration``).
_ACCOUNT_CODES = frozenset({131031, 131042, 133010, 368})


@dataclass(frozen=True, slots=True)
class WhatsAppCredentials:
    phone_number_id: str
    access_token: str = field(repr=False)


class CredentialSource(Protocol):
    """Where the adapter finds a stream's credentials, and tells of a credential problem."""

    def credentials(self, stream_id: str) -> WhatsAppCredentials | None: ...

    def report_problem(self, stream_id: str, code: str, message: str) -> None: ...


def cloud_api_body(message: OutboundMessage) -> dict[str, Any]:
    """The Cloud API request body for one message. Pure."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": message.recipient.removeprefix("+"),
        "biz_opaque_callback_data": message.reference,
    }
    content: Mapping[str, Any] = message.content or {}
    kind = content.get("kind")
    if kind == "template":
        components: list[dict[str, Any]] = []
        parameters = list(content.get("parameters") or [])
        if parameters:
            components.append(
                {"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}
            )
        for button in content.get("buttons") or []:
            sub_type = button["sub_type"]
            parameter = (
                {"type": "payload", "payload": button["value"]}
                if sub_type == "quick_reply"
                else {"type": "text", "text": button["value"]}
            )
            components.append(
                {
                    "type": "button",
                    "sub_type": sub_type,
                    "index": str(button["index"]),
                    "parameters": [parameter],
                }
            )
        template: dict[str, Any] = {
            "name": content["name"],
            "language": {"code": content["language"]},
        }
        if components:
            template["components"] = components
        body.update(type="template", template=template)
    elif kind == "media":
        media_type = content["type"]
        media: dict[str, Any] = (
            {"id": content["id"]} if content.get("id") else {"link": content["link"]}
        )
        if content.get("caption"):
            media["caption"] = content["caption"]
        if content.get("filename"):
            media["filename"] = content["filename"]
        body.update(type=media_type, **{media_type: media})
    else:
        body.update(type="text", text={"preview_url": False, "body": message.body})
    return body


def classify_error(
    status: int, answer: Any, retry_after: float | None, pair_rate_retry_seconds: float
) -> tuple[ProviderError, bool]:
    """Meta's error answer as a ``ProviderError``, and whether it is a credential problem.
    Pure."""
    error = answer.get("error") if isinstance(answer, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    words = error_text(answer, f"HTTP {status}")
    described = f"WhatsApp error {code if code is not None else status}: {words}"
    if code in _CREDENTIAL_CODES or status == 401:
        our_code = _CREDENTIAL_CODES.get(code or 0, "whatsapp_invalid_token")
        return ProviderError(our_code, described, transient=False, configuration=True), True
    if code in _PERMISSION_CODES:
        refused = ProviderError(
            "whatsapp_permission_denied", described, transient=False, configuration=True
        )
        return refused, True
    if code == PAIR_RATE_LIMIT:
        delay = retry_after if retry_after is not None else pair_rate_retry_seconds
        return (
            ProviderError(
                "whatsapp_pair_rate_limited", described, transient=True, retry_after=delay
            ),
            False,
        )
    if code in _KNOWN_CODES:
        our_code, transient = _KNOWN_CODES[code]
        return (
            ProviderError(
                our_code,
                described,
                transient=transient,
                retry_after=retry_after if transient else None,
                configuration=code in _ACCOUNT_CODES,
            ),
            False,
        )
    # 408: the server (or a proxy before it) gave up waiting for our request, so it did not
    # act on it; safe to offer again like throttling and outages.
    if status in (408, 429) or status >= 500:
        return (
            ProviderError(
                "whatsapp_unavailable", described, transient=True, retry_after=retry_after
            ),
            False,
        )
    return ProviderError("whatsapp_rejected", described, transient=False), False


class WhatsAppCloudProvider:
    name = "whatsapp_cloud"
    idempotent = False  # the Cloud API has no idempotency key

    def __init__(
        self,
        settings: WhatsAppApiSettings,
        credentials: CredentialSource,
        client: httpx.Client | None = None,
    ) -> None:
        self._settings = settings
        self._credentials = credentials
        self._base = f"{settings.api_base_url.rstrip('/')}/{settings.api_version.strip('/')}"
        self._client = client or provider_client(settings.timeout_seconds)
        #: Meta's throughput for each business phone number (80 messages a second by
        #: default; a number upgraded to 1,000 is configured so).
        self.max_per_second = settings.max_per_second

    def rate_scope(self, stream_id: uuid.UUID) -> str:
        """Each business phone number has its own throughput; streams that share a number
        share it."""
        credentials = self._credentials.credentials(str(stream_id))
        if credentials is None:
            return self.name  # the send fails as not configured
        return f"{self.name}:{credentials.phone_number_id}"

    def send(self, message: OutboundMessage) -> Accepted:
        credentials = (
            self._credentials.credentials(message.stream_id) if message.stream_id else None
        )
        if credentials is None:
            raise ProviderError(
                "whatsapp_not_configured",
                "The stream has no WhatsApp phone number id and access token.",
                transient=False,
                configuration=True,
            )
        url = f"{self._base}/{credentials.phone_number_id}/messages"
        try:
            response = post_within(
                self._client,
                url,
                self._settings.timeout_seconds,
                json=cloud_api_body(message),
                headers={"Authorization": f"Bearer {credentials.access_token}"},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: safe to offer again.
            raise ProviderError(
                "whatsapp_unreachable",
                f"The WhatsApp Cloud API could not be reached ({type(exc).__name__}).",
                transient=True,
            ) from None
        except httpx.HTTPError as exc:
            # Sent, or partly sent, and no answer we can read (a read timeout, a dropped
            # connection, a body that cannot be decoded). Meta may have taken the message,
            # and the Cloud API has no idempotency key: a retry could send it twice.
            raise ProviderError(
                "whatsapp_outcome_unknown",
                f"The WhatsApp Cloud API gave no usable answer ({type(exc).__name__}); it may "
                "have taken the message, so it is not sent again on its own. Replay its dead "
                "letter to send it anyway.",
                transient=False,
                outcome_unknown=True,
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if 200 <= response.status_code < 300:
            messages = answer.get("messages") if isinstance(answer, dict) else None
            provider_id = (
                messages[0].get("id")
                if isinstance(messages, list) and messages and isinstance(messages[0], dict)
                else None
            )
            if not isinstance(provider_id, str) or not provider_id:
                raise ProviderError(
                    "whatsapp_bad_response",
                    "The WhatsApp Cloud API accepted the message without an id; not retried, "
                    "it may have gone out.",
                    transient=False,
                    outcome_unknown=True,
                )
            return Accepted(provider_message_id=provider_id[:128])
        error, credential_problem = classify_error(
            response.status_code,
            answer,
            retry_after_seconds(response.headers.get("retry-after")),
            self._settings.pair_rate_retry_seconds,
        )
        if credential_problem and message.stream_id:
            log.error("whatsapp_credentials_refused", stream_id=message.stream_id, code=error.code)
            self._credentials.report_problem(message.stream_id, error.code, error.message)
        raise error

    def close(self) -> None:
        self._client.close()

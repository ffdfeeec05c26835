"""``http``: a generic HTTP SMS API. One JSON POST per message, to a configured URL, with a
configured auth header and field mapping (``HttpProviderSettings``).

Errors: timeouts, connection failures, 408, 409, 429 (with ``Retry-After``) and 5xx may pass
and are retried; 401/403 and other 4xx (an invalid number, a refused sender) never will.
401/403 refuse our credentials, not the message: such a message fails as a dead letter, to
replay once the credentials are mended (``ProviderError.configuration``). Our
message id goes with every request (mapped ``reference`` field and ``Idempotency-Key``), so a
provider that honours it turns a send repeated after a crash into the first one. Such a
provider answers 409 to a request whose key it is still processing for an earlier one (the
Idempotency-Key draft, draft-ietf-httpapi-idempotency-key-header: "no correction is
required"): our earlier attempt, which timed out on our side, may be going through, so the
409 is retried, and the retry gets that attempt's answer. A 2xx answer without a
message id fails the message rather than retrying it: it may well have gone out.
"""

from __future__ import annotations

import uuid

import httpx
import structlog

from core.http_provider_format import request_body, response_message_id
from core.settings import HttpProviderSettings
from workers.providers.base import Accepted, OutboundMessage, ProviderError
from workers.providers.http_answers import error_text, retry_after_seconds
from workers.providers.http_client import post_within, provider_client

log = structlog.get_logger(__name__)


class HttpProvider:
    name = "http"
    idempotent = True  # the reference goes as Idempotency-Key

    def __init__(self, settings: HttpProviderSettings, client: httpx.Client | None = None) -> None:
        if not settings.url:
            raise RuntimeError("STREAMS_HTTP_PROVIDER_URL is not set")
        self._settings = settings
        self._url = settings.url
        self._client = client or provider_client(settings.timeout_seconds)
        #: The carrier's throughput as configured (the contract with the carrier says it).
        self.max_per_second = settings.max_per_second

    def rate_scope(self, stream_id: uuid.UUID) -> str:
        return self.name

    def send(self, message: OutboundMessage) -> Accepted:
        body = request_body(
            self._settings,
            sender=message.sender,
            recipient=message.recipient,
            body=message.body,
            reference=message.reference,
        )
        headers = {"Idempotency-Key": message.reference}
        if self._settings.auth_value is not None:
            headers[self._settings.auth_header] = self._settings.auth_value.get_secret_value()
        try:
            response = post_within(
                self._client, self._url, self._settings.timeout_seconds, json=body, headers=headers
            )
        except httpx.TimeoutException:
            raise ProviderError(
                "provider_timeout", "The HTTP provider did not answer in time.", transient=True
            ) from None
        except httpx.TransportError as exc:
            raise ProviderError(
                "provider_unreachable",
                f"The HTTP provider could not be reached ({type(exc).__name__}).",
                transient=True,
            ) from None
        except httpx.HTTPError as exc:
            # An answer that cannot be read (e.g. a body that is not in its declared
            # encoding). It may have taken the message; the retry carries the same reference.
            raise ProviderError(
                "provider_unreadable_answer",
                f"The HTTP provider's answer could not be read ({type(exc).__name__}).",
                transient=True,
            ) from None
        return self._read(response)

    def _read(self, response: httpx.Response) -> Accepted:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        status = response.status_code
        if 200 <= status < 300:
            provider_id = response_message_id(self._settings, answer)
            if provider_id is None:
                # It answered 2xx: it took the request, most likely the message too.
                raise ProviderError(
                    "provider_bad_response",
                    f"The HTTP provider accepted the message but its answer has no "
                    f"{self._settings.response_id_field!r}; not retried, it may have gone out.",
                    transient=False,
                    outcome_unknown=True,
                )
            return Accepted(provider_message_id=provider_id)
        words = error_text(answer, f"HTTP {status}")
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if status == 429:
            raise ProviderError(
                "provider_throttled",
                f"The HTTP provider is throttling: {words}",
                transient=True,
                retry_after=retry_after,
            )
        if status == 409:
            raise ProviderError(
                "provider_request_in_progress",
                "The HTTP provider is still processing an earlier request for this message "
                f"(HTTP 409): {words}",
                transient=True,
                retry_after=retry_after,
            )
        if status == 408 or status >= 500:
            raise ProviderError(
                "provider_unavailable",
                f"The HTTP provider failed (HTTP {status}): {words}",
                transient=True,
                retry_after=retry_after,
            )
        if status in (401, 403):
            log.error("http_provider_auth_failed", status=status)
            raise ProviderError(
                "provider_auth_failed",
                f"The HTTP provider refused our credentials (HTTP {status}).",
                transient=False,
                configuration=True,
            )
        raise ProviderError(
            "provider_rejected",
            f"The HTTP provider refused the message (HTTP {status}): {words}",
            transient=False,
        )

    def close(self) -> None:
        self._client.close()

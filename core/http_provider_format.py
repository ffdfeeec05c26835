"""The generic HTTP provider's wire format, as configured in ``HttpProviderSettings``. Pure.

The adapter (``workers.providers.http``) builds requests with it; the ingress reads the
provider's delivery receipts and inbound messages with it. Each ``parse_*`` raises
``FormatError`` naming the provider field that is missing or wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.json_paths import get_path, set_path
from core.receipts import RECEIPT_STATUSES, ReceiptIn
from core.settings import HttpProviderSettings

PROVIDER = "http"
_MAX_ID = 128


class FormatError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class InboundFields:
    sender: str
    recipient: str | None
    text: str | None
    provider_message_id: str | None
    received_at: datetime | None


def request_body(
    settings: HttpProviderSettings, *, sender: str | None, recipient: str, body: str, reference: str
) -> dict[str, Any]:
    """The JSON the provider expects for one message."""
    document: dict[str, Any] = {**settings.extra_fields}
    values = {"sender": sender, "recipient": recipient, "body": body, "reference": reference}
    for ours, theirs in settings.request_fields.items():
        if ours in values and values[ours] is not None:
            set_path(document, theirs, values[ours])
    return document


def response_message_id(settings: HttpProviderSettings, answer: Any) -> str | None:
    """The provider's message id in its answer, or None."""
    value = get_path(answer, settings.response_id_field)
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
        return str(value)[:_MAX_ID]
    return None


def parse_receipt(settings: HttpProviderSettings, document: Any) -> ReceiptIn:
    """A delivery receipt in our words."""
    if not isinstance(document, Mapping):
        raise FormatError("body", "a delivery receipt is a JSON object")
    fields = settings.receipt_fields
    provider_id = _text(document, fields.get("message_id"), required=False)
    reference = _text(document, fields.get("reference"), required=False)
    if provider_id is None and reference is None:
        raise FormatError(fields.get("message_id", "message_id"), "the receipt names no message id")
    status_field = fields.get("status", "status")
    word = get_path(document, status_field)
    status = settings.receipt_statuses.get(str(word)) if word is not None else None
    if status not in RECEIPT_STATUSES:
        raise FormatError(status_field, f"unknown receipt status {str(word)[:40]!r}")
    part = _number(document, fields.get("part"))
    parts = _number(document, fields.get("parts"))
    if part is not None and parts is not None and part > parts:
        raise FormatError(fields.get("part", "part"), "part is greater than parts")
    error_code = _text(document, fields.get("error_code"), required=False)
    return ReceiptIn(
        provider=PROVIDER,
        status=status,  # type: ignore[arg-type]
        provider_message_id=provider_id,
        reference=reference,
        part=part,
        parts=parts,
        error_code=error_code[:64] if error_code else None,
    )


def parse_inbound(settings: HttpProviderSettings, document: Any) -> InboundFields:
    """An inbound (MO) message in our words."""
    if not isinstance(document, Mapping):
        raise FormatError("body", "an inbound message is a JSON object")
    fields = settings.inbound_fields
    sender = _text(document, fields.get("from", "from"), required=True)
    received_text = _text(document, fields.get("received_at"), required=False)
    received_at = None
    if received_text is not None:
        try:
            received_at = datetime.fromisoformat(received_text)
        except ValueError:
            raise FormatError(
                fields.get("received_at", "received_at"), "is not an ISO 8601 time"
            ) from None
    return InboundFields(
        sender=sender or "",
        recipient=_text(document, fields.get("to"), required=False),
        text=_text(document, fields.get("text"), required=False, limit=4096),
        provider_message_id=_text(document, fields.get("message_id"), required=False),
        received_at=received_at,
    )


def _text(
    document: Mapping[str, Any], path: str | None, *, required: bool, limit: int = _MAX_ID
) -> str | None:
    value = get_path(document, path) if path else None
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise FormatError(path or "field", f"{path} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FormatError(path or "field", f"{path} must be text")
    text = str(value)
    if len(text) > limit:
        raise FormatError(path or "field", f"{path} is longer than {limit} characters")
    return text


def _number(document: Mapping[str, Any], path: str | None) -> int | None:
    value = get_path(document, path) if path else None
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise FormatError(path or "field", f"{path} must be a number from 1 to 255")
    return value

"""Webhook signatures, both ways. Pure.

* Ours (``X-Streams-Signature: t=<unix>,v1=<hex>``): HMAC-SHA256 of ``"<t>.<body>"`` keyed by
  the stream's webhook secret. We sign customer callbacks with it, and the sandbox's inbound
  webhook must carry it. The timestamp bounds replays: a signature older (or newer) than the
  tolerance is refused even when the HMAC matches.
* Meta's (``X-Hub-Signature-256: sha256=<hex>``): HMAC-SHA256 of the raw body keyed by the
  WhatsApp app secret.
* The HTTP provider's: the hex HMAC-SHA256 of the raw body in a configured header.

Every comparison is constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Streams-Signature"
DEFAULT_TOLERANCE_SECONDS = 300
_MAX_HEADER_LENGTH = 1024


def _hmac_hex(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).hexdigest()


def streams_signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Streams-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    digest = _hmac_hex(secret, str(timestamp).encode("ascii") + b"." + body)
    return f"t={timestamp},v1={digest}"


def verify_streams_signature(
    header: str | None,
    body: bytes,
    secret: str,
    now: float,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True when ``header`` is a valid ``t=…,v1=…`` signature of ``body`` made within
    ``tolerance_seconds`` of ``now``. Several ``v1`` values are allowed (secret rotation)."""
    timestamp, candidates = _parse_streams_header(header)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance_seconds:
        return False
    expected = streams_signature(secret, body, timestamp).split("v1=", 1)[1]
    return any(_equal(expected, candidate) for candidate in candidates)


def signed_request_id(header: str | None, body: bytes) -> str | None:
    """An id for one signed request: its timestamp and a digest of its body.

    A replay re-sends the same ``(t, body)`` (a new ``t`` needs the secret), so the id of a
    replay inside the tolerance equals the original's and the receiver can record it once.
    ``None`` when the header has no timestamp. Call after ``verify_streams_signature``.
    """
    timestamp, _ = _parse_streams_header(header)
    if timestamp is None:
        return None
    return f"signed:{timestamp}:{hashlib.sha256(body).hexdigest()[:40]}"


def _parse_streams_header(header: str | None) -> tuple[int | None, list[str]]:
    if not header or len(header) > _MAX_HEADER_LENGTH:
        return None, []
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    return timestamp, candidates


def verify_hub_signature(header: str | None, body: bytes, app_secret: str) -> bool:
    """Meta's ``X-Hub-Signature-256: sha256=<hex HMAC of the raw body>``."""
    if not header or len(header) > _MAX_HEADER_LENGTH or not header.startswith("sha256="):
        return False
    return _equal(_hmac_hex(app_secret, body), header.removeprefix("sha256="))


def verify_body_hmac(header: str | None, body: bytes, secret: str) -> bool:
    """A hex HMAC-SHA256 of the raw body, with or without a ``sha256=`` prefix."""
    if not header or len(header) > _MAX_HEADER_LENGTH:
        return False
    return _equal(_hmac_hex(secret, body), header.strip().removeprefix("sha256="))


def body_hmac(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` (what ``verify_body_hmac`` checks)."""
    return _hmac_hex(secret, body)


def _equal(expected: str, presented: str) -> bool:
    if not presented.isascii():
        return False
    return hmac.compare_digest(expected.encode("ascii"), presented.lower().encode("ascii"))

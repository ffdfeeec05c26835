"""Which provider carries a stream's messages. Pure, so the ingress (webhook formats) and the
workers (adapters) agree."""

from __future__ import annotations

from schemas.enums import StreamType

SANDBOX = "sandbox"
HTTP = "http"
WHATSAPP_CLOUD = "whatsapp_cloud"


def provider_for(stream_type: StreamType | str, *, demo: bool, default_provider: str) -> str:
    """Demo streams use the sandbox; WhatsApp streams the Cloud API; the rest the configured
    default (``sandbox`` or ``http``)."""
    if demo:
        return SANDBOX
    if StreamType(stream_type) is StreamType.whatsapp:
        return WHATSAPP_CLOUD
    return default_provider

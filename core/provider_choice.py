"""Which provider carries a stream's messages. Pure, so the ingress (webhook formats) and the
workers (adapters) agree."""

from __future__ import annotations

from schemas.enums import StreamType

SANDBOX = "sandbox"
HTTP = "http"
WHATSAPP_CLOUD = "whatsapp_cloud"

#: Stream types whose live provider has no idempotency key (the WhatsApp Cloud API): a send of
#: theirs whose outcome was never recorded may have reached the provider, and offering it
#: again could send it twice. Demo streams of these types (the sandbox) follow the same rule:
#: a message row says nothing of its provider until the send is recorded.
NOT_IDEMPOTENT_TYPES: frozenset[str] = frozenset({StreamType.whatsapp.value})


def provider_for(stream_type: StreamType | str, *, demo: bool, default_provider: str) -> str:
    """Demo streams use the sandbox; WhatsApp streams the Cloud API; the rest the configured
    default (``sandbox`` or ``http``)."""
    if demo:
        return SANDBOX
    if StreamType(stream_type) is StreamType.whatsapp:
        return WHATSAPP_CLOUD
    return default_provider

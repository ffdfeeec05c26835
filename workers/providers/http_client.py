"""The HTTP client provider adapters share: pooled connections, bounded timeouts, and no
redirects (a provider that redirects an API call is misconfigured, not to be followed)."""

from __future__ import annotations

import httpx


def provider_client(timeout_seconds: float) -> httpx.Client:
    """One client per adapter instance; connecting never takes more than 5 s."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5)),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        follow_redirects=False,
    )

"""Which adapter sends a stream's messages."""

from __future__ import annotations

import redis

from core.settings import Settings
from workers.providers.base import Provider, ProviderError
from workers.providers.sandbox import SandboxProvider


class ProviderRegistry:
    """Adapters by name, built once per worker process."""

    def __init__(self, providers: dict[str, Provider], default: str) -> None:
        self._providers = providers
        self._default = default

    @classmethod
    def from_settings(
        cls, settings: Settings, redis_client: redis.Redis | None
    ) -> ProviderRegistry:
        return cls(
            {"sandbox": SandboxProvider(settings.sandbox, redis_client)}, settings.default_provider
        )

    def for_stream(self, *, demo: bool) -> Provider:
        """Demo streams always use the sandbox. Raises a permanent ``ProviderError`` when the
        configured provider has no adapter here."""
        name = "sandbox" if demo else self._default
        provider = self._providers.get(name)
        if provider is None:
            raise ProviderError(
                "provider_unavailable", f"No adapter for provider {name!r}.", transient=False
            )
        return provider

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

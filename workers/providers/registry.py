"""Which adapter sends a stream's messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from core.provider_choice import HTTP, SANDBOX, WHATSAPP_CLOUD, provider_for
from core.settings import Settings
from workers.providers.base import Provider, ProviderError
from workers.providers.http import HttpProvider
from workers.providers.sandbox import SandboxProvider
from workers.providers.whatsapp_cloud import CredentialSource, WhatsAppCloudProvider

if TYPE_CHECKING:
    from core.runtime import Runtime


class ProviderRegistry:
    """Adapters by name, built once per worker process."""

    def __init__(self, providers: dict[str, Provider], default: str) -> None:
        self._providers = providers
        self._default = default

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        redis_client: redis.Redis | None,
        *,
        whatsapp_credentials: CredentialSource | None = None,
    ) -> ProviderRegistry:
        """The sandbox always; ``http`` when its URL is configured; ``whatsapp_cloud`` when
        there is somewhere to read streams' credentials from."""
        providers: dict[str, Provider] = {SANDBOX: SandboxProvider(settings.sandbox, redis_client)}
        if settings.http_provider.url:
            providers[HTTP] = HttpProvider(settings.http_provider)
        if whatsapp_credentials is not None:
            providers[WHATSAPP_CLOUD] = WhatsAppCloudProvider(
                settings.whatsapp, whatsapp_credentials
            )
        return cls(providers, settings.default_provider)

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> ProviderRegistry:
        """Every adapter, WhatsApp credentials read from the database with the runtime's
        secret box."""
        from workers.providers.whatsapp_credentials import StoredWhatsAppCredentials

        credentials = StoredWhatsAppCredentials(
            runtime.session_factory,
            runtime.secret_box,
            runtime.clock,
            runtime.settings.whatsapp.credentials_cache_seconds,
        )
        return cls.from_settings(runtime.settings, runtime.redis, whatsapp_credentials=credentials)

    def for_stream(self, *, demo: bool, stream_type: str | None = None) -> Provider:
        """Demo streams always use the sandbox, WhatsApp streams the Cloud API, the rest the
        configured default. Raises a permanent ``ProviderError`` when that provider has no
        adapter here (a refusal of our set-up: ``configuration``)."""
        if stream_type is None:
            name = SANDBOX if demo else self._default
        else:
            name = provider_for(stream_type, demo=demo, default_provider=self._default)
        provider = self._providers.get(name)
        if provider is None:
            raise ProviderError(
                "provider_unavailable",
                f"No adapter for provider {name!r}.",
                transient=False,
                configuration=True,
            )
        return provider

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

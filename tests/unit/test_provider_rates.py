"""Each provider adapter declares its throughput (issue 3, item 2), and a declared rate
sends its messages through admission whatever their stream's own settings."""

from __future__ import annotations

import uuid

from core.settings import HttpProviderSettings, SandboxSettings, WhatsAppApiSettings
from workers.gates import gated_providers
from workers.providers.http import HttpProvider
from workers.providers.registry import ProviderRegistry
from workers.providers.sandbox import SandboxProvider
from workers.providers.whatsapp_cloud import WhatsAppCloudProvider, WhatsAppCredentials


class Credentials:
    def __init__(self, phone_number_id: str | None) -> None:
        self.phone_number_id = phone_number_id

    def credentials(self, stream_id: str) -> WhatsAppCredentials | None:
        if self.phone_number_id is None:
            return None
        return WhatsAppCredentials(phone_number_id=self.phone_number_id, access_token="t")

    def report_problem(self, stream_id: str, code: str, message: str) -> None:
        pass


def http(**fields: object) -> HttpProvider:
    return HttpProvider(
        HttpProviderSettings(url="http://127.0.0.1:9/sms", _env_file=None, **fields)
    )


def test_the_http_provider_declares_the_rate_agreed_with_the_carrier() -> None:
    assert http().max_per_second is None
    provider = http(max_per_second=50)
    assert provider.max_per_second == 50
    assert provider.rate_scope(uuid.uuid4()) == "http"


def test_whatsapp_declares_metas_throughput_per_business_number() -> None:
    provider = WhatsAppCloudProvider(WhatsAppApiSettings(_env_file=None), Credentials("1055"))
    assert provider.max_per_second == 80
    assert provider.rate_scope(uuid.uuid4()) == "whatsapp_cloud:1055"
    unset = WhatsAppCloudProvider(WhatsAppApiSettings(_env_file=None), Credentials(None))
    assert unset.rate_scope(uuid.uuid4()) == "whatsapp_cloud"


def test_a_declared_rate_gates_every_message_of_its_provider() -> None:
    sandbox = SandboxProvider(SandboxSettings(_env_file=None))
    paced = ProviderRegistry({"sandbox": sandbox, "http": http(max_per_second=50)}, "http")
    gated = gated_providers(paced)
    assert (False, "transactional") in gated, "the carrier's rate paces real streams"
    assert (True, "transactional") not in gated, "demo streams use the unpaced sandbox"
    free = ProviderRegistry({"sandbox": sandbox, "http": http()}, "http")
    assert (False, "transactional") not in gated_providers(free)

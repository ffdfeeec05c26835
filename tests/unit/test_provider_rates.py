"""Each provider adapter declares its throughput (issue 3, item 2), and a declared rate
sends its messages through admission whatever their stream's own settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

from core.segments import count_segments
from core.settings import HttpProviderSettings, SandboxSettings, WhatsAppApiSettings
from schemas.enums import StreamType
from workers.admission import LocalAdmission
from workers.gates import Gates, gated_providers, rate_cost
from workers.jobs import Job
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


def _job(stream_type: StreamType, body: str) -> Job:
    count = count_segments(body)
    return Job(
        message_id=uuid.uuid4(),
        stream_id=uuid.uuid4(),
        account_id=uuid.uuid4(),
        stream_type=stream_type,
        sender=None,
        recipient="+972524265292",
        body=body,
        segments=count.segments,
        encoding=count.encoding,
        attempts=0,
        attempts_base=0,
        expires_at=None,
        demo=False,
        settings={"max_per_second": 10},
    )


def test_a_whatsapp_message_takes_one_place_of_its_numbers_throughput() -> None:
    """Meta's throughput counts messages a second per business number, and a WhatsApp
    message has no SMS segments: a 720-character text takes one of the 80 places, not five
    (which would send 16 such messages a second instead of 80)."""
    body = "Your order #1234 has shipped. " * 24
    whatsapp, sms = _job(StreamType.whatsapp, body), _job(StreamType.transactional, body)
    assert (whatsapp.segments, sms.segments) == (5, 5)
    runtime = SimpleNamespace(clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    gates = Gates(runtime, LocalAdmission(), outcomes=None)  # type: ignore[arg-type]
    provider = WhatsAppCloudProvider(WhatsAppApiSettings(_env_file=None), Credentials("1055"))
    request = gates.request(whatsapp, provider)
    assert (request.cost, request.provider, request.limits.provider_per_second) == (
        1,
        "whatsapp_cloud:1055",
        80,
    )
    assert rate_cost(sms) == 5, "SMS carriers count segments"

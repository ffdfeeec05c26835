"""Configuration, read from ``STREAMS_*`` environment variables and an optional ``.env`` file.

Nothing reads settings at import time: each entry point builds one ``Settings`` and passes it
down (``create_app(settings)``, ``build_broker(settings)``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.network import parse_network
from schemas.enums import StreamType

SQLITE_DEFAULT_URL = "sqlite:///.streams/dev.db"


class SandboxSettings(BaseSettings):
    """The simulated carrier used by demo streams, ``streams dev`` and the benchmarks."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMS_SANDBOX_", env_file=".env", extra="ignore"
    )

    latency_ms: float = Field(default=20.0, ge=0)
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    #: Share of sends refused with a passing error (like a carrier timeout or 503).
    transient_failure_rate: float = Field(default=0.0, ge=0, le=1)
    undelivered_rate: float = Field(default=0.0, ge=0, le=1)
    receipt_delay_seconds: float = Field(default=1.0, ge=0)
    #: The carrier's own throughput, fleet-wide, in segments per second (unset: unlimited).
    max_per_second: float | None = Field(default=None, gt=0)
    #: The most messages it takes in one request, as a carrier with a bulk API does
    #: (1: one message per request).
    max_batch: int = Field(default=100, ge=1, le=1000)


class HttpProviderSettings(BaseSettings):
    """The generic HTTP SMS provider (``default_provider = "http"``): where it is, how we
    authenticate to it, and how our fields map onto its JSON (dot paths reach nested keys)."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMS_HTTP_PROVIDER_", env_file=".env", extra="ignore"
    )

    url: str | None = None
    #: The carrier's throughput, fleet-wide, in segments a second, as agreed with it
    #: (unset: it declares none, and only the streams' own limits pace the sends).
    max_per_second: float | None = Field(default=None, gt=0)
    auth_header: str = "Authorization"
    #: The whole header value, e.g. ``Bearer abc``. Never logged.
    auth_value: SecretStr | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    #: Our field (sender, recipient, body, reference) → the provider's request field.
    request_fields: dict[str, str] = Field(
        default_factory=lambda: {
            "sender": "from",
            "recipient": "to",
            "body": "text",
            "reference": "reference",
        }
    )
    #: Fixed fields added to every request body (e.g. ``{"type": "sms"}``).
    extra_fields: dict[str, object] = Field(default_factory=dict)
    #: Where the provider's message id is in its answer.
    response_id_field: str = "message_id"
    #: Delivery receipts: our field (message_id, reference, status, part, parts, error_code)
    #: → the provider's field.
    receipt_fields: dict[str, str] = Field(
        default_factory=lambda: {
            "message_id": "message_id",
            "reference": "reference",
            "status": "status",
            "part": "part",
            "parts": "parts",
            "error_code": "error_code",
        }
    )
    #: The provider's receipt status words → ``sent``, ``delivered`` or ``undelivered``.
    receipt_statuses: dict[str, str] = Field(
        default_factory=lambda: {
            "accepted": "sent",
            "sent": "sent",
            "ACCEPTD": "sent",
            "ENROUTE": "sent",
            "delivered": "delivered",
            "DELIVRD": "delivered",
            "undelivered": "undelivered",
            "UNDELIV": "undelivered",
            "failed": "undelivered",
            "expired": "undelivered",
            "EXPIRED": "undelivered",
            "rejected": "undelivered",
            "REJECTD": "undelivered",
        }
    )
    #: Inbound (MO) messages: our field (from, to, text, message_id, received_at) → theirs.
    inbound_fields: dict[str, str] = Field(
        default_factory=lambda: {
            "from": "from",
            "to": "to",
            "text": "text",
            "message_id": "message_id",
            "received_at": "received_at",
        }
    )
    #: Receipts and inbound messages must carry ``signature_header``: the hex HMAC-SHA256 of
    #: the raw body keyed with this secret (``sha256=`` prefix optional). Unset: refused.
    webhook_secret: SecretStr | None = None
    signature_header: str = "X-Signature"


class WhatsAppApiSettings(BaseSettings):
    """The WhatsApp Cloud API (Graph API). Credentials are per stream, set through
    ``/api/v1/streams/{id}/whatsapp``; only the endpoint is configured here."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMS_WHATSAPP_", env_file=".env", extra="ignore"
    )

    api_base_url: str = "https://graph.facebook.com"
    api_version: str = "v21.0"
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    #: Meta's pair rate limit (131056) means "not to this person for a while".
    pair_rate_retry_seconds: float = Field(default=60.0, ge=0, le=86_400)
    #: How long a worker trusts its cached copy of a stream's credentials.
    credentials_cache_seconds: float = Field(default=5.0, ge=0)
    #: Messages a second per business phone number, across every worker: Meta's default
    #: throughput for Cloud API numbers (numbers upgraded by Meta take 1,000).
    max_per_second: float = Field(default=80.0, gt=0, le=10_000)


class CallbackSettings(BaseSettings):
    """Signed callbacks to customers (inbound messages and status changes)."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMS_CALLBACK_", env_file=".env", extra="ignore"
    )

    connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    #: Retries stop this long after the first attempt; the callback becomes a dead letter.
    retry_window_seconds: float = Field(default=24 * 3600.0, gt=0, le=30 * 86_400)
    backoff_base_seconds: float = Field(default=10.0, ge=0, le=86_400)
    backoff_max_seconds: float = Field(default=3600.0, ge=0, le=86_400)
    #: Callback URLs that resolve to loopback, private, link-local or reserved addresses are
    #: refused (SSRF). Only turn this on for tests or a closed network.
    allow_private_addresses: bool = False
    #: A pending callback this long overdue is enqueued again by ``streams relay``.
    sweep_grace_seconds: float = Field(default=120.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMS_", env_file=".env", extra="ignore")

    database_url: str = SQLITE_DEFAULT_URL
    #: Connections per process. The ingress runs as many request threads; a worker pool
    #: needs at least ``--threads`` (plus the relay and receipts) per process.
    database_pool_size: int = Field(default=20, ge=1, le=200)
    #: Empty means dramatiq's in-process StubBroker: only for the all-in-one ``streams dev``.
    redis_url: str | None = None
    #: How long one Redis command (an enqueue, a rate-limit call) may wait for its answer.
    #: A hung Redis costs an ingress request at most this much (plus the connect timeout):
    #: the message is then left to the relay. Keep it above the slowest legitimate command
    #: (dramatiq's queue maintenance on a large backlog takes milliseconds).
    redis_socket_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    #: How long opening a Redis connection may take.
    redis_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    #: Derives the keys that encrypt stream tokens at rest. Required outside ``streams dev``.
    secret_key: str | None = None
    #: Peers whose ``X-Forwarded-For`` is believed (CIDRs). Everyone else is the client.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Public base URL of the ingress, shown in the Request API tab.
    public_url: str = "http://localhost:8080"
    #: A console sign-in lasts this long; signing out or rotating the account key ends it.
    console_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)

    log_format: str = "auto"  # auto | json | console
    log_level: str = "INFO"

    max_batch: int = Field(default=1000, ge=1)
    #: A batch goes onto its queue as jobs of this many messages each: fewer broker round
    #: trips at the ingress, while the jobs still spread over every worker thread.
    enqueue_chunk_size: int = Field(default=20, ge=1, le=500)
    #: Queues whose single sends go out packed, like a batch: the single sends stored by one
    #: group commit (``dispatcher.group_commit``) become jobs of up to ``enqueue_chunk_size``
    #: messages instead of one job each. Under load that costs a worker far less per message;
    #: a lone send is still a job of one. A packed message may wait for the calls ahead of it
    #: in its job: ``workers.provider_calls.INLINE_SECONDS`` (50 ms, even when a call is
    #: still running then), then a few rounds of side-by-side calls. OTP, two-way and
    #: WhatsApp (whose calls go one at a time) keep a job per message.
    packed_single_send_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["marketing", "transactional"]
    )
    #: Provider calls made at once for one batch job once its calls have taken
    #: ``workers.provider_calls.INLINE_SECONDS`` together: the rest of the job's messages go
    #: out side by side, not one after another. 1 = always one after another.
    batch_send_concurrency: int = Field(default=8, ge=1, le=256)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: The ingress quota (API.md: 429 with Retry-After): messages a second one stream may
    #: hand the send API (``/v1/messages``, ``/v1/otp/send``), counted in messages (a batch
    #: of 100 is 100) and shared by every ingress process through Redis. 0 turns it off.
    #: 1,000 a second is above what a stream's carriers take (the workers pace each
    #: stream and provider far lower), so a normal client never meets it; it bounds what
    #: one runaway client piles into PostgreSQL and the queues (3.6 million an hour).
    ingress_quota_per_second: float = Field(default=1000.0, ge=0)
    #: Messages a stream may send at once above that rate: five full batches back to back
    #: from idle, so a client posting a backlog in batches of ``max_batch`` is not refused
    #: at the start. A request bigger than the burst is let in only when the stream's
    #: quota is idle.
    ingress_quota_burst: int = Field(default=5000, ge=1)
    #: How long an ingress process trusts its cached view of a token (invariant 3: ≤ 1 s).
    auth_cache_seconds: float = Field(default=0.5, ge=0, le=1)

    #: A message claimed for sending longer ago than this is considered abandoned and reclaimed.
    #: Keep it well above the providers' timeouts: a claim taken back while its provider call
    #: still runs is offered twice. The sandbox and http providers recognise the repeated
    #: reference; WhatsApp's Cloud API has no idempotency key, so there it would be a second
    #: message. A batch job uses its claims only within half of it (the rest go back).
    claim_lease_seconds: float = Field(default=300.0, gt=0)
    #: The relay leaves a fresh message to the ingress' own enqueue for this long.
    relay_grace_seconds: float = Field(default=5.0, ge=0)
    relay_interval_seconds: float = Field(default=1.0, gt=0)
    #: A message marked enqueued this long ago that still waits, while its queue holds
    #: nothing in Redis (nothing ready, fetched or delayed), was lost by the broker (Redis
    #: restarted without persistence, failed over to an empty replica, was flushed): the
    #: relay enqueues it again; the claim turns any copy that did survive into a no-op.
    relay_lost_after_seconds: float = Field(default=60.0, gt=0)
    relay_batch: int = Field(default=1000, ge=1)
    #: Provider errors that may pass are retried this many times before the message fails.
    max_send_attempts: int = Field(default=5, ge=1)
    #: The back-off is bounded by a day, as a carrier's ``Retry-After`` is: past about
    #: 2.5e11 s a retry's time leaves the calendar, and the worker could not settle the
    #: error at all.
    retry_backoff_seconds: float = Field(default=2.0, ge=0, le=86_400)
    retry_backoff_max_seconds: float = Field(default=600.0, ge=0, le=86_400)
    #: A throttled message waits in its worker thread up to this long; beyond it, it is
    #: parked in the database and the relay brings it back, freeing the thread.
    throttle_inline_wait_seconds: float = Field(default=0.25, ge=0, le=5)
    #: The relay releases scheduled and held messages due within this window, with a
    #: broker delay for the rest, so they go out on time rather than one sweep late.
    relay_lookahead_seconds: float = Field(default=1.0, ge=0, le=60)

    #: Provider for streams that are not demo streams (until real adapters are configured).
    #: ``sandbox`` or ``http``; WhatsApp streams always use ``whatsapp_cloud``.
    default_provider: str = "sandbox"

    #: How long an idle worker waits between polls of its queue (dramatiq's worker_timeout,
    #: 1 s by default there). It bounds the latency of the first message on a quiet queue
    #: and the precision of delayed messages; each idle poll is one cheap Redis call.
    worker_poll_ms: int = Field(default=50, ge=5, le=5000)
    #: Queues whose idle consumers are woken by each enqueue instead of waiting for their
    #: next poll (``core.queue_doorbell``): one more Redis call per job enqueued on them.
    doorbell_queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["otp"])
    #: dramatiq Redis broker: how long without heartbeat before a worker's messages go back.
    broker_heartbeat_timeout_ms: int = Field(default=60_000, ge=1000)
    broker_maintenance_chance: int = Field(default=1000, ge=0, le=1_000_000)

    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    http_provider: HttpProviderSettings = Field(default_factory=HttpProviderSettings)
    whatsapp: WhatsAppApiSettings = Field(default_factory=WhatsAppApiSettings)
    callbacks: CallbackSettings = Field(default_factory=CallbackSettings)

    def lease_shorter_than_calls(self) -> float | None:
        """The longest provider timeout when ``claim_lease_seconds`` is not more than four
        times it, else None. A batch uses its claims for half the lease, and a call may run
        for twice its timeout (its deadline, and one read that was waiting when it passed:
        ``workers.providers.http_client.post_within``): past that, the relay takes a claim
        back (or, for WhatsApp, fails it as an unknown outcome) while its call still runs."""
        longest = max(self.http_provider.timeout_seconds, self.whatsapp.timeout_seconds)
        return longest if self.claim_lease_seconds <= 4 * longest else None

    @field_validator(
        "trusted_proxies", "doorbell_queues", "packed_single_send_queues", mode="before"
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        # Parsed here so a typo stops start-up naming the variable, not a request later.
        for index, cidr in enumerate(value):
            network = parse_network(cidr)  # ValueError: pydantic names the field
            if network.prefixlen == 0:
                raise ValueError(
                    f"trusted_proxies[{index}] {cidr!r} trusts every peer: anyone could then "
                    "choose their client address with X-Forwarded-For; name your proxies"
                )
        return value

    @field_validator("doorbell_queues", "packed_single_send_queues")
    @classmethod
    def _known_queues(cls, value: list[str], info: ValidationInfo) -> list[str]:
        known = [t.queue_name for t in StreamType]
        for index, name in enumerate(value):
            if name not in known:
                raise ValueError(f"{info.field_name}[{index}] {name!r} is not one of {known}")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def require_secret_key(self) -> str:
        """The configured secret key; raises ``RuntimeError`` naming the variable if unset."""
        if not self.secret_key:
            raise RuntimeError(
                "STREAMS_SECRET_KEY is not set: it encrypts stream tokens at rest. "
                "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return self.secret_key

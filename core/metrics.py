"""Prometheus metrics shared by the ingress and the workers.

Names follow Prometheus conventions: ``streams_`` prefix, ``_total`` counters, ``_seconds``
histograms. Labels are bounded sets (type, status, queue, provider, route): never a message
id or a phone number.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (several uvicorn or worker processes, see
``core.metrics_multiprocess``), prometheus-client writes per-process files and
``exposition_registry`` sums them; gauges say how (``multiprocess_mode``).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.registry import Collector

MESSAGES = Counter(
    "streams_messages_total",
    "Messages by stream type and the status they reached.",
    ["type", "status"],
)
SEGMENTS_SENT = Counter(
    "streams_segments_sent_total", "SMS segments handed to a provider.", ["type"]
)
MESSAGES_REJECTED = Counter(
    "streams_messages_rejected_total",
    "Send items refused at the ingress, by reason.",
    ["type", "reason"],
)
HTTP_REQUESTS = Counter(
    "streams_http_requests_total", "HTTP requests by route and status code.", ["route", "code"]
)
HTTP_LATENCY = Histogram(
    "streams_http_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PROVIDER_CALL = Histogram(
    "streams_provider_call_duration_seconds",
    "Time a provider took to accept or refuse a message.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_ERRORS = Counter(
    "streams_provider_errors_total",
    "Provider calls that failed, by provider and kind (transient, permanent, configuration: "
    "the carrier refused our credentials or account, not the message; or unknown: the "
    "request left and no usable answer came back from a provider that is not idempotent).",
    ["provider", "kind"],
)
WORKER_PROCESSING = Histogram(
    "streams_worker_processing_duration_seconds",
    "Time from the start of a message's delivery job to its recorded outcome, by queue "
    "(the messages of a batch job are recorded together).",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WORKER_JOBS = Counter(
    "streams_worker_jobs_total",
    "Jobs a worker processed, by queue and outcome (done: it returned; failed: it raised, "
    "and dramatiq retries it later or gives up on it). Every attempt counts.",
    ["queue", "outcome"],
)
WORKER_GROUP_ITEMS = Histogram(
    "streams_worker_group_items",
    "Messages per group-committed step of a worker process (single-message jobs of its "
    "threads claimed or recorded in one transaction), by step.",
    ["step"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
ENQUEUE_FAILURES = Counter(
    "streams_enqueue_failures_total",
    "Accepted messages whose enqueue failed and were left to the relay.",
    ["queue"],
)
RATE_LIMIT_DELAYS = Counter(
    "streams_rate_limit_delays_total",
    "Times a message had to wait for a rate limit, by stream type and scope (stream: the "
    "stream's own max_per_second; provider: the carrier's rate, shared by its streams).",
    ["type", "scope"],
)
MESSAGES_HELD = Counter(
    "streams_messages_held_total",
    "Messages parked until later, by reason (rate_limited, quiet_hours).",
    ["type", "reason"],
)
RELAYED = Counter(
    "streams_relay_enqueued_total",
    "Messages the relay put on a queue, by reason (missed, held, scheduled, reclaimed, "
    "unparked; lost: their queue held nothing in Redis; data_loss: Redis lost its data).",
    ["reason"],
)
HOLDS_RELEASED = Counter(
    "streams_relay_holds_released_total",
    "Held messages the relay put on a queue at the end of their hold, by the hold's reason "
    "(quiet_hours, rate_limited, retry...): the held share of "
    'streams_relay_enqueued_total{reason="held"}.',
    ["reason"],
)
RELAY_SWEEPS = Counter(
    "streams_relay_sweeps_total",
    "Outbox relay sweeps, by outcome (ok, failed: the sweep raised and is tried again at the "
    "next interval).",
    ["outcome"],
)
RELAY_LAST_SUCCESS = Gauge(
    "streams_relay_last_success_timestamp_seconds",
    "When a relay sweep last succeeded (Unix time; 0 in a process that never ran one, "
    "such as the ingress and the worker pools).",
    multiprocess_mode="max",
)
MESSAGE_DEAD_LETTERS = Counter(
    "streams_message_dead_letters_total",
    "Messages kept as dead letters, counted once their row is committed, by stream type and "
    "reason (retries_exhausted, outcome_unknown, configuration, worker_error).",
    ["type", "reason"],
)
DEAD_LETTER_REPLAYS = Counter(
    "streams_dead_letter_replays_total",
    "Message dead letters replayed (their message queued again), by stream type.",
    ["type"],
)

CALLBACKS = Counter(
    "streams_callbacks_total",
    "Customer callback attempts by event and outcome (delivered, retry, dead, canceled).",
    ["event", "outcome"],
)
CALLBACK_CHANGES_RECOVERED = Counter(
    "streams_callback_changes_recovered_total",
    "Committed status changes whose callbacks the history sweep wrote because no follow-up "
    "job had within the grace: the job was lost (Redis lost it, or the process died before "
    "the enqueue) or is late behind a callbacks backlog.",
)
RECEIPTS_RECOVERED = Counter(
    "streams_receipts_recovered_total",
    "Messages the receipt sweep moved with a delivery receipt that came before their "
    "provider id was recorded, because no follow-up job had applied it within the grace: "
    "the job was lost, or is late behind a callbacks backlog.",
)
CALLBACK_DURATION = Histogram(
    "streams_callback_duration_seconds",
    "Time a customer endpoint took to answer a callback.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOKS = Counter(
    "streams_webhooks_total",
    "Provider webhooks received (inbound, receipt, whatsapp), by outcome.",
    ["kind", "outcome"],
)
INBOUND_MESSAGES = Counter(
    "streams_inbound_messages_total",
    "Inbound messages stored, by provider and opt-out action (none, stop, start).",
    ["provider", "opt_out"],
)
OTP_SENDS = Counter("streams_otp_sends_total", "One-time codes sent, by code mode.", ["mode"])
OTP_SENDS_REJECTED = Counter(
    "streams_otp_sends_rejected_total",
    "OTP sends refused by the abuse limits, by reason (resend_cooldown, recipient_limit).",
    ["reason"],
)
INGRESS_QUOTA_REFUSALS = Counter(
    "streams_ingress_quota_refusals_total",
    "Send requests refused with 429 rate_limited at the ingress quota, by stream type.",
    ["type"],
)
INGRESS_QUOTA_UNAVAILABLE = Counter(
    "streams_ingress_quota_unavailable_total",
    "Send requests let through unasked because the ingress quota's store (Redis) failed.",
)
OTP_VERIFICATIONS = Counter(
    "streams_otp_verifications_total",
    "OTP verifications by outcome (valid, wrong_code, expired, used, no_code, too_many_failures).",
    ["outcome"],
)


MESSAGES_ACCEPTED = Counter(
    "streams_messages_accepted_total",
    "Messages accepted (stored, then queued or scheduled), by stream type.",
    ["type"],
)
DELIVERY_LATENCY = Histogram(
    "streams_delivery_latency_seconds",
    "From a delivery's enqueue (or its due time, when delayed) to the end of its attempt: "
    "the wait in the queue plus the work, by queue.",
    ["queue"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 900),
)
WORKER_IN_PROGRESS = Gauge(
    "streams_worker_messages_in_progress",
    "Queue messages being processed right now, by queue.",
    ["queue"],
    multiprocess_mode="livesum",
)
REALTIME_FEEDS = Gauge(
    "streams_realtime_feeds_open",
    "Realtime (Server-Sent Events) feeds open on the ingress.",
    multiprocess_mode="livesum",
)
RATE_LIMIT_DELAY = Histogram(
    "streams_rate_limit_delay_seconds",
    "How long a rate limit held a message back, by stream type and scope (stream, provider).",
    ["type", "scope"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)


def is_multiprocess() -> bool:
    """prometheus-client's multiprocess mode: values live in per-process files."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _ThisProcess:
    """The default registry, as one collector of another registry."""

    def collect(self):  # type: ignore[no-untyped-def]
        return REGISTRY.collect()


def exposition_registry(*collectors: Collector) -> CollectorRegistry:
    """What a ``/metrics`` endpoint exposes: this process's metrics (or, in multiprocess
    mode, every process's, aggregated from their files) plus ``collectors`` computed at
    scrape time (queue depth)."""
    registry = CollectorRegistry(auto_describe=False)
    if is_multiprocess():
        prometheus_multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())  # type: ignore[arg-type]
    for collector in collectors:
        registry.register(collector)
    return registry


def render_metrics(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The text exposition of ``registry`` (by default: this process, or all processes in
    multiprocess mode)."""
    return generate_latest(registry or exposition_registry()), CONTENT_TYPE_LATEST

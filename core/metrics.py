"""Prometheus metrics shared by the ingress and the workers.

Names follow Prometheus conventions: ``streams_`` prefix, ``_total`` counters, ``_seconds``
histograms. Labels are bounded sets (type, status, queue, provider, route): never a message
id or a phone number.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (several uvicorn or worker processes), prometheus-
client writes per-process files and ``render_metrics`` aggregates them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

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
    "Provider calls that failed, by provider and kind (transient or permanent).",
    ["provider", "kind"],
)
WORKER_PROCESSING = Histogram(
    "streams_worker_processing_duration_seconds",
    "Time a worker spent on one message, by queue.",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ENQUEUE_FAILURES = Counter(
    "streams_enqueue_failures_total",
    "Accepted messages whose enqueue failed and were left to the relay.",
    ["queue"],
)
RATE_LIMIT_DELAYS = Counter(
    "streams_rate_limit_delays_total",
    "Times a message had to wait for its stream's or provider's rate limit.",
    ["type"],
)
RATE_LIMIT_WAIT = Histogram(
    "streams_rate_limit_wait_seconds",
    "Time a worker thread waited in line for a rate-limit slot before sending.",
    ["type"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
MESSAGES_HELD = Counter(
    "streams_messages_held_total",
    "Messages parked until later, by reason (rate_limited, quiet_hours).",
    ["type", "reason"],
)
RELAYED = Counter(
    "streams_relay_enqueued_total",
    "Messages the relay put on a queue, by reason (missed, held, scheduled, reclaimed).",
    ["reason"],
)

CALLBACKS = Counter(
    "streams_callbacks_total",
    "Customer callback attempts by event and outcome (delivered, retry, dead, canceled).",
    ["event", "outcome"],
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
OTP_VERIFICATIONS = Counter(
    "streams_otp_verifications_total",
    "OTP verifications by outcome (valid, wrong_code, expired, used, no_code, too_many_failures).",
    ["outcome"],
)


def render_metrics() -> tuple[bytes, str]:
    """The text exposition of this process (or of all processes in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

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
RELAYED = Counter(
    "streams_relay_enqueued_total",
    "Messages the relay put on a queue, by reason (missed, scheduled, reclaimed).",
    ["reason"],
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
#: Recorded by the flow-control work (fleet-wide rate limits, invariant 5).
RATE_LIMIT_DELAYS = Counter(
    "streams_rate_limit_delays_total",
    "Messages held back by their stream's rate limit, by stream type.",
    ["type"],
)
RATE_LIMIT_DELAY = Histogram(
    "streams_rate_limit_delay_seconds",
    "How long a stream's rate limit held a message back, by stream type.",
    ["type"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
#: Recorded by the OTP work.
OTP_VERIFICATIONS = Counter(
    "streams_otp_verifications_total",
    "OTP verifications by outcome (valid, invalid, expired, exhausted).",
    ["outcome"],
)
#: Recorded by the callbacks work (two-way and status callbacks to customers).
CALLBACKS = Counter(
    "streams_callbacks_total",
    "Customer callbacks by outcome (delivered, retried, failed, dead_lettered).",
    ["outcome"],
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

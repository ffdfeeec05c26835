"""Customer callbacks: signed, retried with exponential backoff for the retry window (24 h by
default), then kept as dead letters that can be replayed.

Each callback is a ``callback_deliveries`` row. ``deliver`` makes one attempt: it signs the
body (``X-Streams-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``, keyed by the
stream's webhook secret), calls the customer with short timeouts, and records the outcome:
``delivered`` on a 2xx, else a retry at ``now + backoff`` (full jitter) or, once the window
is spent, ``dead``. An attempt is claimed before the call (its row's next attempt is pushed
past the longest the attempt may take, on the condition it is still due), so two jobs for
one callback (a redelivery, the sweep's re-enqueue) never both call the customer,
and the whole attempt is held to ``connect_timeout_seconds + timeout_seconds``
(``workers.outbound_guard.attempt_deadline``). These run on the ``callbacks`` queue with a
pool of their own, so a slow or dead customer endpoint never holds up sending.

A stream-level callback follows the stream's *current* set-up (URL, method, headers) at each
attempt, so fixing a broken URL also fixes the retries and the replays. A message's own
``callback_url`` gets a plain signed POST, without the stream's custom headers (they are
meant for the stream's endpoint, not for any URL a sender names).

For ``GET`` callbacks the payload goes in the query string and the signature covers that raw
query string instead of a body.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import select, update

from core import metrics
from core.callback_events import CANCELED, DEAD, DELIVERED, PENDING
from core.clock import as_utc
from core.runtime import Runtime
from core.signatures import SIGNATURE_HEADER, streams_signature
from schemas.tables import CallbackDelivery, Stream
from workers.outbound_guard import attempt_deadline, guarded_client, refusal
from workers.queueing import enqueue_callback

log = structlog.get_logger(__name__)

USER_AGENT = "Streams-Callbacks/1"
#: Headers a stream's custom headers may not replace.
_RESERVED_HEADERS = frozenset({SIGNATURE_HEADER.lower(), "content-type", "host", "content-length"})
_MAX_ERROR = 300
#: An attempt's claim outlasts its deadline by this much (a busy process, the record).
_CLAIM_MARGIN_SECONDS = 30.0
#: A job may run this much before its row's next attempt is due (clocks of two hosts).
_DUE_SLACK = timedelta(seconds=1)


def callback_backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base·2^(attempt-1))]."""
    return random.uniform(0, min(cap, base * (2 ** min(max(attempt - 1, 0), 30))))


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes we send and sign (compact JSON, UTF-8)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def query_parameters(payload: dict[str, Any]) -> dict[str, str]:
    """A payload as GET parameters: scalars as text, objects as JSON, nulls left out."""
    flat: dict[str, str] = {}
    for key, value in payload.items():
        if value is None:
            continue
        if isinstance(value, bool):
            flat[key] = "true" if value else "false"
        elif isinstance(value, dict | list):
            flat[key] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        else:
            flat[key] = str(value)
    return flat


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    method: str
    headers: dict[str, str]


class CallbackSender:
    def __init__(self, runtime: Runtime, client: httpx.Client | None = None) -> None:
        self.runtime = runtime
        settings = runtime.settings.callbacks
        self._settings = settings
        self._client = client or guarded_client(
            connect_timeout=settings.connect_timeout_seconds,
            timeout=settings.timeout_seconds,
            allow_private=settings.allow_private_addresses,
        )
        #: The longest one attempt may take, connecting included.
        self._attempt_seconds = settings.connect_timeout_seconds + settings.timeout_seconds

    def deliver(self, delivery_id: str) -> None:
        """One attempt at a pending callback; a no-op for one already settled, or whose
        next attempt is not due (a repeat of an enqueue)."""
        key = uuid.UUID(delivery_id)
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            row = session.execute(
                select(CallbackDelivery, Stream)
                .join(Stream, Stream.id == CallbackDelivery.stream_id)
                .where(CallbackDelivery.id == key)
            ).first()
        if row is None:
            log.warning("callback_unknown", delivery_id=delivery_id)
            return
        delivery, stream = row
        if delivery.state != PENDING:
            return
        if as_utc(delivery.next_attempt_at) > now + _DUE_SLACK:
            return
        log_ = log.bind(delivery_id=delivery_id, stream_id=str(stream.id), event=delivery.event)
        if stream.deleted_at is not None:
            self._settle(delivery, CANCELED, "the stream was deleted", None, now)
            return
        target = self._target(delivery, stream)
        if target is None:
            self._settle(delivery, CANCELED, "the stream has no callback URL", None, now)
            log_.info("callback_canceled_no_url")
            return
        refused = refusal(target.url, allow_private=self._settings.allow_private_addresses)
        if refused is not None:
            self._settle(delivery, DEAD, refused, None, now)
            log_.warning("callback_refused_address", reason=refused)
            return
        if not self._claim(delivery, now):
            return  # another job for this callback is making its attempt
        try:
            secret = self.runtime.secret_box.open(stream.webhook_secret_sealed or "")
        except ValueError:  # none stored, or sealed with a key this process does not have
            status_code, error = None, "the stream's webhook secret cannot be read"
            log_.error("callback_secret_unreadable")
        else:
            status_code, error = self._call(target, delivery.payload, secret)
        if error is None:
            self._settle(delivery, DELIVERED, None, status_code, self.runtime.clock())
            log_.info("callback_delivered", status_code=status_code, attempt=delivery.attempts + 1)
            return
        self._failed(delivery, error, status_code, log_)

    def _claim(self, delivery: CallbackDelivery, now: datetime) -> bool:
        """Take this attempt: push the row's next attempt past the longest the attempt may
        take, on the condition it is still due (and on the attempt read). Of two jobs that
        read it, the first to claim wins and the other finds it no longer due; the sweep
        leaves the row alone until the claim has run out (a worker died mid-call), then
        makes it due again. (Not "unchanged since read": the sweep makes a row due after
        it enqueues its job, and a worker that read the row before would lose to that.)"""
        until = now + timedelta(seconds=self._attempt_seconds + _CLAIM_MARGIN_SECONDS)
        return self._update_pending(
            delivery,
            {"next_attempt_at": until},
            CallbackDelivery.next_attempt_at <= now + _DUE_SLACK,
        )

    def _update_pending(
        self, delivery: CallbackDelivery, values: dict[str, Any], *also: Any
    ) -> bool:
        """Set ``values`` on ``delivery``'s row if it is still pending on the attempt it was
        read at (and ``also`` holds); commits. Whether it did."""
        with self.runtime.session_factory() as session:
            moved = session.execute(
                update(CallbackDelivery)
                .where(
                    CallbackDelivery.id == delivery.id,
                    CallbackDelivery.state == PENDING,
                    CallbackDelivery.attempts == delivery.attempts,
                    *also,
                )
                .values(**values)
            ).rowcount
            session.commit()
        return bool(moved)

    def _target(self, delivery: CallbackDelivery, stream: Stream) -> Target | None:
        if delivery.url:
            return Target(delivery.url, "POST", {})
        settings = stream.settings or {}
        url = settings.get("callback_url")
        if not url:
            return None
        return Target(
            str(url),
            str(settings.get("callback_method") or "POST"),
            dict(settings.get("callback_headers") or {}),
        )

    def _call(
        self, target: Target, payload: dict[str, Any], secret: str
    ) -> tuple[int | None, str | None]:
        timestamp = int(self.runtime.clock().timestamp())
        headers = {
            name: value
            for name, value in target.headers.items()
            if name.lower() not in _RESERVED_HEADERS
        }
        headers["User-Agent"] = USER_AGENT
        started = time.perf_counter()
        deadline = attempt_deadline.set(time.monotonic() + self._attempt_seconds)
        try:
            if target.method == "GET":
                url = httpx.URL(target.url).copy_merge_params(query_parameters(payload))
                headers[SIGNATURE_HEADER] = streams_signature(secret, url.query, timestamp)
                response = self._client.get(url, headers=headers)
            else:
                body = encode_body(payload)
                headers["Content-Type"] = "application/json"
                headers[SIGNATURE_HEADER] = streams_signature(secret, body, timestamp)
                response = self._client.post(target.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return None, "timed out"
        except httpx.LocalProtocolError as exc:  # its text quotes our header values
            return None, f"the request could not be made ({type(exc).__name__})"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {str(exc)[:200]}"
        except Exception as exc:  # a request that cannot be made (a header httpx cannot
            # encode, say) is a failed attempt like any other: retried, then a dead letter,
            # never an exception that leaves the row pending with no attempt counted
            log.warning("callback_attempt_error", error=type(exc).__name__)
            return None, f"the request could not be made ({type(exc).__name__})"
        finally:
            attempt_deadline.reset(deadline)
            metrics.CALLBACK_DURATION.observe(time.perf_counter() - started)
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"

    def _failed(
        self, delivery: CallbackDelivery, error: str, status_code: int | None, log_: Any
    ) -> None:
        now = self.runtime.clock()
        attempt = delivery.attempts + 1
        delay = callback_backoff(
            attempt, self._settings.backoff_base_seconds, self._settings.backoff_max_seconds
        )
        deadline = as_utc(delivery.window_started_at) + timedelta(
            seconds=self._settings.retry_window_seconds
        )
        if now + timedelta(seconds=delay) > deadline:
            self._settle(delivery, DEAD, error, status_code, now)
            log_.warning("callback_dead", attempts=attempt, error=error)
            return
        next_at = now + timedelta(seconds=delay)
        moved = self._update_pending(
            delivery,
            {
                "attempts": attempt,
                "last_error": error[:_MAX_ERROR],
                "last_status_code": status_code,
                "next_attempt_at": next_at,
            },
        )
        if not moved:
            return  # another attempt ran at the same time and recorded its own outcome
        metrics.CALLBACKS.labels(delivery.event, "retry").inc()
        log_.info("callback_retry_scheduled", attempt=attempt, delay_s=round(delay, 2), error=error)
        try:
            enqueue_callback(self.runtime.broker, str(delivery.id), delay_ms=int(delay * 1000))
        except Exception as exc:  # left to the callback sweep
            log_.warning("callback_requeue_failed", error=type(exc).__name__)

    def _settle(
        self,
        delivery: CallbackDelivery,
        state: str,
        error: str | None,
        status_code: int | None,
        now: datetime,
    ) -> None:
        values: dict[str, Any] = {
            "state": state,
            "attempts": delivery.attempts + (0 if state == CANCELED else 1),
            "last_status_code": status_code,
        }
        if error is not None:
            values["last_error"] = error[:_MAX_ERROR]
        if state == DELIVERED:
            values["delivered_at"] = now
        if state == DEAD:
            values["dead_at"] = now
        with self.runtime.session_factory() as session:
            session.execute(
                update(CallbackDelivery)
                .where(CallbackDelivery.id == delivery.id, CallbackDelivery.state == PENDING)
                .values(**values)
            )
            session.commit()
        metrics.CALLBACKS.labels(delivery.event, state).inc()

    def close(self) -> None:
        self._client.close()

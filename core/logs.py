"""Structured logging (structlog): JSON in production, readable on a terminal.

Secrets never reach a log line (invariant 8): ``redact_secrets`` runs on every event, masks
values under sensitive keys, and scrubs anything shaped like one of our keys or tokens.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
_SENSITIVE_KEYS = re.compile(
    r"^(code|otp|pin|passcode)$|(otp|verification|one_time)_code|token|secret|password|passwd|"
    r"authorization|api[_-]?key|account[_-]?key|credential",
    re.IGNORECASE,
)
#: Our keys and tokens: a prefix and 43 url-safe characters, wherever they stand.
_SECRET_SHAPES = re.compile(r"(st|sk|whsec)_[A-Za-z0-9_\-]{40,}")
_AUTH_SCHEME = re.compile(r"(?i)\b((?:bearer|basic)\s+)[^\s,\"']+")


def scrub(text: str) -> str:
    """Mask every key- or token-shaped substring of ``text``."""
    return _AUTH_SCHEME.sub(r"\1" + REDACTED, _SECRET_SHAPES.sub(REDACTED, text))


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED if _SENSITIVE_KEYS.search(str(key)) else _redact(inner)
            for key, inner in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(inner) for inner in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else is rendered as text anyway (exceptions, objects): scrub that text.
    return scrub(repr(value) if isinstance(value, BaseException) else str(value))


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: the last word on what may be written."""
    for key in list(event_dict):
        if key in ("event", "level", "timestamp", "logger"):
            if isinstance(event_dict[key], str):
                event_dict[key] = scrub(event_dict[key])
            continue
        if _SENSITIVE_KEYS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog and route the standard library's logging through it."""
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx and httpcore log every request's full URL at INFO (DEBUG): a customer's callback
    # URL or a provider's may carry a credential in its query (invariant 8).
    for noisy in ("uvicorn.access", "dramatiq.worker.WorkerThread", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

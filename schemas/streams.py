"""Stream bodies: create, patch, settings, and what the API returns."""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from schemas.documented_as import DocumentedAs
from schemas.enums import StreamStatus, StreamType
from schemas.request_body import RequestBody
from schemas.templates import template_placeholders
from schemas.text_rules import MAX_TAG_LENGTH, display_name, tag_text

Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TAG_LENGTH),
    AfterValidator(tag_text),
]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(display_name),
]
#: An HTTP header value as h11 (httpx) sends it: visible ASCII, with spaces and tabs only
#: between visible characters; or empty.
_HEADER_VALUE = re.compile(r"([\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?)?")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")  # \d would take any Unicode digit


def _clock_time(value: str) -> str:
    if not _CLOCK.fullmatch(value):
        raise ValueError("must be a 24-hour time HH:MM")
    return value


def _place_zone(value: str | None) -> str | None:
    if value is None or value in _place_zones():
        return value
    raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)")


class QuietHours(RequestBody):
    """The window in which marketing messages may go out, in the recipient's local time."""

    start: str = "09:00"
    #: Checked when left out too: ``{"start": "20:00"}`` would otherwise be 20:00-20:00.
    end: str = Field(default="20:00", validate_default=True)
    timezone: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        return _clock_time(value)

    @field_validator("end")
    @classmethod
    def _not_start(cls, value: str, info: ValidationInfo) -> str:
        # A window that opens and closes at one moment is empty or whole-day: which one a
        # sender meant cannot be told, so neither is guessed.
        if info.data.get("start") == value:
            raise ValueError(
                "must differ from start; to send marketing at any hour, set quiet_hours to null"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return _place_zone(value)


class QuietHoursPatch(RequestBody):
    """A PATCH of the window: only the fields given change, and one set to null goes back
    to its default. Each field is checked here; the merged window is checked whole (its
    ``end`` against the ``start`` it ends up with) by ``QuietHours``."""

    start: str | None = None
    end: str | None = None
    timezone: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        return None if value is None else _clock_time(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return _place_zone(value)


@cache
def _place_zones() -> frozenset[str]:
    """The IANA zone names a recipient can live in. ``ZoneInfo`` opens any file under the
    zone directory, so it also takes ``localtime`` (this host's zone, which moves with the
    server), ``Factory`` (no zone: "-00"), ``posixrules`` and the ``posix/`` and ``right/``
    copies (``right/`` counts leap seconds: its clock is 27 s off)."""
    return frozenset(available_timezones() - {"localtime", "Factory", "posixrules"})


OTP_ONLY_SETTINGS = (
    "code_mode",
    "code_length",
    "alphabet",
    "ttl_seconds",
    "max_failures",
    "resend_cooldown_seconds",
    "template",
    "codes_per_recipient_per_hour",
    "codes_per_recipient_scope",
)
CALLBACK_SETTINGS = ("callback_url", "callback_method", "callback_headers")
OTP_DEFAULTS: dict[str, Any] = {
    "code_mode": "generate",
    "code_length": 5,
    "alphabet": "digits",
    "ttl_seconds": 300,
    "max_failures": 3,
    "resend_cooldown_seconds": 30,
    "template": "Your code is {code}",
    "codes_per_recipient_per_hour": 5,
    "codes_per_recipient_scope": "account",
}


class StreamSettings(RequestBody):
    """Limits for every type, OTP code rules for OTP streams, callbacks for two-way and
    WhatsApp streams. ``None`` means "not set"."""

    max_per_second: int | None = Field(default=None, ge=1, le=100_000)
    max_per_recipient_per_hour: int | None = Field(default=None, ge=1, le=100_000)
    max_per_day: int | None = Field(default=None, ge=1, le=100_000_000)
    quiet_hours: QuietHours | None = None

    code_mode: Literal["generate", "customer_code", "full_text"] | None = None
    code_length: int | None = Field(default=None, ge=4, le=10)
    alphabet: Literal["digits", "alphanumeric"] | None = None
    ttl_seconds: int | None = Field(default=None, ge=30, le=86_400)
    max_failures: int | None = Field(default=None, ge=1, le=20)
    resend_cooldown_seconds: int | None = Field(default=None, ge=0, le=3_600)
    template: str | None = Field(default=None, min_length=1, max_length=1_000)
    #: The abuse cap: codes to one number per rolling hour, counted for this stream alone or
    #: for all the account's OTP streams whose scope is ``account``.
    codes_per_recipient_per_hour: int | None = Field(default=None, ge=1, le=1_000)
    codes_per_recipient_scope: Literal["account", "stream"] | None = None

    callback_url: AnyHttpUrl | None = None
    callback_method: Literal["GET", "POST"] | None = None
    callback_headers: dict[str, str] | None = None

    @field_validator("template")
    @classmethod
    def _has_code(cls, value: str | None) -> str | None:
        if value is not None and (
            "{code}" not in value or "code" not in template_placeholders(value)
        ):
            raise ValueError("must contain the {code} placeholder")
        return value

    @field_validator("callback_headers")
    @classmethod
    def _headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > 20:
            raise ValueError("at most 20 headers")
        for key, header_value in value.items():
            if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", key):
                raise ValueError(f"header name {key!r} is not a valid HTTP header name")
            if len(header_value) > 1024 or not _HEADER_VALUE.fullmatch(header_value):
                raise ValueError(
                    f"header {key!r} has an invalid value (printable ASCII, at most 1024, "
                    "no space or tab at either end)"
                )
        return value


#: A stream's settings as the API returns them (``StreamOut.settings``, ``GET`` and ``PUT
#: .../settings``): the keys set, OTP defaults included, unset keys left out. They are
#: returned as stored, not checked again (a rule made since must not break reading them);
#: their schema is ``StreamSettings``.
SettingsOut = Annotated[dict[str, Any], DocumentedAs(StreamSettings)]


class StreamSettingsPatch(StreamSettings):
    """``StreamSettings`` as a PATCH gives them: the quiet-hours window may be partial."""

    quiet_hours: QuietHoursPatch | None = None  # type: ignore[assignment]


def patched_settings(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``current`` settings with a PATCH's ``changes`` merged in, as a JSON merge-patch (RFC
    7396): a key given replaces the stream's, one set to null is cleared (or back to its
    default), and the others are kept. The quiet-hours window merges field by field, so
    ``{"quiet_hours": {"end": "21:00"}}`` keeps the window's start and zone; other objects
    (``callback_headers``) are replaced whole."""
    merged = {**current, **changes}
    window = changes.get("quiet_hours")
    if window is not None:
        fields = {**(current.get("quiet_hours") or {}), **window}
        merged["quiet_hours"] = {k: v for k, v in fields.items() if v is not None}
    return merged


class StreamCreate(RequestBody):
    name: Name
    type: StreamType
    description: str | None = Field(default=None, max_length=2_000)
    tags: list[Tag] = Field(default_factory=list, max_length=20)
    allowed_ips: list[str] = Field(default_factory=list, max_length=100)
    default_sender: str | None = None
    demo: bool = False
    settings: StreamSettings = Field(default_factory=StreamSettings)


class StreamPatch(RequestBody):
    """Every field optional; only those given change. ``settings`` merge into the current
    settings (``patched_settings``: a key set to null is cleared, and a quiet-hours window
    merges field by field)."""

    name: Name | None = None
    description: str | None = Field(default=None, max_length=2_000)
    tags: list[Tag] | None = Field(default=None, max_length=20)
    allowed_ips: list[str] | None = Field(default=None, max_length=100)
    default_sender: str | None = None
    demo: bool | None = None
    settings: StreamSettingsPatch | None = None

    @field_validator("name")
    @classmethod
    def _name_not_null(cls, value: str | None) -> str:
        # Runs only when a name is given: leaving it out keeps the current one.
        if value is None:
            raise ValueError("cannot be null")
        return value


class StreamOut(BaseModel):
    id: str
    name: str
    type: StreamType
    status: StreamStatus
    description: str | None
    tags: list[str]
    allowed_ips: list[str]
    default_sender: str | None
    demo: bool
    settings: SettingsOut
    restricted_reason: str | None = None
    #: What still keeps a draft stream from sending (empty when ready).
    missing_steps: list[str]
    last_activity_at: datetime | None
    created_at: datetime
    updated_at: datetime


class StreamPage(BaseModel):
    items: list[StreamOut]
    total: int
    page: int
    per_page: int


class TokenOut(BaseModel):
    token: str


class TokenReset(RequestBody):
    grace_seconds: int = Field(default=0, ge=0, le=86_400)


class RestrictBody(RequestBody):
    reason: str = Field(min_length=1, max_length=500)


class TestSend(RequestBody):
    recipient_phone: str
    message_content: str | None = Field(default=None, max_length=1_600)

"""HTML form fields → the management API's request bodies. Pure.

Inputs are named by the API's field paths (``default_sender``, ``settings.max_per_second``,
``settings.quiet_hours.start``, ``whatsapp.phone_number_id``), so an API error's ``field``
names the input it belongs to. Empty inputs mean "not set"; the API's own models do every
check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from schemas.streams import StreamSettings

DETAIL_FIELDS = ("name", "description", "default_sender")
#: The settings edited as one plain input each: every stream setting but the quiet-hours
#: window (three inputs of its own) and the callback headers (not offered here).
SETTING_FIELDS = tuple(
    name for name in StreamSettings.model_fields if name not in ("quiet_hours", "callback_headers")
)
WHATSAPP_FIELDS = (
    "business_account_id",
    "phone_number_id",
    "access_token",
    "app_secret",
    "verify_token",
)
WRITE_ONLY_WHATSAPP_FIELDS = ("access_token", "app_secret")
_LIST_SEPARATORS = re.compile(r"[,\s]+")
_TAG_SEPARATORS = re.compile(r"\s*,\s*")


def split_list(text: str | None, separators: re.Pattern[str] = _LIST_SEPARATORS) -> list[str]:
    """``"a, b\\nc"`` → ``["a", "b", "c"]``."""
    return [part for part in separators.split(text or "") if part]


def split_tags(text: str | None) -> list[str]:
    """``" promo , eu "`` → ``["promo", "eu"]``: tags are comma-separated and may hold
    spaces."""
    return split_list((text or "").strip(), _TAG_SEPARATORS)


def _text(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def settings_from_form(form: Mapping[str, Any], *, clear_missing: bool) -> dict[str, Any]:
    """The ``settings`` object from ``settings.*`` inputs. With ``clear_missing``, an input
    present but empty becomes ``None`` (clears the setting on PATCH); absent inputs are left
    out either way."""
    settings: dict[str, Any] = {}
    for name in SETTING_FIELDS:
        key = f"settings.{name}"
        if key not in form:
            continue
        value = _text(form, key)
        if value is not None or clear_missing:
            settings[name] = value
    if "settings.quiet_hours.enabled" in form:
        quiet = {
            "start": _text(form, "settings.quiet_hours.start") or "09:00",
            "end": _text(form, "settings.quiet_hours.end") or "20:00",
            "timezone": _text(form, "settings.quiet_hours.timezone"),
        }
        settings["quiet_hours"] = quiet
    elif "settings.quiet_hours.start" in form and clear_missing:
        settings["quiet_hours"] = None
    headers_text = form.get("settings.callback_headers")
    if isinstance(headers_text, str):
        headers = callback_headers(headers_text)
        if headers or clear_missing:
            settings["callback_headers"] = headers or None
    return settings


def callback_headers(text: str) -> dict[str, str]:
    """One ``Name: value`` per line. A line without a colon is kept as a name with an empty
    value, so the API's header-name check names it."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return headers


def stream_create_body(form: Mapping[str, Any], stream_type: str) -> dict[str, Any]:
    """The body of ``POST /api/v1/streams`` from the create form."""
    body: dict[str, Any] = {
        "name": form.get("name") or "",
        "type": stream_type,
        "tags": split_tags(_text(form, "tags")),
        "allowed_ips": split_list(_text(form, "allowed_ips")),
        "demo": form.get("demo") == "on",
        "settings": settings_from_form(form, clear_missing=False),
    }
    for name in ("description", "default_sender"):
        value = _text(form, name)
        if value is not None:
            body[name] = value
    return body


def stream_patch_body(form: Mapping[str, Any]) -> dict[str, Any]:
    """The body of ``PATCH /api/v1/streams/{id}`` from the Info tab: every detail input the
    form shows is sent, an empty one clears its field."""
    body: dict[str, Any] = {}
    if "name" in form:
        body["name"] = form.get("name") or ""
    for name in ("description", "default_sender"):
        if name in form:
            body[name] = _text(form, name)
    if "tags" in form:
        body["tags"] = split_tags(_text(form, "tags"))
    if "allowed_ips" in form:
        body["allowed_ips"] = split_list(_text(form, "allowed_ips"))
    if "demo.present" in form:
        body["demo"] = form.get("demo") == "on"
    return body


def whatsapp_body(form: Mapping[str, Any], *, clear_blank_ids: bool) -> dict[str, Any]:
    """The body of ``PUT .../whatsapp``: what was typed; with ``clear_blank_ids`` an emptied
    id clears it. The write-only secrets go only when typed, so an untouched password input
    keeps the stored one."""
    body: dict[str, Any] = {}
    for name in WHATSAPP_FIELDS:
        key = f"whatsapp.{name}"
        if key not in form:
            continue
        value = _text(form, key)
        if value is not None:
            body[name] = value
        elif clear_blank_ids and name not in WRITE_ONLY_WHATSAPP_FIELDS:
            body[name] = None
    return body

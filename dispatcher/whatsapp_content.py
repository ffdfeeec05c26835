"""What a send item to a WhatsApp stream carries: a template (checked against the stream's
registered templates), media, or text (a reply). Validation is pure (``whatsapp_content``);
only ``load_templates`` reads the database, once per batch.

A template send names ``{"name", "language"?, "variables"?, "buttons"?}``: ``variables`` fill
the body's ``{{1}}…{{n}}`` (a list, or an object keyed "1"…"n"), ``buttons`` give
``[{"index", "value"}]`` for URL buttons with a ``{{1}}`` and quick-reply payloads.
Media is ``{"type": image|video|audio|document|sticker, "url" | "id", "caption"?,
"filename"?}``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from core.runtime import Runtime
from core.whatsapp_templates import positional_values, render
from schemas.messages import SendItem
from schemas.tables import WhatsAppTemplate

#: What ``messages.sender`` shows for WhatsApp sends: the number is the stream's phone
#: number id, not a per-message sender.
WHATSAPP_SENDER = "WhatsApp"
MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
_CAPTIONED = frozenset({"image", "video", "document"})
_MAX_RENDERED = 4096
_URL = re.compile(r"https?://[^\s/$.?#][^\s]*")


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    name: str
    language: str
    category: str
    body: str
    parameter_count: int
    buttons: tuple[Mapping[str, Any], ...]
    status: str


@dataclass(frozen=True, slots=True)
class WhatsAppContent:
    #: Stored as ``messages.body`` (the rendered template, or the media caption).
    body: str
    #: Stored as ``messages.content`` for the worker.
    content: dict[str, Any]


class ContentRejected(ValueError):
    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def load_templates(runtime: Runtime, stream_id: uuid.UUID) -> dict[str, list[TemplateSpec]]:
    """The stream's templates by name (one per language)."""
    with runtime.session_factory() as session:
        rows = session.scalars(
            select(WhatsAppTemplate).where(WhatsAppTemplate.stream_id == stream_id)
        ).all()
    found: dict[str, list[TemplateSpec]] = {}
    for row in rows:
        found.setdefault(row.name, []).append(
            TemplateSpec(
                name=row.name,
                language=row.language,
                category=row.category,
                body=row.body,
                parameter_count=row.parameter_count,
                buttons=tuple(row.buttons or ()),
                status=row.status,
            )
        )
    return found


def whatsapp_content(
    prefix: str, item: SendItem, templates: Mapping[str, Sequence[TemplateSpec]]
) -> WhatsAppContent | None:
    """The template or media of a WhatsApp send item; None for a plain text reply.
    Raises ``ContentRejected`` naming the field (``messages[i].template.name`` …)."""
    given = [
        name for name in ("template", "media", "message_content") if getattr(item, name) is not None
    ]
    if len(given) > 1:
        raise ContentRejected(
            "conflicting_content",
            f"{prefix} has {' and '.join(given)}; a WhatsApp message is one of template, "
            "media or message_content",
            f"{prefix}.{given[1]}",
        )
    if item.template is not None:
        return _template(f"{prefix}.template", item.template, templates)
    if item.media is not None:
        return _media(f"{prefix}.media", item.media)
    return None


def _template(
    at: str, raw: Mapping[str, Any], templates: Mapping[str, Sequence[TemplateSpec]]
) -> WhatsAppContent:
    unknown = sorted(set(raw) - {"name", "language", "variables", "buttons"})
    if unknown:
        raise ContentRejected(
            "invalid_field", f"{at}.{unknown[0]} is not a known field", f"{at}.{unknown[0]}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ContentRejected("invalid_field", f"{at}.name is required", f"{at}.name")
    candidates = templates.get(name)
    if not candidates:
        raise ContentRejected(
            "unknown_template",
            f"{at}.name: the stream has no template {name[:100]!r}",
            f"{at}.name",
        )
    language = raw.get("language")
    if language is None:
        if len(candidates) > 1:
            languages = ", ".join(sorted(c.language for c in candidates))
            raise ContentRejected(
                "invalid_field",
                f"{at}.language is required: {name!r} exists in {languages}",
                f"{at}.language",
            )
        spec = candidates[0]
    else:
        matching = [c for c in candidates if c.language == language]
        if not matching:
            raise ContentRejected(
                "unknown_template",
                f"{at}.language: template {name!r} has no {str(language)[:16]!r} version",
                f"{at}.language",
            )
        spec = matching[0]
    if spec.status != "approved":
        raise ContentRejected(
            "template_not_approved",
            f"{at}.name: template {name!r} is {spec.status}, not approved",
            f"{at}.name",
        )
    try:
        values = positional_values(raw.get("variables"), spec.parameter_count)
    except ValueError as exc:
        raise ContentRejected(
            "template_parameters", f"{at}.variables: {exc}", f"{at}.variables"
        ) from None
    buttons = _buttons(f"{at}.buttons", raw.get("buttons"), spec)
    body = render(spec.body, values)
    if len(body) > _MAX_RENDERED:
        raise ContentRejected(
            "template_parameters",
            f"{at}.variables make the message longer than {_MAX_RENDERED} characters",
            f"{at}.variables",
        )
    return WhatsAppContent(
        body=body,
        content={
            "kind": "template",
            "name": spec.name,
            "language": spec.language,
            "category": spec.category,
            "parameters": values,
            "buttons": buttons,
        },
    )


def _buttons(at: str, raw: Any, spec: TemplateSpec) -> list[dict[str, Any]]:
    given: dict[int, str] = {}
    if raw is not None:
        if not isinstance(raw, list) or len(raw) > len(spec.buttons):
            raise ContentRejected(
                "template_parameters",
                f"{at} is a list of at most {len(spec.buttons)} {{index, value}} objects",
                at,
            )
        for position, entry in enumerate(raw):
            if (
                not isinstance(entry, dict)
                or set(entry) != {"index", "value"}
                or not isinstance(entry["index"], int)
                or isinstance(entry["index"], bool)
                or not isinstance(entry["value"], str)
                or not 0 < len(entry["value"]) <= 1000
            ):
                raise ContentRejected(
                    "template_parameters",
                    f'{at}[{position}] must be {{"index": n, "value": "text"}}',
                    f"{at}[{position}]",
                )
            index = entry["index"]
            if not 0 <= index < len(spec.buttons) or index in given:
                raise ContentRejected(
                    "template_parameters",
                    f"{at}[{position}].index is not a button of the template",
                    f"{at}[{position}].index",
                )
            button_type = spec.buttons[index].get("type")
            if button_type not in ("url", "quick_reply") or (
                button_type == "url" and "{{1}}" not in str(spec.buttons[index].get("url", ""))
            ):
                raise ContentRejected(
                    "template_parameters",
                    f"{at}[{position}]: button {index} takes no value",
                    f"{at}[{position}].index",
                )
            given[index] = entry["value"]
    filled: list[dict[str, Any]] = []
    for index, button in enumerate(spec.buttons):
        dynamic_url = button.get("type") == "url" and "{{1}}" in str(button.get("url", ""))
        if dynamic_url and index not in given:
            raise ContentRejected(
                "template_parameters",
                f"{at}: button {index} (a URL with {{{{1}}}}) needs a value",
                at,
            )
        if index in given:
            filled.append(
                {
                    "index": index,
                    "sub_type": "url" if dynamic_url else "quick_reply",
                    "value": given[index],
                }
            )
    return filled


def _media(at: str, raw: Mapping[str, Any]) -> WhatsAppContent:
    unknown = sorted(set(raw) - {"type", "url", "id", "caption", "filename"})
    if unknown:
        raise ContentRejected(
            "invalid_field", f"{at}.{unknown[0]} is not a known field", f"{at}.{unknown[0]}"
        )
    media_type = raw.get("type")
    if media_type not in MEDIA_TYPES:
        raise ContentRejected(
            "invalid_field", f"{at}.type is one of {', '.join(sorted(MEDIA_TYPES))}", f"{at}.type"
        )
    url, media_id = raw.get("url"), raw.get("id")
    if (url is None) == (media_id is None):
        raise ContentRejected("invalid_field", f"{at} needs exactly one of url and id", f"{at}.url")
    content: dict[str, Any] = {"kind": "media", "type": media_type}
    if url is not None:
        if not isinstance(url, str) or len(url) > 2000 or not _URL.fullmatch(url):
            raise ContentRejected("invalid_field", f"{at}.url must be an http(s) URL", f"{at}.url")
        content["link"] = url
    else:
        if not isinstance(media_id, str) or not re.fullmatch(r"[0-9]{1,32}", media_id):
            raise ContentRejected(
                "invalid_field", f"{at}.id is a Meta media id (digits)", f"{at}.id"
            )
        content["id"] = media_id
    caption = raw.get("caption")
    if caption is not None:
        if media_type not in _CAPTIONED:
            raise ContentRejected(
                "invalid_field", f"{at}.caption is for image, video and document", f"{at}.caption"
            )
        if not isinstance(caption, str) or not 0 < len(caption) <= 1024:
            raise ContentRejected(
                "invalid_field", f"{at}.caption has 1 to 1024 characters", f"{at}.caption"
            )
        content["caption"] = caption
    filename = raw.get("filename")
    if filename is not None:
        if media_type != "document":
            raise ContentRejected(
                "invalid_field", f"{at}.filename is for documents", f"{at}.filename"
            )
        if not isinstance(filename, str) or not 0 < len(filename) <= 240:
            raise ContentRejected(
                "invalid_field", f"{at}.filename has 1 to 240 characters", f"{at}.filename"
            )
        content["filename"] = filename
    return WhatsAppContent(body=caption or f"[{media_type}]", content=content)

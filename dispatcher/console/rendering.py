"""Server-side rendering of console pages, and how API errors become readable messages.

The console calls the management API's own functions, so its errors are the API's errors:
``ApiError`` (with ``field`` when one field is at fault) or a pydantic ``ValidationError``
from the same request models. ``FormErrors`` puts each message next to the field it names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.responses import HTMLResponse

from dispatcher.errors import ApiError, describe_validation_error

_INDEX = re.compile(r"\[\d+\]")
TEMPLATES_DIR = Path(__file__).parent / "templates"

#: Response headers that have the streams table refresh itself (it listens for the event).
STREAMS_CHANGED = {"HX-Trigger": "streams-changed"}

TYPE_LABELS = {
    "marketing": "Marketing",
    "transactional": "Transactional",
    "otp": "OTP",
    "two_way": "Two-way",
    "whatsapp": "WhatsApp",
}


@dataclass
class FormErrors:
    """Messages by form field (the API's field path without list indexes), and a message
    for the form as a whole when no field is at fault."""

    by_field: dict[str, str] = field(default_factory=dict)
    general: str | None = None

    def __bool__(self) -> bool:
        return bool(self.by_field or self.general)

    def add(self, field_path: str | None, message: str, prefix: str = "") -> None:
        if field_path:
            key = prefix + _without_indexes(field_path)
            self.by_field.setdefault(key, message)
        else:
            self.general = message

    @classmethod
    def of(cls, exc: ApiError | ValidationError, prefix: str = "") -> FormErrors:
        errors = cls()
        if isinstance(exc, ApiError):
            errors.add(exc.field, exc.message, prefix)
        else:
            for error in exc.errors():
                location, message = describe_validation_error(dict(error))
                errors.add(location, message, prefix)
        return errors


def _without_indexes(path: str) -> str:
    """``allowed_ips[2]`` → ``allowed_ips``: a list's items share one input."""
    return _INDEX.sub("", path)


def relative_time(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "Never"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        return "Just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return moment.strftime("%d %b %Y")


def build_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    env = templates.env
    env.filters["type_label"] = lambda value: TYPE_LABELS.get(str(value), str(value))
    env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
    env.globals["TYPE_LABELS"] = TYPE_LABELS
    return templates


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``name`` with the session (when signed in) and its CSRF token in the context."""
    templates: Jinja2Templates = request.app.state.console_templates
    signed_in = getattr(request.state, "console_session", None)
    context.setdefault("errors", FormErrors())
    return templates.TemplateResponse(
        request,
        name,
        {
            "signed_in": signed_in,
            "csrf_token": signed_in.csrf_token if signed_in else "",
            **context,
        },
        status_code=status_code,
    )


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"

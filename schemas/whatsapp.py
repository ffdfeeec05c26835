"""WhatsApp bodies: the stream's Cloud API set-up, its templates, what a send names, and
Meta's webhook payload (only the parts we read; everything else is ignored)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from schemas.request_body import RequestBody

MetaId = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9]{1,32}$")]
#: Printable ASCII without blanks: what Meta's tokens and secrets are made of.
Credential = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=8, max_length=1024, pattern=r"^[!-~]+$"),
]
VerifyToken = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=8, max_length=256, pattern=r"^[!-~]+$")
]


class WhatsAppSetup(RequestBody):
    """``PUT .../whatsapp``. Fields left out keep their value; ``null`` clears one."""

    business_account_id: MetaId | None = None
    phone_number_id: MetaId | None = None
    access_token: Credential | None = None
    app_secret: Credential | None = None
    verify_token: VerifyToken | None = None


class WhatsAppProblem(BaseModel):
    code: str
    message: str
    at: datetime | None


class WhatsAppSetupOut(BaseModel):
    business_account_id: str | None
    phone_number_id: str | None
    #: Only the last four characters, e.g. ``"…a1b2"``; the token itself is write-only.
    access_token: str | None
    app_secret_set: bool
    verify_token: str | None
    #: ``ok``, ``incomplete`` (phone number id or token missing) or ``error`` (Meta refused
    #: the credentials; see ``error``).
    state: Literal["ok", "incomplete", "error"]
    error: WhatsAppProblem | None = None
    webhook_url: str
    updated_at: datetime | None


_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")


class TemplateButton(RequestBody):
    """A button of a template. A ``url`` button whose URL ends in ``{{1}}`` takes a value
    per send; a ``quick_reply`` button may take a payload per send."""

    type: Literal["quick_reply", "url", "phone_number"]
    text: str = Field(min_length=1, max_length=25)
    url: str | None = Field(default=None, max_length=2000)
    phone_number: str | None = Field(default=None, max_length=20)

    @field_validator("url")
    @classmethod
    def _web_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/$.?#][^\s]*", value):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _fits_type(self) -> TemplateButton:
        if self.type == "url" and self.url is None:
            raise ValueError("a url button needs a url")
        if self.type == "phone_number" and not self.phone_number:
            raise ValueError("a phone_number button needs a phone_number")
        return self


class TemplateCreate(RequestBody):
    name: str
    language: str = Field(max_length=16)
    category: Literal["marketing", "utility", "authentication"]
    body: str = Field(min_length=1, max_length=1024)
    buttons: list[TemplateButton] = Field(default_factory=list, max_length=10)
    status: Literal["approved", "pending", "rejected", "paused", "disabled"] = "approved"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TEMPLATE_NAME.fullmatch(value):
            raise ValueError("is Meta's template name: lowercase letters, digits and underscores")
        return value

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        if not _LANGUAGE.fullmatch(value):
            raise ValueError("is a language code such as en or en_US")
        return value

    @field_validator("category", "status", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class TemplateOut(BaseModel):
    id: str
    name: str
    language: str
    category: str
    body: str
    parameter_count: int
    buttons: list[dict[str, Any]]
    status: str
    created_at: datetime


# ---------------------------------------------------------------- Meta's webhook payload


class Lenient(BaseModel):
    """Meta's payload: unknown keys ignored, and no NUL check: one odd value anywhere in a
    webhook must not refuse the delivery receipts it carries (Meta would retry it, refused
    the same way, until it gives up)."""

    model_config = ConfigDict(extra="ignore")


class MetaStatusError(Lenient):
    code: int | None = None
    title: str | None = None


class MetaStatus(Lenient):
    id: str = Field(max_length=256)
    status: str = Field(max_length=32)
    timestamp: str | None = None
    recipient_id: str | None = None
    biz_opaque_callback_data: str | None = Field(default=None, max_length=512)
    errors: list[MetaStatusError] = Field(default_factory=list)


class MetaText(Lenient):
    body: str = Field(max_length=4096)


class MetaInbound(Lenient):
    id: str = Field(max_length=256)
    from_: str = Field(alias="from", max_length=32)
    timestamp: str | None = None
    type: str = Field(max_length=32)
    text: MetaText | None = None
    button: dict[str, Any] | None = None
    interactive: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    video: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    document: dict[str, Any] | None = None
    sticker: dict[str, Any] | None = None
    location: dict[str, Any] | None = None


class MetaMetadata(Lenient):
    display_phone_number: str | None = None
    phone_number_id: str | None = None


class MetaValue(Lenient):
    messaging_product: str | None = None
    metadata: MetaMetadata | None = None
    statuses: list[MetaStatus] = Field(default_factory=list, max_length=1000)
    messages: list[MetaInbound] = Field(default_factory=list, max_length=1000)


class MetaChange(Lenient):
    field: str | None = None
    value: MetaValue


class MetaEntry(Lenient):
    id: str | None = None
    changes: list[MetaChange] = Field(default_factory=list, max_length=100)


class MetaWebhook(Lenient):
    object: str | None = None
    entry: list[MetaEntry] = Field(default_factory=list, max_length=100)

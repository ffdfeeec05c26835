"""The base of every request body model.

Extra fields are refused, and so is NUL (U+0000) in any field, nested models included:
PostgreSQL text cannot hold it, and caught here it is the field's own 422 (``"field":
"description"``) instead of a database error after the route has run.
"""

from __future__ import annotations

import types
import typing
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from schemas.text_rules import refuse_nul


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any, info: ValidationInfo) -> Any:
        # A field holding request bodies of its own is left to them, so the error names the
        # inner field ("settings.quiet_hours.end"), not the outer one.
        if info.field_name is not None and _holds_bodies(cls, info.field_name):
            return value
        return refuse_nul(value)


@cache
def _holds_bodies(model: type[BaseModel], field_name: str) -> bool:
    return _mentions_body(model.model_fields[field_name].annotation)


def _mentions_body(annotation: Any) -> bool:
    """True when ``annotation`` is a ``RequestBody`` or contains one (``X | None``,
    ``list[X]``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, RequestBody):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, tuple, dict):
        return any(_mentions_body(argument) for argument in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        return _mentions_body(typing.get_args(annotation)[0])
    return False

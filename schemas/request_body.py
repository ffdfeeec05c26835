"""The base of every request body model.

Extra fields are refused, and so is NUL (U+0000) in any field, nested models included:
PostgreSQL text cannot hold it, and caught here it is the field's own 422 (``"field":
"description"``) instead of a database error after the route has run.

So is ``true`` or ``false`` for a number: pydantic's lax mode would read ``true`` as 1 (a
validity of one second, a limit of one a second), which no sender means. (A string of
digits is still read as its number: the console's forms send their inputs as text.)
"""

from __future__ import annotations

import json
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
        name = info.field_name
        if isinstance(value, bool) and name is not None and _wants_number(cls, name):
            raise ValueError(f"must be a number, not {json.dumps(value)}")
        return refuse_nul(value)


@cache
def _holds_bodies(model: type[BaseModel], field_name: str) -> bool:
    return _mentions_body(model.model_fields[field_name].annotation)


@cache
def _wants_number(model: type[BaseModel], field_name: str) -> bool:
    """True when the field takes a number and not a boolean (``int | None``, say)."""
    kinds = _kinds(model.model_fields[field_name].annotation)
    return bool(kinds & {int, float}) and bool not in kinds


def _kinds(annotation: Any) -> set[Any]:
    """The plain types an annotation admits, through ``X | None`` and ``Annotated``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return {kind for argument in typing.get_args(annotation) for kind in _kinds(argument)}
    if typing.get_origin(annotation) is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    return {annotation}


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

"""The base of every request body model.

Extra fields are refused, and so is NUL (U+0000) in any field, nested models included:
PostgreSQL text cannot hold it, and caught here it is the field's own 422 (``"field":
"description"``) instead of a database error after the route has run.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from schemas.text_rules import refuse_nul


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _no_nul = field_validator("*", mode="before")(refuse_nul)

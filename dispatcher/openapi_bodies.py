"""Request bodies that the OpenAPI document cannot learn from a route's signature.

Provider webhooks read the raw body: the signature is checked over the exact bytes before
anything is parsed, so FastAPI sees no body parameter. Such a route declares its body with
``openapi_extra=raw_json_body(Model)``, and ``document_raw_bodies`` puts the models (and
every model they nest) into the document's components, where those references point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

_REF = "#/components/schemas/{model}"


def raw_json_body(model: type[BaseModel] | None = None, *, schema: Any = None) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its JSON body itself: a reference to
    ``model`` (added to the components by ``document_raw_bodies``) or a literal schema."""
    body_schema = schema if model is None else {"$ref": _REF.format(model=model.__name__)}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        }
    }


def document_raw_bodies(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Make ``app.openapi()`` include ``models`` in ``components.schemas`` (existing
    entries of the same name are kept)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            _, definitions = models_json_schema(
                [(model, "validation") for model in models], ref_template=_REF
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in definitions.get("$defs", {}).items():
                schemas.setdefault(name, definition)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

"""A value validated loosely but described, in the JSON schema and so in ``/openapi.json``,
by a model.

Some values are checked later than the envelope that carries them: a batch item is checked
by the ingress one by one, so that one bad item is rejected alone (invariant 7), and a
stream's stored settings are returned as they were stored. Their runtime type stays loose
(``Any``, ``dict[str, Any]``); ``DocumentedAs`` gives their schema the model that really
describes them, with no second copy of its fields to drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema


@dataclass(frozen=True, slots=True)
class DocumentedAs:
    """``Annotated`` metadata: the annotated value's JSON schema is ``model``'s (a reference
    to it, with ``model`` among the definitions), in the generator's mode (validation for a
    request body, serialization for a response). Validation and serialization are the
    annotated type's own, unchanged."""

    model: type[BaseModel]

    def __get_pydantic_json_schema__(
        self, _core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Asked of the handler as a reference to a definition, the model lands among the
        # document's definitions (``$defs``, OpenAPI's components) instead of inline.
        model_schema = self.model.__pydantic_core_schema__
        reference = core_schema.definition_reference_schema(model_schema["ref"])  # type: ignore[typeddict-item]
        return handler(core_schema.definitions_schema(reference, [model_schema]))

"""The free-text query parameters, checked alike wherever they are taken.

``QueryText`` refuses NUL (U+0000) as a 422 naming the parameter, before the route runs:
PostgreSQL text cannot hold it, and a route that has started answering (the realtime feed)
can no longer refuse it. Body fields get the same check from ``schemas.request_body``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import AfterValidator

from schemas.streams import Tag
from schemas.text_rules import refuse_nul

QueryText = Annotated[str, AfterValidator(refuse_nul)]
#: The streams' name filter (a case-insensitive substring): the list and the realtime feed.
NameFilter = Annotated[QueryText | None, Query(max_length=200)]
#: The streams' tag filter, each one narrowing; a tag as streams store it (NFKC).
TagFilter = Annotated[list[Tag] | None, Query(max_length=20)]

"""The Realtime Performance page and its feed: the API's own SSE feed, opened with the
console session instead of an account key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from dispatcher.console.access import CONSOLE_PATH, Session
from dispatcher.console.rendering import render
from dispatcher.query_params import NameFilter, TagFilter
from dispatcher.routes import realtime as realtime_api
from schemas.enums import StreamStatus

router = APIRouter(prefix=f"{CONSOLE_PATH}/realtime", include_in_schema=False)


@router.get("")
def realtime_page(
    request: Request,
    _signed_in: Session,
    name: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    tag: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    filters = {"name": name or "", "status": status or "", "tag": tag or ""}
    return render(request, "realtime.html", filters=filters, statuses=list(StreamStatus))


@router.get("/feed")
async def realtime_feed(
    request: Request,
    signed_in: Session,
    name: NameFilter = None,
    status: StreamStatus | None = None,
    tag: TagFilter = None,
) -> Response:
    """``text/event-stream``: a ``snapshot`` per matching stream each second (the API's)."""
    return await realtime_api.realtime(request, signed_in.account_id, name, status, tag)

"""The Realtime Performance page's feed (account key): Server-Sent Events."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from dispatcher.auth import require_account, runtime_of
from dispatcher.errors import ApiError, json_error_responses
from dispatcher.query_params import NameFilter, TagFilter
from dispatcher.realtime_feed import FeedFilters, FeedLimiter, RealtimeFeed
from schemas.enums import StreamStatus
from schemas.stats import RealtimeSnapshot

router = APIRouter(prefix="/api/v1", tags=["realtime"])
Account = Annotated[uuid.UUID, Depends(require_account)]

#: Open feeds one account may hold on one ingress process.
FEEDS_PER_ACCOUNT = 5
#: One Server-Sent Event of the feed, as OpenAPI describes an event stream's items: its
#: ``data`` is a RealtimeSnapshot in JSON (the enums it names are in the components).
SNAPSHOT_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"const": "snapshot"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                key: value
                for key, value in RealtimeSnapshot.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                ).items()
                if key != "$defs"
            },
        },
    },
}


@router.get(
    "/realtime",
    status_code=200,
    response_class=RealtimeFeed,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": SNAPSHOT_EVENT}},
            "description": "A `snapshot` event per stream each second; its `data` is a "
            "RealtimeSnapshot (stream_id, name, type, status, in_per_second, out_per_second, "
            "in_flight, errors_last_minute, at).",
        },
        **json_error_responses(401, 422, 429),
    },
)
async def realtime(
    request: Request,
    account_id: Account,
    name: NameFilter = None,
    status: StreamStatus | None = None,
    tag: TagFilter = None,
) -> RealtimeFeed:
    """An activity snapshot of each of the account's streams (filtered like the stream list)
    every second: messages per second in and out, in flight, errors in the last minute and
    status."""
    tags = tuple(tag or ())
    limiter: FeedLimiter = request.app.state.feed_limiter
    if not limiter.acquire(account_id):
        raise ApiError(
            429,
            "too_many_feeds",
            f"At most {FEEDS_PER_ACCOUNT} realtime feeds may be open at once; close one first.",
            headers={"Retry-After": "5"},
        )
    return RealtimeFeed(
        runtime_of(request),
        account_id,
        FeedFilters(name=name or None, status=status, tags=tags),
        limiter,
    )

"""What the stats and realtime endpoints return."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.enums import StreamStatus, StreamType


class ThroughputPoint(BaseModel):
    at: datetime = Field(description="Start of the bucket (UTC).")
    accepted: int
    sent: int
    delivered: int
    errors: int = Field(description="Failed, undelivered, rejected and expired.")
    sent_per_minute: float


class Throughput(BaseModel):
    bucket_seconds: int = Field(description="60 up to 6 hours, 3600 up to 7 days, then 86400.")
    average_sent_per_minute: float
    points: list[ThroughputPoint]


class Segments(BaseModel):
    accepted: int
    sent: int
    delivered: int


class StreamStats(BaseModel):
    """A stream's activity over ``[from, to)``, from the stats rollup.

    ``counts`` are status changes in the range, by the status reached: a message sent and
    delivered in the range counts once under ``sent`` and once under ``delivered``; a retried
    one counts under ``queued`` again. ``accepted`` counts each message once, when it came in.
    """

    model_config = ConfigDict(populate_by_name=True)

    stream_id: str
    from_: datetime = Field(
        alias="from", description="Start of the range, rounded down to the minute."
    )
    to: datetime = Field(description="End of the range (excluded), rounded up to the minute.")
    accepted: int
    counts: dict[str, int]
    segments: Segments
    delivery_rate: float | None = Field(
        description="delivered / (delivered + undelivered + failed); null when none settled."
    )
    throughput_per_minute: Throughput
    last_activity_at: datetime | None


class RealtimeSnapshot(BaseModel):
    """One stream's activity right now: the ``data`` of each ``snapshot`` event of the feed."""

    stream_id: str
    name: str
    type: StreamType
    status: StreamStatus
    in_per_second: int = Field(description="Messages accepted during the last complete second.")
    out_per_second: int = Field(description="Messages handed to a provider in that second.")
    in_flight: int = Field(description="Queued or sending now (counted up to 10,000).")
    errors_last_minute: int
    at: datetime

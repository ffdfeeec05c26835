"""The Info tab's small throughput chart, laid out on the server as SVG bars. Pure.

One bar per bucket of the stats series over the whole range (empty buckets included, so the
time axis is even): sent messages with errors stacked on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.clock import as_utc
from core.stats_rollup import bucket_start
from schemas.stats import ThroughputPoint

WIDTH = 560
HEIGHT = 120
GAP = 2.0


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    sent_y: float
    sent_height: float
    errors_y: float
    errors_height: float
    at: datetime
    sent: int
    errors: int


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    peak: int
    width: int = WIDTH
    height: int = HEIGHT


def throughput_chart(
    points: list[ThroughputPoint], start: datetime, end: datetime, bucket_seconds: int
) -> Chart:
    """Bars for every bucket in ``[start, end)``; heights scale to the busiest bucket."""
    by_start = {as_utc(p.at): p for p in points}
    step = timedelta(seconds=bucket_seconds)
    buckets: list[tuple[datetime, int, int]] = []
    moment = bucket_start(as_utc(start), bucket_seconds)
    while moment < as_utc(end) and len(buckets) < 400:
        point = by_start.get(moment)
        buckets.append((moment, point.sent if point else 0, point.errors if point else 0))
        moment += step
    peak = max((sent + errors for _, sent, errors in buckets), default=0)
    slot = WIDTH / max(len(buckets), 1)
    bars = []
    for index, (at, sent, errors) in enumerate(buckets):
        sent_height = HEIGHT * sent / peak if peak else 0.0
        errors_height = HEIGHT * errors / peak if peak else 0.0
        bars.append(
            Bar(
                x=round(index * slot + GAP / 2, 2),
                width=round(max(slot - GAP, 1.0), 2),
                sent_y=round(HEIGHT - sent_height, 2),
                sent_height=round(sent_height, 2),
                errors_y=round(HEIGHT - sent_height - errors_height, 2),
                errors_height=round(errors_height, 2),
                at=at,
                sent=sent,
                errors=errors,
            )
        )
    return Chart(bars=bars, peak=peak)

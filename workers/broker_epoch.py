"""The broker's epoch: a sentinel key the relay keeps in the broker's Redis, so that Redis
losing its data (a restart without persistence, a failover to an empty replica, a flush) is
noticed as such, whatever else is on the queues afterwards.

The key has no TTL and is written only here. While it is there, Redis has kept its data
since it was written. When a relay finds it gone, the data went with it at some moment
since then, and every job enqueued before now may be gone: the relay writes a new epoch
that records the loss (``lost_before``: messages marked enqueued before it may have no job)
and, once that moment has passed, enqueues those messages again and clears the record
(``settle``). The record is in the sentinel itself, so every relay sees the same one and
takes its share of the work, and a relay that restarts mid-way carries on where it was.
Writing it is atomic (only the first relay to find the key gone writes one), so two relays
that notice the same loss agree on a single epoch. Should Redis lose the sentinel again
mid-way, the next epoch's ``lost_before`` is later and covers what was left.

A Redis that has never seen a relay cannot be told from one that lost its data by the
sentinel alone. ``streams migrate`` (run before each release's processes start) writes one
recording no loss where there is none only if nothing is marked enqueued (``begin``):
nothing can have been lost then. Otherwise it writes nothing, and the relay, finding no
sentinel, records a loss: messages already marked get one extra job each, harmless (the
claim is conditional) but a burst on a large backlog, once, the first time a relay meets
that Redis. The broker's keys are no evidence either way: workers and the ingress write new
ones as soon as they run against an emptied Redis.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import redis

KEY = "streams:relay:broker_epoch"

# The value at KEYS[1], or ARGV[1] written there if there was none; with 1 if written.
_READ_OR_START = """
local found = redis.call('GET', KEYS[1])
if found then return {0, found} end
redis.call('SET', KEYS[1], ARGV[1])
return {1, ARGV[1]}
"""
# ARGV[2] written at KEYS[1] if it still holds ARGV[1]; 1 if written.
_REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Epoch:
    """One lifetime of the broker's data, as the sentinel records it."""

    id: str
    written_at: datetime
    #: A loss was found and is not settled yet: messages marked enqueued before this moment
    #: may have no job. None once they are all enqueued again.
    lost_before: datetime | None
    #: This call wrote the epoch: the caller is the one relay that found the sentinel gone.
    started: bool = False
    #: The sentinel's value as read, which ``settle`` expects to find unchanged.
    raw: str = field(default="", repr=False)

    def encode(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "written_at": self.written_at.isoformat(),
                "lost_before": self.lost_before.isoformat() if self.lost_before else None,
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes, *, started: bool = False) -> Epoch:
        text = raw.decode() if isinstance(raw, bytes) else raw
        value = json.loads(text)
        lost_before = value.get("lost_before")
        return cls(
            id=value["id"],
            written_at=datetime.fromisoformat(value["written_at"]),
            lost_before=datetime.fromisoformat(lost_before) if lost_before else None,
            started=started,
            raw=text,
        )


def begin(client: redis.Redis, now: datetime, *, marked_waiting: bool) -> bool:
    """Write the sentinel, recording no loss, where there is none, unless messages are
    marked enqueued (``marked_waiting``): their jobs may be what a lost Redis took. True if
    written. Raises ``redis.RedisError``."""
    if marked_waiting:
        return False
    fresh = Epoch(id=uuid.uuid4().hex, written_at=now, lost_before=None)
    return bool(client.set(KEY, fresh.encode(), nx=True))


def read_or_start(client: redis.Redis, now: datetime, lost_before: datetime) -> Epoch:
    """The current epoch. If the sentinel is gone, Redis lost its data: a new epoch is
    written, written at ``now`` and recording ``lost_before`` (``started`` set), unless
    another relay wrote one first, which is returned instead. Raises ``redis.RedisError``."""
    fresh = Epoch(id=uuid.uuid4().hex, written_at=now, lost_before=lost_before)
    started, raw = client.eval(_READ_OR_START, 1, KEY, fresh.encode())  # type: ignore[misc]
    return Epoch.decode(raw, started=bool(started))


def settle(client: redis.Redis, epoch: Epoch) -> bool:
    """Clear ``epoch``'s loss record, once every message it covers is on the broker again;
    False (and nothing written) if the sentinel no longer holds ``epoch`` as read. Raises
    ``redis.RedisError``."""
    settled = Epoch(id=epoch.id, written_at=epoch.written_at, lost_before=None)
    return bool(client.eval(_REPLACE, 1, KEY, epoch.raw, settled.encode()))  # type: ignore[misc]

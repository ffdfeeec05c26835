"""dramatiq middleware: when a delivery job keeps raising (a bug, the database gone) and
dramatiq's Retries gives up, each message of the job that was still queued becomes
``failed`` and a dead letter here too, so the account sees it and can replay it.
dramatiq's own dead-letter queue keeps a copy of the job.

dramatiq calls the after-hooks last middleware first, and Retries marks a job failed in its
own: add this middleware before Retries (``workers.pool.start_worker`` does), so that it
runs after it and sees the verdict."""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Middleware

from core.dead_letters import dead_letter_log_fields, record_dead_letter
from core.message_states import transition
from core.runtime import Runtime
from schemas.enums import MessageStatus
from workers.queueing import delivery_actor_name, delivery_batch_actor_name

log = structlog.get_logger(__name__)


def delivery_message_ids(message: dramatiq.broker.MessageProxy) -> list[str]:
    """The message ids of a delivery job: one for a single-message job, every one of a
    batch job's list; none for any other actor."""
    queue = message.queue_name.removesuffix(".DQ")
    if not message.args:
        return []
    if message.actor_name == delivery_actor_name(queue):
        return [str(message.args[0])]
    if message.actor_name == delivery_batch_actor_name(queue):
        return [str(message_id) for message_id in message.args[0]]
    return []


class DeadLetters(Middleware):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.broker.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not message.failed:
            return
        for message_id in delivery_message_ids(message):
            self._fail_as_dead_letter(message_id, exception)

    def _fail_as_dead_letter(self, message_id: str, exception: BaseException) -> None:
        """Fail the message and keep it as a dead letter if it was still queued; one sent,
        ended or being sent is left alone. A ``sending`` message is another worker's live
        claim, or one whose outcome is unknown (the job raised after its call): the claim
        lease decides it (``workers.relay``), retaking it where the provider recognises a
        repeat and failing it as ``outcome_unknown`` where not. Failing it here could
        dead-letter a message the carrier took, and its replay would send it twice. Each
        message has its own transaction: one that cannot be recorded does not hold back the
        others of its batch."""
        try:
            key = uuid.UUID(message_id)
            now = self.runtime.clock()
            with self.runtime.session_factory() as session:
                moved = transition(
                    session,
                    key,
                    to=MessageStatus.failed,
                    allowed_from=[MessageStatus.queued],
                    at=now,
                    detail="worker kept failing",
                    values={
                        "error_code": "internal_error",
                        "error_message": type(exception).__name__,
                    },
                )
                letter = None
                if moved:
                    letter = record_dead_letter(
                        session,
                        key,
                        reason="worker_error",
                        error_message=type(exception).__name__,
                        at=now,
                    )
                session.commit()
            if letter is not None:
                log.error(
                    "message_dead_lettered",
                    **dead_letter_log_fields(letter),
                    error=type(exception).__name__,
                )
        except Exception:
            log.exception("dead_letter_record_failed", message_id=message_id)

"""dramatiq middleware: when a delivery actor keeps raising (a bug, the database gone) and
dramatiq's Retries gives up, the message becomes ``failed`` and a dead letter here too,
so the account sees it and can replay it. dramatiq's own dead-letter queue keeps a copy."""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Middleware

from core.dead_letters import record_dead_letter
from core.message_states import transition
from core.runtime import Runtime
from schemas.enums import MessageStatus
from workers.queueing import delivery_actor_name

log = structlog.get_logger(__name__)


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
        if message.actor_name != delivery_actor_name(message.queue_name.removesuffix(".DQ")):
            return
        message_id = str(message.args[0]) if message.args else ""
        try:
            key = uuid.UUID(message_id)
            now = self.runtime.clock()
            with self.runtime.session_factory() as session:
                moved = transition(
                    session,
                    key,
                    to=MessageStatus.failed,
                    allowed_from=[MessageStatus.queued, MessageStatus.sending],
                    at=now,
                    detail="worker kept failing",
                    values={
                        "error_code": "internal_error",
                        "error_message": type(exception).__name__,
                    },
                )
                if moved:
                    record_dead_letter(
                        session,
                        key,
                        reason="worker_error",
                        error_message=type(exception).__name__,
                        at=now,
                    )
                session.commit()
            log.error(
                "message_dead_lettered", message_id=message_id, error=type(exception).__name__
            )
        except Exception:
            log.exception("dead_letter_record_failed", message_id=message_id)

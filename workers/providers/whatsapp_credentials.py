"""WhatsApp credentials as stored per stream (``whatsapp_configs``), opened with the
runtime's ``SecretBox`` and cached briefly so a busy stream does not read them per message."""

from __future__ import annotations

import uuid
from threading import Lock
from time import monotonic

import structlog
from sqlalchemy import select, update

from core.clock import Clock
from core.credentials import SecretBox
from core.database import SessionFactory
from schemas.tables import WhatsAppConfig
from workers.providers.whatsapp_cloud import WhatsAppCredentials

log = structlog.get_logger(__name__)


class StoredWhatsAppCredentials:
    def __init__(
        self,
        session_factory: SessionFactory,
        secret_box: SecretBox,
        clock: Clock,
        ttl_seconds: float = 5.0,
    ) -> None:
        self._session_factory = session_factory
        self._secret_box = secret_box
        self._clock = clock
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, WhatsAppCredentials | None]] = {}
        self._lock = Lock()

    def credentials(self, stream_id: str) -> WhatsAppCredentials | None:
        """The stream's phone number id and token, or None when either is missing."""
        with self._lock:
            cached = self._cache.get(stream_id)
        if cached is not None and cached[0] > monotonic():
            return cached[1]
        found = self._load(stream_id)
        with self._lock:
            self._cache[stream_id] = (monotonic() + self._ttl, found)
        return found

    def _load(self, stream_id: str) -> WhatsAppCredentials | None:
        with self._session_factory() as session:
            row = session.execute(
                select(WhatsAppConfig.phone_number_id, WhatsAppConfig.access_token_sealed).where(
                    WhatsAppConfig.stream_id == uuid.UUID(stream_id)
                )
            ).first()
        if row is None or not row.phone_number_id or not row.access_token_sealed:
            return None
        try:
            token = self._secret_box.open(row.access_token_sealed)
        except ValueError:
            log.error("whatsapp_token_unreadable", stream_id=stream_id)
            return None
        return WhatsAppCredentials(phone_number_id=row.phone_number_id, access_token=token)

    def report_problem(self, stream_id: str, code: str, message: str) -> None:
        """Show the problem in the stream's WhatsApp tab (until a new token is saved)."""
        with self._session_factory() as session:
            session.execute(
                update(WhatsAppConfig)
                .where(WhatsAppConfig.stream_id == uuid.UUID(stream_id))
                .values(error_code=code, error_message=message[:500], error_at=self._clock())
            )
            session.commit()
        with self._lock:
            self._cache.pop(stream_id, None)

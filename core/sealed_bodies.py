"""Message texts that hold a secret (OTP codes): masked for every reader, sealed for the
sending step only, forgotten once sent.

``messages.body`` of such a message is the masked text (``Your code is *****``): that is what
the message API, status events and any later reader see. The real text is kept in
``messages.sealed_body``, encrypted with the runtime's ``SecretBox``, so the database never
holds a live code in plain text. The worker asks ``text_to_send`` for what goes to the
carrier, and ``forget_sealed_bodies`` drops the sealed copy once the message is sent or has
reached a final status, so not even the ciphertext outlives its use.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update

from core.credentials import SecretBox
from core.database import SessionFactory
from core.status_feed import StatusListener
from schemas.enums import FINAL_MESSAGE_STATUSES, MessageStatus, StreamType
from schemas.events import StatusChange
from schemas.tables import Message

#: After these, the text is never needed again.
_DONE = frozenset({MessageStatus.sent, *FINAL_MESSAGE_STATUSES})


def text_to_send(message: Message, box: SecretBox) -> str:
    """The text the carrier gets: the sealed text when there is one, else the body.

    Raises ``ValueError`` when the sealed text was made with another secret key.
    """
    if message.sealed_body is None:
        return message.body
    return box.open(message.sealed_body)


def forget_sealed_bodies(session_factory: SessionFactory) -> StatusListener:
    """A ``StatusFeed`` listener that clears the sealed text of OTP messages that are sent
    or final. Only OTP streams' messages are looked at, so other traffic costs nothing."""

    def forget(changes: Sequence[StatusChange]) -> None:
        done = [
            change.message_id
            for change in changes
            if change.stream_type == StreamType.otp.value and change.status in _DONE
        ]
        if not done:
            return
        with session_factory() as session:
            session.execute(
                update(Message)
                .where(Message.id.in_(done), Message.sealed_body.is_not(None))
                .values(sealed_body=None)
                .execution_options(synchronize_session=False)
            )
            session.commit()

    forget.__name__ = "forget_sealed_bodies"
    return forget

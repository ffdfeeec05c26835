"""Message texts that hold a secret (OTP codes): masked for every reader, sealed for the
sending step only, forgotten once sent.

``messages.body`` of such a message is the masked text (``Your code is *****``): that is what
the message API, status events and any later reader see. The real text is kept in
``messages.sealed_body``, encrypted with the runtime's ``SecretBox``, so the database never
holds a live code in plain text. The worker asks ``text_to_send`` for what goes to the
carrier, and ``forget_sealed_bodies`` drops the sealed copy in the same transaction that
records the message as sent or final, so not even the ciphertext outlives its use.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import event, update
from sqlalchemy.orm import Session

from core.credentials import SecretBox
from core.database import SessionFactory
from core.otp_codes import MASK_CHARACTER
from core.status_feed import PENDING_KEY
from schemas.enums import FINAL_MESSAGE_STATUSES, MessageStatus, StreamType
from schemas.tables import Message

#: After these, the text is never needed again.
_DONE = frozenset({MessageStatus.sent, *FINAL_MESSAGE_STATUSES})


class _Texts(Protocol):
    body: str
    sealed_body: str | None


def text_to_send(message: _Texts, box: SecretBox) -> str:
    """The text the carrier gets: the sealed text when there is one, else the body
    (``message`` is a ``Message`` or a row with those two columns).

    Raises ``ValueError`` when the sealed text was made with another secret key.
    """
    if message.sealed_body is None:
        return message.body
    return box.open(message.sealed_body)


def hidden_parts(text: str, masked: str) -> frozenset[str]:
    """The runs of ``text`` that its ``masked`` copy hides (the code: a mask puts one ``*``
    in place of each character, so the two line up). A masked copy that does not line up
    hides all of ``text``."""
    if len(text) != len(masked):
        return frozenset({text})
    parts, run = set(), []
    for real, shown in zip(text, masked, strict=True):
        if shown == MASK_CHARACTER and real != MASK_CHARACTER:
            run.append(real)
        elif run:
            parts.add("".join(run))
            run = []
    if run:
        parts.add("".join(run))
    return frozenset(parts)


def without_hidden(words: str, hidden: frozenset[str]) -> str:
    """``words`` (a carrier's, say: they quote the text they refuse) with every part of
    ``hidden`` masked as the message's body masks it; the longest first, so a part inside
    another goes with it."""
    for part in sorted(hidden, key=len, reverse=True):
        words = words.replace(part, MASK_CHARACTER * len(part))
    return words


def forget_sealed_bodies(session_factory: SessionFactory) -> None:
    """Before each commit, clear the sealed text of the OTP messages whose status change to
    sent or final is part of that commit (``core.message_states`` queues the changes on the
    session). Done inside the transaction, not after it: atomic with the status change, and
    no second database connection (pools are sized to their threads)."""
    event.listen(session_factory, "before_commit", _forget_in_transaction)


def _forget_in_transaction(session: Session) -> None:
    done = [
        change.message_id
        for change in session.info.get(PENDING_KEY, ())
        if change.stream_type == StreamType.otp.value and change.status in _DONE
    ]
    if done:
        session.execute(
            update(Message)
            .where(Message.id.in_(done), Message.sealed_body.is_not(None))
            .values(sealed_body=None)
            .execution_options(synchronize_session=False)
        )

"""Opt-out keywords in inbound messages. Pure.

A message that is exactly one keyword (any case, surrounding blanks ignored) opts the sender
out of an account's marketing (STOP, UNSUBSCRIBE, END, QUIT, CANCEL, OPTOUT) or back in
(START). Text is NFKC-normalised first and invisible format characters (zero-width spaces,
direction marks) are dropped, so "ＳＴＯＰ" or "STOP\\u200b" count as STOP: people send what
their keyboard makes, and an opt-out we miss is a complaint. Anything longer ("stop it")
is a conversation, not a keyword.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

OptOutAction = Literal["stop", "start"]

STOP_KEYWORDS = frozenset({"stop", "unsubscribe", "end", "quit", "cancel", "optout"})
START_KEYWORDS = frozenset({"start"})
_MAX_KEYWORD_TEXT = 64


def opt_out_keyword(text: str | None) -> OptOutAction | None:
    """``"stop"`` or ``"start"`` when ``text`` is one of the keywords, else None."""
    if not text or len(text) > _MAX_KEYWORD_TEXT:
        return None
    normalised = unicodedata.normalize("NFKC", text)
    visible = "".join(c for c in normalised if unicodedata.category(c) != "Cf")
    word = visible.strip().casefold()
    if word in STOP_KEYWORDS:
        return "stop"
    if word in START_KEYWORDS:
        return "start"
    return None

"""What text the API takes in names, tags and free text. Pure.

* NUL (U+0000) nowhere: PostgreSQL text cannot hold it, and no message needs it.
* Nothing that does not encode as UTF-8 (lone surrogates): pydantic refuses it in ``str``
  fields, but values taken as ``Any`` (template variables) and echoes of refused input
  are checked with ``encodes_as_utf8``.
* Names (display text): no control characters and no bidirectional overrides or isolates,
  which can make a name read differently in the console than it is (Trojan Source).
  Letters of any script stay, look-alikes included: they are real names somewhere, and
  telling confusables apart needs Unicode's TR39 data, which a label does not warrant.
* Tags (identifiers people filter by): NFKC-normalised, so ``ｆｕｌｌ`` (fullwidth) and
  ``full`` are one tag, and no format characters (zero-width, bidi), which would make
  tags that look the same but never match. The length bound holds after normalising, which
  can lengthen text (U+FDFA is one character and becomes eighteen).
"""

from __future__ import annotations

import unicodedata
from typing import Any

#: Marks, embeddings, overrides and isolates that change the display order of text.
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def contains_nul(value: Any) -> bool:
    """True when a string anywhere in ``value`` (nested lists and dicts, keys too) has NUL."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(contains_nul(item) for item in value)
    return False


def refuse_nul(value: Any) -> Any:
    """A pydantic ``before`` validator: ``value`` unchanged, or ``ValueError``."""
    if contains_nul(value):
        raise ValueError("may not contain the NUL character (U+0000)")
    return value


def encodes_as_utf8(value: str) -> bool:
    """False for text holding a lone surrogate (a JSON ``"\\ud800"`` escape decodes to one):
    it can be neither stored nor sent back."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(value: str) -> str:
    """A name as given, or ``ValueError`` for control characters and bidi controls."""
    for character in value:
        if unicodedata.category(character) == "Cc" or character in _BIDI_CONTROLS:
            raise ValueError(
                f"may not contain control or text-direction characters (U+{ord(character):04X})"
            )
    return value


#: The longest tag, counted once normalised (``stream_tags.tag`` is VARCHAR(64)).
MAX_TAG_LENGTH = 64


def tag_text(value: str) -> str:
    """A tag NFKC-normalised, or ``ValueError`` for control and format characters or for
    more than ``MAX_TAG_LENGTH`` characters once normalised."""
    normalised = unicodedata.normalize("NFKC", value)
    if len(normalised) > MAX_TAG_LENGTH:
        raise ValueError(f"must be at most {MAX_TAG_LENGTH} characters once normalised (NFKC)")
    for character in normalised:
        if unicodedata.category(character) in ("Cc", "Cf"):
            raise ValueError(
                f"may not contain control or invisible characters (U+{ord(character):04X})"
            )
    return normalised

"""SMS segment counting (GSM 03.38). Pure.

A text that fits the GSM-7 alphabet costs one septet per character (two for the extension
table: ``^{}\\[~]|€`` and form feed); anything else is sent as UCS-2, two bytes per UTF-16
code unit (an emoji takes two units). A single segment holds 160 septets or 70 units; a
concatenated one holds 153 or 67, since the UDH takes the rest. A character is never split
across two segments, which is why the count is made by packing, not by division.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

_LIMITS: dict[Encoding, tuple[int, int]] = {"GSM-7": (160, 153), "UCS-2": (70, 67)}


@dataclass(frozen=True, slots=True)
class SegmentCount:
    encoding: Encoding
    segments: int
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2


def encoding_for(text: str) -> Encoding:
    """GSM-7 when every character is in the GSM 03.38 basic or extension table."""
    for char in text:
        if char not in _GSM7_BASIC and char not in _GSM7_EXTENSION:
            return "UCS-2"
    return "GSM-7"


def _unit_widths(text: str, encoding: Encoding) -> list[int]:
    if encoding == "GSM-7":
        return [2 if char in _GSM7_EXTENSION else 1 for char in text]
    return [2 if ord(char) > 0xFFFF else 1 for char in text]


def count_segments(text: str) -> SegmentCount:
    """How many SMS segments ``text`` takes, and in which encoding. An empty text is one."""
    encoding = encoding_for(text)
    widths = _unit_widths(text, encoding)
    units = sum(widths)
    single, multi = _LIMITS[encoding]
    if units <= single:
        return SegmentCount(encoding, 1, units)
    if max(widths) == 1:
        return SegmentCount(encoding, math.ceil(units / multi), units)
    segments, used = 1, 0
    for width in widths:
        if used + width > multi:
            segments += 1
            used = 0
        used += width
    return SegmentCount(encoding, segments, units)

"""SMS segment counting (GSM 03.38): encodings, single and concatenated limits, packing."""

from __future__ import annotations

import pytest

from core.segments import SegmentCount, count_segments, encoding_for

EMOJI = "\N{GRINNING FACE}"  # outside the BMP: a surrogate pair, two UTF-16 units
HEBREW = "\N{HEBREW LETTER SHIN}"
EXTENSION_CHARS = ["€", "{", "}", "[", "]", "~", "|", "^", "\\", "\f"]


def test_empty_text_is_one_segment() -> None:
    assert count_segments("") == SegmentCount("GSM-7", 1, 0)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (159, 1), (160, 1), (161, 2), (305, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_single_160_then_153_per_segment(length: int, segments: int) -> None:
    assert count_segments("a" * length) == SegmentCount("GSM-7", segments, length)


@pytest.mark.parametrize("char", EXTENSION_CHARS)
def test_extension_character_costs_two_septets(char: str) -> None:
    assert count_segments(char) == SegmentCount("GSM-7", 1, 2)
    assert count_segments("a" * 158 + char) == SegmentCount("GSM-7", 1, 160)
    assert count_segments("a" * 159 + char) == SegmentCount("GSM-7", 2, 161)


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (80, SegmentCount("GSM-7", 1, 160)),
        (81, SegmentCount("GSM-7", 2, 162)),
        # 76 pairs fill 152 of a concatenated segment's 153 septets; the 77th moves on whole.
        (152, SegmentCount("GSM-7", 2, 304)),
        (153, SegmentCount("GSM-7", 3, 306)),
    ],
)
def test_euro_signs(count: int, expected: SegmentCount) -> None:
    assert count_segments("€" * count) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 306 septets: division says 2, but the € cannot start at septet 153 of segment 1.
        ("a" * 152 + "€" + "a" * 152, SegmentCount("GSM-7", 3, 306)),
        ("a" * 152 + "€" + "a" * 151, SegmentCount("GSM-7", 2, 305)),
        # the pair fits exactly at the end of segment 1
        ("a" * 151 + "€" + "a" * 153, SegmentCount("GSM-7", 2, 306)),
        ("a" * 152 + "€" * 77, SegmentCount("GSM-7", 3, 306)),
    ],
)
def test_escape_pair_never_split_across_segments(text: str, expected: SegmentCount) -> None:
    assert count_segments(text) == expected


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Hello, world! 0123456789", "GSM-7"),
        ("é è ù ì ò É Ç Ø ø Å å Æ æ ß Ä Ö Ñ Ü ä ö ñ ü à ¿ ¡ § £ ¥ ¤ Δ Φ Γ Λ Ω Π Ψ Σ Θ Ξ", "GSM-7"),
        ("line\nbreak\rreturn @$_", "GSM-7"),
        ("{[~|^]}\\€\f", "GSM-7"),
        ("ê", "UCS-2"),  # é is in the table, ê is not
        ("ç", "UCS-2"),  # only the capital Ç is
        ("á", "UCS-2"),
        ("\t", "UCS-2"),
        ("`", "UCS-2"),
        (HEBREW, "UCS-2"),
        (EMOJI, "UCS-2"),
        ("Α", "UCS-2"),  # Greek capital alpha; only the Greek letters unlike Latin ones are GSM
    ],
)
def test_encoding_for(text: str, encoding: str) -> None:
    assert encoding_for(text) == encoding


@pytest.mark.parametrize("char", ["ê", HEBREW, "\N{RIGHT SINGLE QUOTATION MARK}"])
def test_one_non_gsm_character_switches_the_whole_text_to_ucs2(char: str) -> None:
    assert count_segments("a" * 69 + char) == SegmentCount("UCS-2", 1, 70)
    assert count_segments("a" * 70 + char) == SegmentCount("UCS-2", 2, 71)
    # every € then costs one unit, not two septets
    assert count_segments("€" * 69 + char) == SegmentCount("UCS-2", 1, 70)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (70, 1), (71, 2), (133, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_single_70_then_67_per_segment(length: int, segments: int) -> None:
    assert count_segments(HEBREW * length) == SegmentCount("UCS-2", segments, length)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (EMOJI, SegmentCount("UCS-2", 1, 2)),
        (EMOJI * 35, SegmentCount("UCS-2", 1, 70)),
        (HEBREW * 69 + EMOJI, SegmentCount("UCS-2", 2, 71)),
        # 33 emoji fill 66 of 67 units; the 34th does not fit its halves apart.
        (EMOJI * 36, SegmentCount("UCS-2", 2, 72)),
        (EMOJI * 67, SegmentCount("UCS-2", 3, 134)),
        # 134 units: division says 2, packing says 3.
        (HEBREW * 66 + EMOJI + HEBREW * 66, SegmentCount("UCS-2", 3, 134)),
        (HEBREW * 65 + EMOJI + HEBREW * 67, SegmentCount("UCS-2", 2, 134)),
    ],
)
def test_emoji_is_two_units_and_never_split(text: str, expected: SegmentCount) -> None:
    assert count_segments(text) == expected

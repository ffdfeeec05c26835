"""WhatsApp message templates: their ``{{1}}`` parameters and how a send fills them. Pure.

Meta numbers body parameters ``{{1}}``, ``{{2}}``, … with no gaps, and refuses parameter values
with new lines, tabs or more than four spaces in a row; we check the same before a message is
accepted, so a bad send is an item error instead of a failed message later.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PLACEHOLDER = re.compile(r"\{\{(\d{1,3})\}\}")
MAX_BODY = 1024
MAX_PARAMETER = 1024
_FORBIDDEN_IN_PARAMETER = re.compile(r"[\n\r\t]| {5,}")


def parameter_count(text: str) -> int:
    """How many distinct ``{{n}}`` parameters ``text`` uses. Raises ``ValueError`` unless they
    are numbered 1…n without gaps."""
    numbers = sorted({int(n) for n in _PLACEHOLDER.findall(text)})
    if numbers and numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(
            "parameters must be numbered {{1}}, {{2}}, … without gaps; found "
            + ", ".join(f"{{{{{n}}}}}" for n in numbers)
        )
    return len(numbers)


def render(text: str, values: Sequence[str]) -> str:
    """``text`` with ``{{n}}`` replaced by ``values[n-1]``; placeholders beyond stay."""

    def fill(match: re.Match[str]) -> str:
        index = int(match.group(1)) - 1
        return values[index] if 0 <= index < len(values) else match.group(0)

    return _PLACEHOLDER.sub(fill, text)


def parameter_problem(value: str) -> str | None:
    """Why Meta would refuse ``value`` as a parameter, or None."""
    if not value.strip():
        return "is empty"
    if len(value) > MAX_PARAMETER:
        return f"is longer than {MAX_PARAMETER} characters"
    if _FORBIDDEN_IN_PARAMETER.search(value):
        return "may not contain new lines, tabs or more than four spaces in a row"
    return None


def positional_values(variables: object, expected: int) -> list[str]:
    """The parameter values in order, from a list or from an object keyed "1"…"n".

    Raises ``ValueError`` saying what is wrong (type, count, a bad value).
    """
    if variables is None:
        values: list[object] = []
    elif isinstance(variables, list):
        values = list(variables)
    elif isinstance(variables, dict):
        wanted = [str(n) for n in range(1, len(variables) + 1)]
        if set(variables) != set(wanted):
            raise ValueError('as an object, variables are keyed "1", "2", … without gaps')
        values = [variables[k] for k in wanted]
    else:
        raise ValueError("variables must be a list or an object keyed by parameter number")
    if len(values) != expected:
        raise ValueError(f"the template takes {expected} parameter(s); {len(values)} given")
    checked: list[str] = []
    for number, value in enumerate(values, start=1):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"parameter {number} must be text or a number")
        text = str(value)
        problem = parameter_problem(text)
        if problem is not None:
            raise ValueError(f"parameter {number} {problem}")
        checked.append(text)
    return checked

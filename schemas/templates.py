"""The template language of event templates and OTP message templates. Pure.

A template is text with ``{name}`` placeholders; ``{{`` and ``}}`` stand for literal braces.
A name is an ASCII identifier (``[A-Za-z_][A-Za-z0-9_]*``, at most 64 characters). Format
specs (``{total:>8}``), conversions (``{name!r}``), attribute or index access (``{a.b}``,
``{a[0]}``) and positional fields (``{}``, ``{0}``) are refused: a template fills in values,
it never reaches into them. The grammar is the standard library's (``string.Formatter``), so
brace escaping behaves exactly like ``str.format``; rendering itself never calls ``format``.

It lives in ``schemas`` because it is part of the data contract: what a valid template is
decides which bodies are accepted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from string import Formatter

from schemas.text_rules import encodes_as_utf8

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_FORMATTER = Formatter()

#: Bounds on the values a send may fill in, so a request cannot blow a text up.
MAX_VARIABLES = 50
MAX_VARIABLE_LENGTH = 500


class TemplateSyntaxError(ValueError):
    """The template is not valid; the message says where and why."""


class MissingVariable(KeyError):
    """A placeholder has no value. ``name`` is the placeholder."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class InvalidVariable(ValueError):
    """A variable's value cannot be used. ``name`` is the variable."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.reason = reason


def _pieces(template: str) -> list[tuple[str, str | None]]:
    """(literal text, placeholder name or None) pairs; raises ``TemplateSyntaxError``."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateSyntaxError(
            f"braces do not balance ({exc}); write {{{{ or }}}} for a literal brace"
        ) from None
    pieces: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is None:
            pieces.append((literal, None))
            continue
        if spec or conversion or not _NAME.fullmatch(field):
            shown = (
                "{"
                + field
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
            )
            shown += "}"
            raise TemplateSyntaxError(
                f"placeholder {shown} must be a plain name such as {{order_id}} "
                "(letters, digits and _, not starting with a digit)"
            )
        pieces.append((literal, field))
    return pieces


def template_placeholders(template: str) -> tuple[str, ...]:
    """The distinct placeholder names of ``template``, in order of first use.

    Raises ``TemplateSyntaxError`` for unbalanced braces or a placeholder that is not a name.
    """
    names = [name for _, name in _pieces(template) if name is not None]
    return tuple(dict.fromkeys(names))


def checked_variables(variables: Mapping[str, object]) -> dict[str, str]:
    """The variables as text. Names have 1 to 64 characters; values must be strings or
    numbers (not booleans, not null), at most ``MAX_VARIABLE_LENGTH`` characters once written
    out and encodable as UTF-8; at most ``MAX_VARIABLES`` of them. Raises ``InvalidVariable``
    naming the first bad one."""
    if len(variables) > MAX_VARIABLES:
        raise InvalidVariable("", f"at most {MAX_VARIABLES} variables")
    text: dict[str, str] = {}
    for name, value in variables.items():
        if not 1 <= len(name) <= 64:
            raise InvalidVariable(name[:64], "must have a name of 1 to 64 characters")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InvalidVariable(name, "must be a string or a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidVariable(name, "must be a finite number")
        if isinstance(value, int) and abs(value) >= 10**MAX_VARIABLE_LENGTH:
            # Checked before str(): Python refuses to print ints of over 4,300 digits.
            raise InvalidVariable(name, f"must be at most {MAX_VARIABLE_LENGTH} characters")
        written = value if isinstance(value, str) else str(value)
        if len(written) > MAX_VARIABLE_LENGTH:
            raise InvalidVariable(name, f"must be at most {MAX_VARIABLE_LENGTH} characters")
        if not encodes_as_utf8(written):
            raise InvalidVariable(name, "must be text that encodes as UTF-8 (no lone surrogates)")
        text[name] = written
    return text


def render_template(template: str, variables: Mapping[str, str]) -> str:
    """``template`` with each placeholder replaced by its variable, literally (a value that
    contains braces is not expanded again). Variables the template does not use are ignored.

    Raises ``TemplateSyntaxError`` for a bad template and ``MissingVariable`` for the first
    placeholder without a value.
    """
    out: list[str] = []
    for literal, name in _pieces(template):
        out.append(literal)
        if name is not None:
            if name not in variables:
                raise MissingVariable(name)
            out.append(variables[name])
    return "".join(out)

"""The template language (``schemas.templates``): placeholders, escapes, what is refused, and
rendering. Pure."""

from __future__ import annotations

import pytest

from schemas.templates import (
    MAX_VARIABLE_LENGTH,
    MAX_VARIABLES,
    InvalidVariable,
    MissingVariable,
    TemplateSyntaxError,
    checked_variables,
    render_template,
    template_placeholders,
)


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("No placeholders", ()),
        ("Hi {name}", ("name",)),
        ("{a}{b}{a}", ("a", "b")),
        ("{_private} {snake_case_2}", ("_private", "snake_case_2")),
        ("{{literal}} and {real}", ("real",)),
        ("{{}}", ()),
        ("{{{name}}}", ("name",)),
        ("", ()),
        ("{" + "x" * 64 + "}", ("x" * 64,)),
    ],
)
def test_placeholders_in_order_of_first_use(template: str, names: tuple[str, ...]) -> None:
    assert template_placeholders(template) == names


@pytest.mark.parametrize(
    "template",
    ["{", "}", "Hi {name", "Hi name}", "{name}}", "{{name}", "a {b{c}} d", "{{{name}}"],
)
def test_unbalanced_braces_are_refused(template: str) -> None:
    with pytest.raises(TemplateSyntaxError, match="braces do not balance"):
        template_placeholders(template)


@pytest.mark.parametrize(
    "template",
    [
        "{}",
        "{0}",
        "{1name}",
        "{ name }",
        "{first name}",
        "{user.name}",
        "{items[0]}",
        "{name!r}",
        "{total:>10}",
        "{total:{width}}",
        "{имя}",
        "{" + "x" * 65 + "}",
        "{name-with-dash}",
    ],
)
def test_placeholders_must_be_plain_ascii_names(template: str) -> None:
    with pytest.raises(TemplateSyntaxError, match="must be a plain name"):
        template_placeholders(template)


def test_rendering_fills_in_and_unescapes() -> None:
    rendered = render_template("{{x}} Hi {name}, {name}! {{", {"name": "Dana", "unused": "u"})
    assert rendered == "{x} Hi Dana, Dana! {"


def test_values_are_not_expanded_again() -> None:
    assert render_template("{a}", {"a": "{b}", "b": "no"}) == "{b}"
    assert render_template("{a}", {"a": "{0.__class__}"}) == "{0.__class__}"


def test_a_missing_variable_is_named() -> None:
    with pytest.raises(MissingVariable) as caught:
        render_template("{a} {b} {c}", {"a": "1"})
    assert caught.value.name == "b"


def test_rendering_a_bad_template_raises_the_syntax_error() -> None:
    with pytest.raises(TemplateSyntaxError):
        render_template("{a", {"a": "1"})


def test_variables_become_text() -> None:
    assert checked_variables({"s": "x", "i": 3, "f": 2.5, "neg": -1}) == {
        "s": "x",
        "i": "3",
        "f": "2.5",
        "neg": "-1",
    }


@pytest.mark.parametrize(
    ("variables", "name"),
    [
        ({"flag": True}, "flag"),
        ({"none": None}, "none"),
        ({"list": [1]}, "list"),
        ({"dict": {"a": 1}}, "dict"),
        ({"long": "x" * (MAX_VARIABLE_LENGTH + 1)}, "long"),
        ({"big": 10 ** (MAX_VARIABLE_LENGTH + 1)}, "big"),
        ({"huge": 10**5000}, "huge"),
        ({"nan": float("nan")}, "nan"),
        ({"inf": float("-inf")}, "inf"),
        ({"lone": "a\ud800"}, "lone"),
        ({"": "x"}, ""),
        ({"n" * 65: "x"}, "n" * 64),
    ],
)
def test_bad_variables_are_named(variables: dict, name: str) -> None:
    with pytest.raises(InvalidVariable) as caught:
        checked_variables(variables)
    assert caught.value.name == name


def test_variables_are_bounded_in_number_and_size() -> None:
    assert checked_variables({"v": "x" * MAX_VARIABLE_LENGTH})["v"] == "x" * MAX_VARIABLE_LENGTH
    checked_variables({f"v{i}": i for i in range(MAX_VARIABLES)})
    with pytest.raises(InvalidVariable, match="at most"):
        checked_variables({f"v{i}": i for i in range(MAX_VARIABLES + 1)})

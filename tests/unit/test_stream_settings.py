"""Stream bodies and settings. Invariant 7: bad input gets a clear error that says which field
and why."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.enums import StreamType
from schemas.streams import QuietHours, StreamCreate, StreamSettings


def _error(model: type[BaseModel], **fields: Any) -> tuple[tuple[Any, ...], str, str]:
    """The one error a body raises: (location, pydantic type, message)."""
    with pytest.raises(ValidationError) as caught:
        model(**fields)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    return errors[0]["loc"], errors[0]["type"], errors[0]["msg"]


# -- numeric bounds ----------------------------------------------------------------------------

BOUNDS = [
    ("code_length", 4, 10),
    ("max_per_second", 1, 100_000),
    ("max_per_recipient_per_hour", 1, 100_000),
    ("max_per_day", 1, 100_000_000),
    ("ttl_seconds", 30, 86_400),
    ("max_failures", 1, 20),
    ("resend_cooldown_seconds", 0, 3_600),
    ("codes_per_recipient_per_hour", 1, 1_000),
]


@pytest.mark.parametrize(("field", "low", "high"), BOUNDS)
def test_bounds_accept_the_edges(field: str, low: int, high: int) -> None:
    assert getattr(StreamSettings(**{field: low}), field) == low
    assert getattr(StreamSettings(**{field: high}), field) == high


@pytest.mark.parametrize(("field", "low", "high"), BOUNDS)
def test_bounds_reject_beyond_the_edges(field: str, low: int, high: int) -> None:
    assert _error(StreamSettings, **{field: low - 1}) == (
        (field,),
        "greater_than_equal",
        f"Input should be greater than or equal to {low}",
    )
    assert _error(StreamSettings, **{field: high + 1}) == (
        (field,),
        "less_than_equal",
        f"Input should be less than or equal to {high}",
    )


@pytest.mark.parametrize(
    ("value", "error_type"),
    [(5.5, "int_from_float"), ("five", "int_parsing"), (True, "value_error"), ([5], "int_type")],
)
def test_code_length_must_be_an_integer(value: Any, error_type: str) -> None:
    loc, kind, _ = _error(StreamSettings, code_length=value)
    assert (loc, kind) == (("code_length",), error_type)


def test_settings_default_to_not_set() -> None:
    assert StreamSettings().model_dump(exclude_none=True) == {}


# -- template ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template", ["{code}", "Your code is {code}", "{code} is your Acme code. Valid 5 min."]
)
def test_template_with_code_placeholder(template: str) -> None:
    assert StreamSettings(template=template).template == template


@pytest.mark.parametrize("template", ["Your code", "Your code is {CODE}", "{ code }", "code"])
def test_template_must_contain_code_placeholder(template: str) -> None:
    assert _error(StreamSettings, template=template) == (
        ("template",),
        "value_error",
        "Value error, must contain the {code} placeholder",
    )


@pytest.mark.parametrize(
    "template", ["{code} {", "Code {code}}", "{code} {app.name}", "{code} {n:>6}", "{code} {0}"]
)
def test_template_placeholders_must_be_well_formed(template: str) -> None:
    loc, kind, message = _error(StreamSettings, template=template)
    assert (loc, kind) == (("template",), "value_error")
    assert "braces do not balance" in message or "must be a plain name" in message


def test_template_escaped_braces_do_not_count_as_the_code() -> None:
    assert _error(StreamSettings, template="{{code}}")[2].endswith("the {code} placeholder")
    assert StreamSettings(template="{{ {code} }}").template == "{{ {code} }}"


@pytest.mark.parametrize("scope", ["account", "stream"])
def test_cap_scope_is_account_or_stream(scope: str) -> None:
    assert StreamSettings(codes_per_recipient_scope=scope).codes_per_recipient_scope == scope
    assert _error(StreamSettings, codes_per_recipient_scope="planet")[1] == "literal_error"


@pytest.mark.parametrize(
    ("template", "error_type"),
    [("", "string_too_short"), ("{code}" + "x" * 995, "string_too_long")],
)
def test_template_length(template: str, error_type: str) -> None:
    loc, kind, _ = _error(StreamSettings, template=template)
    assert (loc, kind) == (("template",), error_type)


# -- quiet hours -------------------------------------------------------------------------------


@pytest.mark.parametrize("clock", ["00:00", "09:00", "19:59", "20:00", "23:59"])
def test_quiet_hours_accept_24_hour_clock(clock: str) -> None:
    assert QuietHours(start=clock, end="12:34").start == clock
    assert QuietHours(start="12:34", end=clock).end == clock


def test_quiet_hours_defaults() -> None:
    assert QuietHours().model_dump() == {"start": "09:00", "end": "20:00", "timezone": None}


@pytest.mark.parametrize(
    "clock",
    [
        "24:00",
        "9:00",
        "09:0",
        "12:60",
        "12:00:00",
        "12.00",
        "noon",
        "",
        " 09:00",
        "１２:００",
        "٠٩:٠٠",
        "0\u0669:0\u0660",  # non-ASCII digits only where a digit class is: \d took them
        "1\u0669:5\u0669",
        "0\uff19:00",
    ],
)
@pytest.mark.parametrize("field", ["start", "end"])
def test_quiet_hours_reject_bad_clock(field: str, clock: str) -> None:
    assert _error(QuietHours, **{field: clock}) == (
        (field,),
        "value_error",
        "Value error, must be a 24-hour time HH:MM",
    )


@pytest.mark.parametrize("field", ["start", "end"])
def test_quiet_hours_reject_trailing_newline(field: str) -> None:
    assert _error(QuietHours, **{field: "12:00\n"})[0] == (field,)


@pytest.mark.parametrize(
    "zone",
    ["Not/AZone", "localtime", "Factory", "posixrules", "posix/Europe/Paris", "right/UTC"],
)
def test_quiet_hours_reject_what_is_not_a_place_s_time_zone(zone: str) -> None:
    """``ZoneInfo`` opens all of these; ``localtime`` is the server's own zone."""
    assert _error(QuietHours, timezone=zone)[:2] == (("timezone",), "value_error")


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/Argentina/Buenos_Aires", "UTC"])
def test_quiet_hours_take_iana_zones(zone: str) -> None:
    assert QuietHours(timezone=zone).timezone == zone


def test_quiet_hours_error_names_the_nested_field() -> None:
    assert _error(StreamSettings, quiet_hours={"start": "9:00"}) == (
        ("quiet_hours", "start"),
        "value_error",
        "Value error, must be a 24-hour time HH:MM",
    )


@pytest.mark.parametrize("field", ["start", "end"])
def test_quiet_hours_with_unicode_digits_name_the_field_of_the_stream(field: str) -> None:
    """``time.fromisoformat`` in the worker refuses them: a stored one breaks every send."""
    window = {"start": "09:00", "end": "20:00", field: "0\u0669:0\u0660"}
    body = {"name": "Promo", "type": "marketing", "settings": {"quiet_hours": window}}
    assert _error(StreamCreate, **body)[:2] == (("settings", "quiet_hours", field), "value_error")


# -- callbacks ---------------------------------------------------------------------------------


def test_callback_headers_accepted() -> None:
    headers = {
        "X-Signature-Key": "abc",
        "Authorization": "Bearer x y",
        "X-Empty": "",
        "a-1": "a\tb",
    }
    assert StreamSettings(callback_headers=headers).callback_headers == headers


@pytest.mark.parametrize(
    "value",
    [
        "a\rb",
        "a\nb",
        "a\r\nX-Injected: 1",
        "\r\n",
        "x" * 1025,
        # Not ASCII: httpx cannot send it, so every attempt raised and none was counted.
        "Müller",
        "a\u2028b",
        "\u00a0",
        # Blanks at either end (a pasted key): h11 refuses to send them.
        "key ",
        " key",
        "key\t",
        "\t",
        " ",
    ],
)
def test_callback_header_value_rejects_cr_lf_non_ascii_and_overlong(value: str) -> None:
    assert _error(StreamSettings, callback_headers={"X-Custom": value}) == (
        ("callback_headers",),
        "value_error",
        "Value error, header 'X-Custom' has an invalid value (printable ASCII, at most 1024, "
        "no space or tab at either end)",
    )


def test_callback_header_value_rejects_nul_as_every_request_field_does() -> None:
    assert _error(StreamSettings, callback_headers={"X-Custom": "a\x00b"}) == (
        ("callback_headers",),
        "value_error",
        "Value error, may not contain the NUL character (U+0000)",
    )


@pytest.mark.parametrize("value", ["a\x0bb", "a\x0cb"], ids=["VT", "FF"])
def test_callback_header_value_rejects_other_control_characters(value: str) -> None:
    assert _error(StreamSettings, callback_headers={"X-Custom": value})[0] == ("callback_headers",)


@pytest.mark.parametrize(
    "name",
    ["", "X Custom", "X-Custom:", "X_Custom", "X-Cüstom", "X-Custom\r\n", "X/Custom", "x" * 65],
)
def test_callback_header_name_must_be_a_token(name: str) -> None:
    assert _error(StreamSettings, callback_headers={name: "v"}) == (
        ("callback_headers",),
        "value_error",
        f"Value error, header name {name!r} is not a valid HTTP header name",
    )


def test_at_most_20_callback_headers() -> None:
    assert (
        len(
            StreamSettings(callback_headers={f"X-{i}": "v" for i in range(20)}).callback_headers
            or {}
        )
        == 20
    )
    assert _error(StreamSettings, callback_headers={f"X-{i}": "v" for i in range(21)}) == (
        ("callback_headers",),
        "value_error",
        "Value error, at most 20 headers",
    )


@pytest.mark.parametrize(
    ("url", "error_type"),
    [
        ("ftp://example.com/mo", "url_scheme"),
        ("javascript:alert(1)", "url_scheme"),
        ("nope", "url_parsing"),
    ],
)
def test_callback_url_must_be_http(url: str, error_type: str) -> None:
    loc, kind, _ = _error(StreamSettings, callback_url=url)
    assert (loc, kind) == (("callback_url",), error_type)


@pytest.mark.parametrize(
    ("field", "value", "error_type"),
    [
        ("callback_method", "PUT", "literal_error"),
        ("callback_method", "post", "literal_error"),
        ("code_mode", "random", "literal_error"),
        ("alphabet", "hex", "literal_error"),
    ],
)
def test_literal_choices(field: str, value: str, error_type: str) -> None:
    loc, kind, _ = _error(StreamSettings, **{field: value})
    assert (loc, kind) == ((field,), error_type)


# -- unknown fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "loc"),
    [
        (StreamSettings, {"code_lenght": 6}, ("code_lenght",)),
        (StreamSettings, {"quiet_hours": {"start": "09:00", "tz": "UTC"}}, ("quiet_hours", "tz")),
        (QuietHours, {"begin": "09:00"}, ("begin",)),
        (StreamCreate, {"name": "Orders", "type": "otp", "token": "st_x"}, ("token",)),
        (
            StreamCreate,
            {"name": "Orders", "type": "otp", "settings": {"max_per_minute": 5}},
            ("settings", "max_per_minute"),
        ),
    ],
)
def test_unknown_fields_are_rejected(
    model: type[BaseModel], fields: dict[str, Any], loc: tuple[str, ...]
) -> None:
    assert _error(model, **fields) == (loc, "extra_forbidden", "Extra inputs are not permitted")


# -- StreamCreate ------------------------------------------------------------------------------


def test_stream_create_defaults() -> None:
    body = StreamCreate(name="  Orders  ", type="otp")
    assert body.model_dump(exclude={"settings"}) == {
        "name": "Orders",
        "type": StreamType.otp,
        "description": None,
        "tags": [],
        "allowed_ips": [],
        "default_sender": None,
        "demo": False,
    }
    assert body.settings == StreamSettings()


@pytest.mark.parametrize(
    ("fields", "loc", "error_type"),
    [
        ({"type": "otp"}, ("name",), "missing"),
        ({"name": "Orders"}, ("type",), "missing"),
        ({"name": "   ", "type": "otp"}, ("name",), "string_too_short"),
        ({"name": "x" * 201, "type": "otp"}, ("name",), "string_too_long"),
        ({"name": "Orders", "type": "sms"}, ("type",), "enum"),
        ({"name": "Orders", "type": "otp", "tags": ["ok", " "]}, ("tags", 1), "string_too_short"),
        ({"name": "Orders", "type": "otp", "tags": ["t"] * 21}, ("tags",), "too_long"),
        ({"name": "Orders", "type": "otp", "tags": ["x" * 65]}, ("tags", 0), "string_too_long"),
        (
            {"name": "Orders", "type": "otp", "description": "d" * 2_001},
            ("description",),
            "string_too_long",
        ),
        (
            {"name": "Orders", "type": "otp", "allowed_ips": ["1.1.1.1"] * 101},
            ("allowed_ips",),
            "too_long",
        ),
        (
            {"name": "Orders", "type": "otp", "settings": {"code_length": 11}},
            ("settings", "code_length"),
            "less_than_equal",
        ),
    ],
)
def test_stream_create_errors_name_the_field(
    fields: dict[str, Any], loc: tuple[Any, ...], error_type: str
) -> None:
    got_loc, got_type, _ = _error(StreamCreate, **fields)
    assert (got_loc, got_type) == (loc, error_type)


@pytest.mark.parametrize(
    "window", [{"start": "09:00", "end": "09:00"}, {"end": "09:00"}, {"start": "20:00"}]
)
def test_quiet_hours_that_open_and_close_at_once_are_refused_naming_end(window) -> None:
    """09:00-09:00 was taken as open all day; a sender may as well have meant never."""
    assert _error(StreamSettings, quiet_hours=window) == (
        ("quiet_hours", "end"),
        "value_error",
        "Value error, must differ from start; to send marketing at any hour, set quiet_hours"
        " to null",
    )

"""The management API for streams (API.md, "Management API"), against the real app,
PostgreSQL and Redis."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from schemas.tables import Stream
from tests.conftest import auth, message

STREAMS = "/api/v1/streams"
STREAM_FIELDS = {
    "id", "name", "type", "status", "tags", "allowed_ips", "last_activity_at", "created_at",
    "settings",
}  # fmt: skip
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]*$")
CALLBACK = {"callback_url": "https://hooks.example.com/streams"}


def send(client, token: str, **fields: Any):
    return client.post("/v1/messages", json={"messages": [message(**fields)]}, headers=auth(token))


def error_of(response, status: int) -> dict[str, Any]:
    """The contract's error body, after checking the status and the shape."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert SNAKE_CASE.match(error["code"]), error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    return error


def listing(client, key: str, **params: Any) -> dict[str, Any]:
    response = client.get(STREAMS, params=params, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


def names(page: dict[str, Any]) -> list[str]:
    return [item["name"] for item in page["items"]]


def stream_of(client, key: str, stream_id: str) -> dict[str, Any]:
    response = client.get(f"{STREAMS}/{stream_id}", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- create


@pytest.mark.parametrize(
    ("fields", "status", "missing"),
    [
        ({"type": "marketing"}, "ready", []),
        ({"type": "marketing", "default_sender": None}, "draft", ["default_sender"]),
        ({"type": "transactional"}, "ready", []),
        ({"type": "transactional", "default_sender": None}, "draft", ["default_sender"]),
        ({"type": "transactional", "default_sender": None, "demo": True}, "ready", []),
        ({"type": "otp"}, "ready", []),
        ({"type": "otp", "default_sender": None}, "draft", ["default_sender"]),
        ({"type": "otp", "default_sender": None, "demo": True}, "ready", []),
        ({"type": "two_way"}, "draft", ["settings.callback_url"]),
        ({"type": "two_way", "settings": CALLBACK}, "ready", []),
        (
            {"type": "two_way", "default_sender": None, "demo": True},
            "draft",
            ["settings.callback_url"],
        ),
        (
            {"type": "two_way", "default_sender": None, "demo": True, "settings": CALLBACK},
            "ready",
            [],
        ),
        (
            {"type": "whatsapp", "settings": CALLBACK},
            "draft",
            ["whatsapp.phone_number_id", "whatsapp.access_token"],
        ),
        ({"type": "whatsapp", "demo": True}, "ready", []),
    ],
    ids=lambda value: (
        "-".join(f"{k}={v}" for k, v in value.items() if k != "settings")
        if isinstance(value, dict)
        else None
    ),
)
def test_create_sets_draft_or_ready_by_type(client, account_key, fields, status, missing):
    body = {
        "name": "Welcome flow",
        "default_sender": "Acme",
        "tags": ["eu", "vip"],
        "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"],
        **fields,
    }
    response = client.post(STREAMS, json=body, headers=auth(account_key))

    assert response.status_code == 201, response.text
    stream = response.json()
    assert stream.keys() >= STREAM_FIELDS
    uuid.UUID(stream["id"])
    assert stream["name"] == "Welcome flow"
    assert stream["type"] == fields["type"]
    assert stream["tags"] == ["eu", "vip"]
    assert stream["allowed_ips"] == ["10.0.0.0/8", "2001:db8::/32"]
    assert stream["last_activity_at"] is None
    assert datetime.fromisoformat(stream["created_at"]).tzinfo is not None
    assert isinstance(stream["settings"], dict)
    assert (stream["status"], stream["missing_steps"]) == (status, missing)
    assert stream_of(client, account_key, stream["id"]) == stream


def test_create_otp_stream_gets_default_code_settings(make_stream):
    settings = make_stream(type="otp", settings={"code_length": 8})["settings"]

    assert "{code}" in settings["template"]
    assert settings["code_length"] == 8
    assert {"code_mode", "alphabet", "ttl_seconds", "max_failures"} <= settings.keys()


def test_create_keeps_given_limits(make_stream):
    limits = {"max_per_second": 20, "max_per_day": 5000, "max_per_recipient_per_hour": 3}
    quiet = {"start": "08:30", "end": "21:00", "timezone": None}

    settings = make_stream(type="marketing", settings={**limits, "quiet_hours": quiet})["settings"]

    assert settings.items() >= limits.items()
    assert settings["quiet_hours"]["start"] == "08:30"
    assert settings["quiet_hours"]["end"] == "21:00"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"allowed_ips": ["10.0.0.0/8", "10.0.0.0/33"]}, "allowed_ips[1]"),
        ({"allowed_ips": ["192.168.1.0/24", "not-an-ip"]}, "allowed_ips[1]"),
        ({"default_sender": "A sender name far too long"}, "default_sender"),
        ({"default_sender": "Acme!"}, "default_sender"),
        ({"type": "marketing", "settings": {"code_length": 6}}, "settings.code_length"),
        ({"type": "otp", "settings": {"template": "Your code is ready"}}, "settings.template"),
        ({"type": "transactional", "settings": CALLBACK}, "settings.callback_url"),
        ({"type": "two_way", "settings": {"callback_url": "not a url"}}, "settings.callback_url"),
        ({"type": "marketing", "settings": {"max_per_second": 0}}, "settings.max_per_second"),
        ({"colour": "blue"}, "colour"),
        ({"name": None}, "name"),
        ({"name": "   "}, "name"),
        ({"type": "carrier_pigeon"}, "type"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_create_rejects_bad_input_naming_the_field_and_changes_nothing(
    client, account_key, body, field
):
    before = listing(client, account_key)["total"]
    full = {"name": "Orders", "type": "transactional", "default_sender": "Acme", **body}
    full = {k: v for k, v in full.items() if v is not None}

    error = error_of(client.post(STREAMS, json=full, headers=auth(account_key)), 422)

    assert error["field"] == field
    assert listing(client, account_key)["total"] == before


# ---------------------------------------------------------------- list


def test_list_is_newest_first(client, account_key, make_stream):
    for name in ("First", "Second", "Third"):
        make_stream(name=name)

    page = listing(client, account_key)

    assert names(page) == ["Third", "Second", "First"]
    assert (page["total"], page["page"]) == (3, 1)


def test_list_filters_by_name_substring_case_insensitively(client, account_key, make_stream):
    """``%``, ``_`` and ``\\`` are matched literally, not as SQL wildcards."""
    for name in ("Order Updates", "orders archive", "100% off", "snake_case", "snakeXcase", "a\\b"):
        make_stream(name=name)
    expected = {
        "order": ["orders archive", "Order Updates"],
        "ORDER": ["orders archive", "Order Updates"],
        "UPDATE": ["Order Updates"],
        "%": ["100% off"],
        "0%": ["100% off"],
        "_": ["snake_case"],
        "e_c": ["snake_case"],
        "\\": ["a\\b"],
        "nothing like it": [],
    }

    pages = {query: listing(client, account_key, name=query) for query in expected}

    assert {query: names(page) for query, page in pages.items()} == expected
    assert {query: page["total"] for query, page in pages.items()} == {
        query: len(found) for query, found in expected.items()
    }


@pytest.fixture
def one_stream_per_status(client, account_key, make_stream) -> dict[str, dict[str, Any]]:
    """Five streams, one in each status the API shows."""
    streams = {
        "draft": make_stream(name="draft", default_sender=None),
        "ready": make_stream(name="ready"),
        "sending": make_stream(name="sending"),
        "disabled": make_stream(name="disabled"),
        "restricted": make_stream(name="restricted"),
    }
    assert send(client, streams["sending"]["token"]).status_code == 202
    hold = {
        "disabled": ("disable", None),
        "restricted": ("restrict", {"reason": "compliance review"}),
    }
    for status, (action, body) in hold.items():
        response = client.post(
            f"{STREAMS}/{streams[status]['id']}/{action}", json=body, headers=auth(account_key)
        )
        assert response.status_code == 200, response.text
    return streams


@pytest.mark.parametrize(
    "status",
    [
        "draft",
        "ready",
        "sending",
        "disabled",
        "restricted",
    ],
)
def test_list_filters_by_status(client, account_key, one_stream_per_status, status):
    page = listing(client, account_key, status=status)

    assert [item["id"] for item in page["items"]] == [one_stream_per_status[status]["id"]]
    assert page["items"][0]["status"] == status
    assert page["total"] == 1


def test_list_rejects_unknown_status(client, account_key):
    response = client.get(STREAMS, params={"status": "paused"}, headers=auth(account_key))

    assert error_of(response, 422)["field"] == "status"


def test_list_filters_by_tags_each_one_narrowing(client, account_key, make_stream):
    make_stream(name="eu", tags=["eu"])
    make_stream(name="us-vip", tags=["us", "vip"])
    make_stream(name="eu-vip", tags=["eu", "vip"])
    make_stream(name="untagged")
    expected = {
        ("eu",): ["eu-vip", "eu"],
        ("vip",): ["eu-vip", "us-vip"],
        ("eu", "vip"): ["eu-vip"],
        ("vip", "eu"): ["eu-vip"],
        ("eu", "us"): [],
        ("asia",): [],
    }

    pages = {tags: listing(client, account_key, tag=list(tags)) for tags in expected}

    assert {tags: names(page) for tags, page in pages.items()} == expected
    assert all(page["total"] == len(page["items"]) for page in pages.values())


def test_list_filters_by_type(client, account_key, make_stream):
    make_stream(name="promo", type="marketing")
    make_stream(name="orders", type="transactional")
    make_stream(name="codes", type="otp")
    make_stream(name="promo 2", type="marketing")

    assert names(listing(client, account_key, type="marketing")) == ["promo 2", "promo"]
    assert names(listing(client, account_key, type="otp")) == ["codes"]
    assert names(listing(client, account_key, type="whatsapp")) == []


def test_list_combines_filters(client, account_key, make_stream):
    make_stream(name="EU promo", type="marketing", tags=["eu"])
    make_stream(name="EU orders", type="transactional", tags=["eu"])
    make_stream(name="US promo", type="marketing", tags=["us"])

    page = listing(client, account_key, name="promo", tag="eu", type="marketing")

    assert names(page) == ["EU promo"]


def test_list_paginates(client, account_key, make_stream):
    created = [make_stream(name=f"stream {i}")["id"] for i in range(5)]

    pages = [listing(client, account_key, page=n, per_page=2) for n in (1, 2, 3, 4)]

    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    assert all(p["total"] == 5 and p["per_page"] == 2 for p in pages)
    assert [p["page"] for p in pages] == [1, 2, 3, 4]
    seen = [item["id"] for p in pages for item in p["items"]]
    assert seen == created[::-1]


@pytest.mark.parametrize(("param", "value"), [("per_page", 101), ("per_page", 0), ("page", 0)])
def test_list_rejects_out_of_range_paging(client, account_key, param, value):
    response = client.get(STREAMS, params={param: value}, headers=auth(account_key))

    assert error_of(response, 422)["field"] == param


def test_list_allows_per_page_100(client, account_key, make_stream):
    make_stream()

    page = listing(client, account_key, per_page=100)

    assert (page["per_page"], page["total"]) == (100, 1)


# ---------------------------------------------------------------- get, patch, delete


def test_get_shows_sending_after_a_send(client, account_key, make_stream):
    stream = make_stream()
    assert (stream["status"], stream["last_activity_at"]) == ("ready", None)

    assert send(client, stream["token"]).status_code == 202

    shown = stream_of(client, account_key, stream["id"])
    assert shown["status"] == "sending"
    assert datetime.fromisoformat(shown["last_activity_at"]) >= datetime.fromisoformat(
        stream["created_at"]
    )


@pytest.mark.parametrize("stream_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_get_unknown_stream_is_404(client, account_key, stream_id):
    response = client.get(f"{STREAMS}/{stream_id}", headers=auth(account_key))

    assert error_of(response, 404)["code"] == "not_found"


def test_patch_changes_only_the_given_details(client_from, account_key, make_stream):
    client = client_from("10.1.2.3")
    stream = make_stream(name="Orders", tags=["eu"], description="order updates")
    changes = {"name": "Order updates", "tags": ["eu", "priority"], "allowed_ips": ["10.1.0.0/16"]}

    response = client.patch(f"{STREAMS}/{stream['id']}", json=changes, headers=auth(account_key))

    assert response.status_code == 200, response.text
    after = stream_of(client, account_key, stream["id"])
    assert response.json() == after
    assert {k: after[k] for k in changes} == changes
    assert after["description"] == "order updates"
    assert after["type"] == stream["type"]
    assert after["created_at"] == stream["created_at"]
    assert send(client, stream["token"]).status_code == 202
    outside = send(client_from("203.0.113.10"), stream["token"])
    assert error_of(outside, 403)["code"] == "ip_not_allowed"


def test_patch_merges_settings(client, account_key, make_stream):
    stream = make_stream(type="marketing", settings={"max_per_second": 10, "max_per_day": 1000})

    response = client.patch(
        f"{STREAMS}/{stream['id']}",
        json={"settings": {"max_per_day": 2000, "max_per_recipient_per_hour": 2}},
        headers=auth(account_key),
    )

    assert response.status_code == 200, response.text
    settings = stream_of(client, account_key, stream["id"])["settings"]
    assert settings["max_per_second"] == 10
    assert settings["max_per_day"] == 2000
    assert settings["max_per_recipient_per_hour"] == 2


def test_patch_settings_key_set_to_null_is_cleared(client, account_key, make_stream):
    stream = make_stream(type="marketing", settings={"max_per_second": 10, "max_per_day": 1000})

    response = client.patch(
        f"{STREAMS}/{stream['id']}",
        json={"settings": {"max_per_second": None}},
        headers=auth(account_key),
    )

    assert response.status_code == 200, response.text
    assert response.json()["settings"] == {"max_per_day": 1000}


def test_a_patch_of_one_quiet_hours_field_keeps_the_others(client, make_stream, account_key):
    """API.md: ``PATCH /api/v1/streams/{id}`` -- ``edit details and settings``; settings
    fields: ``quiet_hours`` (``{"start", "end", "timezone"}``).

    A PATCH changes what it names, the window's fields included (JSON merge-patch):
    ``{"quiet_hours": {"end": "21:00"}}`` moves the end and keeps the stream's 08:00 start
    and its Europe/Paris zone, where it used to reset them to 09:00 and the recipient's
    zone; a field set to null goes back to its default."""
    stream = make_stream(
        type="marketing",
        settings={"quiet_hours": {"start": "08:00", "end": "20:00", "timezone": "Europe/Paris"}},
    )
    url = f"{STREAMS}/{stream['id']}"

    patched = client.patch(
        url, json={"settings": {"quiet_hours": {"end": "21:00"}}}, headers=auth(account_key)
    )

    assert patched.status_code == 200, patched.text
    window = patched.json()["settings"]["quiet_hours"]
    assert window == {"start": "08:00", "end": "21:00", "timezone": "Europe/Paris"}
    # The start is checked against the end the stream has, not the default one.
    moved = client.patch(
        url, json={"settings": {"quiet_hours": {"start": "20:00"}}}, headers=auth(account_key)
    )
    assert moved.json()["settings"]["quiet_hours"]["start"] == "20:00", moved.text
    cleared = client.patch(
        url,
        json={"settings": {"quiet_hours": {"start": None, "timezone": None}}},
        headers=auth(account_key),
    )
    assert cleared.json()["settings"]["quiet_hours"] == {
        "start": "09:00",
        "end": "21:00",
        "timezone": None,
    }
    same = client.patch(
        url, json={"settings": {"quiet_hours": {"end": "09:00"}}}, headers=auth(account_key)
    )
    assert error_of(same, 422)["field"] == "settings.quiet_hours.end"


def test_settings_put_replaces_the_quiet_hours_window_whole(client, make_stream, account_key):
    """``PUT .../settings`` replaces: a window given in part takes the defaults for the
    rest, unlike a PATCH."""
    stream = make_stream(
        type="marketing",
        settings={"quiet_hours": {"start": "08:00", "end": "20:00", "timezone": "Europe/Paris"}},
    )
    put = client.put(
        f"{STREAMS}/{stream['id']}/settings",
        json={"quiet_hours": {"end": "21:00"}},
        headers=auth(account_key),
    )
    assert put.status_code == 200, put.text
    assert put.json()["quiet_hours"] == {"start": "09:00", "end": "21:00", "timezone": None}


def test_patch_callback_url_makes_a_two_way_draft_ready(client, account_key, make_stream):
    stream = make_stream(type="two_way")
    assert stream["missing_steps"] == ["settings.callback_url"]

    response = client.patch(
        f"{STREAMS}/{stream['id']}", json={"settings": CALLBACK}, headers=auth(account_key)
    )

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["missing_steps"]) == ("ready", [])
    assert response.json()["settings"]["callback_url"].startswith(CALLBACK["callback_url"])
    assert send(client, stream["token"]).status_code == 202


def test_patch_default_sender_makes_a_draft_ready(client, account_key, make_stream):
    stream = make_stream(default_sender=None)
    assert (stream["status"], stream["missing_steps"]) == ("draft", ["default_sender"])
    assert error_of(send(client, stream["token"]), 409)["code"] == "stream_draft"

    response = client.patch(
        f"{STREAMS}/{stream['id']}", json={"default_sender": "Acme"}, headers=auth(account_key)
    )

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["missing_steps"]) == ("ready", [])
    assert send(client, stream["token"]).status_code == 202


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"allowed_ips": ["10.0.0.1", "300.0.0.0/8"]}, "allowed_ips[1]"),
        ({"default_sender": "Acme & Co Ltd"}, "default_sender"),
        ({"settings": {"code_length": 6}}, "settings.code_length"),
        ({"name": None}, "name"),
        ({"type": "otp"}, "type"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_patch_rejects_bad_input_and_changes_nothing(
    client, account_key, make_stream, changes, field
):
    stream = make_stream(tags=["eu"], allowed_ips=["10.0.0.0/8"])
    before = stream_of(client, account_key, stream["id"])

    response = client.patch(f"{STREAMS}/{stream['id']}", json=changes, headers=auth(account_key))

    assert error_of(response, 422)["field"] == field
    assert stream_of(client, account_key, stream["id"]) == before


def test_delete_stops_the_token_and_keeps_message_history(client, account_key, make_stream):
    """Also a token still in its grace period after a reset stops working."""
    stream = make_stream()
    sent = send(client, stream["token"], internal_id="before-delete")
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["results"][0]["message_id"]
    reset = client.post(
        f"{STREAMS}/{stream['id']}/token/reset",
        json={"grace_seconds": 600},
        headers=auth(account_key),
    )
    new_token = reset.json()["token"]

    response = client.delete(f"{STREAMS}/{stream['id']}", headers=auth(account_key))

    assert response.status_code == 204
    assert response.content == b""
    gone = client.get(f"{STREAMS}/{stream['id']}", headers=auth(account_key))
    assert error_of(gone, 404)["code"] == "not_found"
    assert error_of(send(client, stream["token"]), 401)["code"] == "invalid_token"
    assert error_of(send(client, new_token), 401)["code"] == "invalid_token"
    assert stream["id"] not in [item["id"] for item in listing(client, account_key)["items"]]
    history = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key))
    assert history.status_code == 200, history.text
    assert history.json()["message_id"] == message_id
    assert history.json()["internal_id"] == "before-delete"
    assert [event["status"] for event in history.json()["history"]][0] == "queued"


def test_a_deleted_stream_answers_404_everywhere(client, account_key, make_stream):
    stream = make_stream()
    assert client.delete(f"{STREAMS}/{stream['id']}", headers=auth(account_key)).status_code == 204
    routes = [
        ("GET", "", None),
        ("PATCH", "", {"name": "Back from the dead"}),
        ("DELETE", "", None),
        ("GET", "/token", None),
        ("POST", "/token/reset", None),
        ("POST", "/enable", None),
        ("POST", "/restrict", {"reason": "KYC"}),
        ("PUT", "/settings", {}),
        ("POST", "/test", {"recipient_phone": "+972524265292"}),
        ("GET", "/request-api", None),
    ]

    answers = {
        f"{method} {tail}": client.request(
            method, f"{STREAMS}/{stream['id']}{tail}", json=body, headers=auth(account_key)
        )
        for method, tail, body in routes
    }

    assert {route: r.status_code for route, r in answers.items()} == dict.fromkeys(answers, 404)
    assert {r.json()["error"]["code"] for r in answers.values()} == {"not_found"}
    assert error_of(send(client, stream["token"]), 401)["code"] == "invalid_token"


def test_delete_twice_is_404(client, account_key, make_stream):
    stream = make_stream()
    assert client.delete(f"{STREAMS}/{stream['id']}", headers=auth(account_key)).status_code == 204

    again = client.delete(f"{STREAMS}/{stream['id']}", headers=auth(account_key))

    assert error_of(again, 404)["code"] == "not_found"


# ---------------------------------------------------------------- token


def test_show_token_opens_the_stream(client, account_key, make_stream):
    stream = make_stream()

    shown = client.get(f"{STREAMS}/{stream['id']}/token", headers=auth(account_key))

    assert shown.status_code == 200
    assert shown.json() == {"token": stream["token"]}
    assert send(client, shown.json()["token"]).status_code == 202


def test_reset_token_retires_the_old_one_at_once(client, account_key, make_stream):
    stream = make_stream()
    assert send(client, stream["token"]).status_code == 202  # the old token is now cached

    response = client.post(f"{STREAMS}/{stream['id']}/token/reset", headers=auth(account_key))

    assert response.status_code == 200, response.text
    new_token = response.json()["token"]
    assert new_token != stream["token"]
    assert send(client, new_token).status_code == 202
    assert error_of(send(client, stream["token"]), 401)["code"] == "invalid_token"
    shown = client.get(f"{STREAMS}/{stream['id']}/token", headers=auth(account_key))
    assert shown.json() == {"token": new_token}


def test_reset_token_with_grace_keeps_both_working(client, account_key, make_stream):
    stream = make_stream()

    response = client.post(
        f"{STREAMS}/{stream['id']}/token/reset",
        json={"grace_seconds": 60},
        headers=auth(account_key),
    )

    assert response.status_code == 200, response.text
    new_token = response.json()["token"]
    assert new_token != stream["token"]
    assert send(client, new_token).status_code == 202
    assert send(client, stream["token"]).status_code == 202


def test_reset_token_grace_ends(client, runtime, account_key, make_stream):
    stream = make_stream()
    response = client.post(
        f"{STREAMS}/{stream['id']}/token/reset",
        json={"grace_seconds": 60},
        headers=auth(account_key),
    )
    new_token = response.json()["token"]
    started = runtime.clock()
    runtime.clock = lambda: started + timedelta(seconds=61)

    assert error_of(send(client, stream["token"]), 401)["code"] == "invalid_token"
    assert send(client, new_token).status_code == 202


@pytest.mark.parametrize("body", [{"grace_seconds": -1}, {"grace_seconds": "soon"}, {"grace": 5}])
def test_reset_token_rejects_a_bad_body_and_keeps_the_token(client, account_key, make_stream, body):
    stream = make_stream()

    response = client.post(
        f"{STREAMS}/{stream['id']}/token/reset", json=body, headers=auth(account_key)
    )

    assert error_of(response, 422)["field"] in ("grace_seconds", "grace")
    assert send(client, stream["token"]).status_code == 202


# ---------------------------------------------------------------- disable, restrict


def test_disable_pauses_sends_and_enable_resumes(client, account_key, make_stream):
    stream = make_stream()
    assert send(client, stream["token"]).status_code == 202

    disabled = client.post(f"{STREAMS}/{stream['id']}/disable", headers=auth(account_key))

    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["status"] == "disabled"
    assert error_of(send(client, stream["token"]), 403)["code"] == "stream_disabled"

    enabled = client.post(f"{STREAMS}/{stream['id']}/enable", headers=auth(account_key))

    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["status"] in ("ready", "sending")
    assert send(client, stream["token"]).status_code == 202


def test_restrict_holds_sends_with_a_reason_and_unrestrict_releases(
    client, account_key, make_stream
):
    stream = make_stream()

    restricted = client.post(
        f"{STREAMS}/{stream['id']}/restrict",
        json={"reason": "Carrier complaint under review"},
        headers=auth(account_key),
    )

    assert restricted.status_code == 200, restricted.text
    shown = stream_of(client, account_key, stream["id"])
    assert shown["status"] == "restricted"
    assert shown["restricted_reason"] == "Carrier complaint under review"
    assert error_of(send(client, stream["token"]), 403)["code"] == "stream_restricted"

    released = client.post(f"{STREAMS}/{stream['id']}/unrestrict", headers=auth(account_key))

    assert released.status_code == 200, released.text
    assert released.json()["status"] == "ready"
    assert released.json()["restricted_reason"] is None
    assert send(client, stream["token"]).status_code == 202


def test_enable_returns_an_incomplete_stream_to_draft(client, account_key, make_stream):
    stream = make_stream(default_sender=None)
    disabled = client.post(f"{STREAMS}/{stream['id']}/disable", headers=auth(account_key))
    assert disabled.json()["status"] == "disabled"

    enabled = client.post(f"{STREAMS}/{stream['id']}/enable", headers=auth(account_key))

    assert enabled.json()["status"] == "draft"
    assert error_of(send(client, stream["token"]), 409)["code"] == "stream_draft"


def test_enable_does_not_lift_an_operator_restriction(client, account_key, make_stream):
    stream = make_stream()
    client.post(f"{STREAMS}/{stream['id']}/disable", headers=auth(account_key))
    client.post(
        f"{STREAMS}/{stream['id']}/restrict", json={"reason": "KYC"}, headers=auth(account_key)
    )

    enabled = client.post(f"{STREAMS}/{stream['id']}/enable", headers=auth(account_key))

    assert enabled.json()["status"] == "restricted"
    assert error_of(send(client, stream["token"]), 403)["code"] == "stream_restricted"


@pytest.mark.parametrize("body", [{}, {"reason": ""}, None], ids=["no-reason", "empty", "no-body"])
def test_restrict_without_reason_is_422_and_changes_nothing(client, account_key, make_stream, body):
    stream = make_stream()

    response = client.post(
        f"{STREAMS}/{stream['id']}/restrict", json=body, headers=auth(account_key)
    )

    error = error_of(response, 422)
    if body is not None:
        assert error["field"] == "reason"
    assert stream_of(client, account_key, stream["id"])["status"] == "ready"
    assert send(client, stream["token"]).status_code == 202


# ---------------------------------------------------------------- settings


def test_settings_put_replaces_and_get_reads_back(client, account_key, make_stream):
    stream = make_stream(type="marketing", settings={"max_per_day": 1000})
    url = f"{STREAMS}/{stream['id']}/settings"
    new = {"max_per_second": 50, "quiet_hours": {"start": "10:00", "end": "18:00"}}

    put = client.put(url, json=new, headers=auth(account_key))

    assert put.status_code == 200, put.text
    got = client.get(url, headers=auth(account_key))
    assert got.status_code == 200
    assert got.json() == put.json()
    assert got.json()["max_per_second"] == 50
    assert got.json()["quiet_hours"]["start"] == "10:00"
    assert "max_per_day" not in got.json()
    assert stream_of(client, account_key, stream["id"])["settings"] == got.json()


def test_quiet_hours_read_back_with_their_timezone_key(client, make_stream, account_key):
    """API.md, Settings fields: ``quiet_hours`` (``{"start": "09:00", "end": "20:00",
    "timezone": null}``).

    A stream created with exactly the documented window reads it back whole, on ``GET
    /settings`` and in the stream's ``settings``: ``timezone`` is there as ``null`` (the
    recipient's zone), not left out by a dump that drops unset settings."""
    window = {"start": "09:00", "end": "20:00", "timezone": None}
    stream = make_stream(type="marketing", settings={"quiet_hours": window})
    shown = client.get(f"{STREAMS}/{stream['id']}/settings", headers=auth(account_key))
    assert shown.json()["quiet_hours"] == window
    assert stream_of(client, account_key, stream["id"])["settings"]["quiet_hours"] == window


def test_settings_put_fills_otp_defaults(client, account_key, make_stream):
    stream = make_stream(type="otp")

    put = client.put(
        f"{STREAMS}/{stream['id']}/settings",
        json={"code_length": 6, "template": "{code} is your Acme code"},
        headers=auth(account_key),
    )

    assert put.status_code == 200, put.text
    assert put.json()["code_length"] == 6
    assert put.json()["template"] == "{code} is your Acme code"
    assert put.json()["ttl_seconds"] > 0


def test_settings_put_without_callback_turns_two_way_into_draft(client, account_key, make_stream):
    stream = make_stream(type="two_way", settings=CALLBACK)
    assert stream["status"] == "ready"

    put = client.put(f"{STREAMS}/{stream['id']}/settings", json={}, headers=auth(account_key))

    assert put.status_code == 200, put.text
    shown = stream_of(client, account_key, stream["id"])
    assert (shown["status"], shown["missing_steps"]) == ("draft", ["settings.callback_url"])
    assert error_of(send(client, stream["token"]), 409)["code"] == "stream_draft"


@pytest.mark.parametrize(
    ("stream_type", "body", "key"),
    [
        ("marketing", {"code_length": 6}, "code_length"),
        ("otp", {"template": "Your code is ready"}, "template"),
        ("otp", {"code_length": 2}, "code_length"),
        ("transactional", {"max_per_second": 0}, "max_per_second"),
        ("marketing", {"quiet_hours": {"start": "25:00", "end": "20:00"}}, "quiet_hours.start"),
        ("marketing", {"quiet_hours": {"start": "09:00", "end": "09:00"}}, "quiet_hours.end"),
        ("marketing", {"quiet_hours": "09:00-20:00"}, "quiet_hours"),
        ("marketing", {"quiet_hours": []}, "quiet_hours"),
        ("transactional", {"callback_url": "https://hooks.example.com"}, "callback_url"),
        ("marketing", {"colour": "blue"}, "colour"),
    ],
)
def test_settings_put_validates_like_create(
    client, account_key, make_stream, stream_type, body, key
):
    """The field may be named relative to the body (``template``) or to the stream
    (``settings.template``); the contract leaves that open, but the field must be named."""
    stream = make_stream(type=stream_type)
    url = f"{STREAMS}/{stream['id']}/settings"
    before = client.get(url, headers=auth(account_key)).json()

    error = error_of(client.put(url, json=body, headers=auth(account_key)), 422)

    assert error["field"] in (key, f"settings.{key}")
    assert client.get(url, headers=auth(account_key)).json() == before


def test_a_body_that_is_not_an_object_and_a_field_that_is_not_are_told_apart(
    client, account_key, make_stream
):
    stream = make_stream(type="marketing")
    patched = client.patch(
        f"{STREAMS}/{stream['id']}",
        json={"settings": {"quiet_hours": "09:00-20:00"}},
        headers=auth(account_key),
    )
    error = error_of(patched, 422)
    assert (error["field"], error["message"]) == (
        "settings.quiet_hours",
        "settings.quiet_hours: must be a JSON object",
    )
    put = client.put(f"{STREAMS}/{stream['id']}/settings", json=[1], headers=auth(account_key))
    assert error_of(put, 422)["message"] == "The body must be a JSON object."


# ---------------------------------------------------------------- test send, request-api


def test_test_send_queues_one_message(client, account_key, make_stream):
    stream = make_stream()

    response = client.post(
        f"{STREAMS}/{stream['id']}/test",
        json={"recipient_phone": "+972524265292"},
        headers=auth(account_key),
    )

    assert response.status_code == 202, response.text
    message_id = response.json()["message_id"]
    stored = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key))
    assert stored.status_code == 200, stored.text
    assert stored.json()["stream_id"] == stream["id"]
    assert stored.json()["recipient_phone"] == "+972524265292"
    assert stored.json()["status"] == "queued"


@pytest.mark.parametrize("phone", ["0524265292", "+1555"])
def test_test_send_rejects_a_bad_phone(client, account_key, make_stream, phone):
    stream = make_stream()

    response = client.post(
        f"{STREAMS}/{stream['id']}/test", json={"recipient_phone": phone}, headers=auth(account_key)
    )

    assert error_of(response, 422)["field"] == "recipient_phone"


def test_test_send_on_a_draft_stream_is_409(client, account_key, make_stream):
    stream = make_stream(default_sender=None)

    response = client.post(
        f"{STREAMS}/{stream['id']}/test",
        json={"recipient_phone": "+972524265292"},
        headers=auth(account_key),
    )

    assert error_of(response, 409)["code"] == "stream_draft"


@pytest.mark.parametrize(
    ("action", "body", "code"),
    [("disable", None, "stream_disabled"), ("restrict", {"reason": "KYC"}, "stream_restricted")],
)
def test_test_send_on_a_held_stream_is_403(client, account_key, make_stream, action, body, code):
    stream = make_stream()
    client.post(f"{STREAMS}/{stream['id']}/{action}", json=body, headers=auth(account_key))

    response = client.post(
        f"{STREAMS}/{stream['id']}/test",
        json={"recipient_phone": "+972524265292"},
        headers=auth(account_key),
    )

    assert error_of(response, 403)["code"] == code


@pytest.mark.parametrize(
    ("stream_type", "fields"),
    [
        ("marketing", {}),
        ("transactional", {}),
        ("otp", {}),
        ("two_way", {"settings": CALLBACK}),
        ("whatsapp", {"demo": True}),
    ],
    ids=["marketing", "transactional", "otp", "two_way", "whatsapp"],
)
def test_request_api_gives_a_body_the_send_api_accepts(
    client, account_key, make_stream, stream_type, fields
):
    stream = make_stream(type=stream_type, **fields)

    response = client.get(f"{STREAMS}/{stream['id']}/request-api", headers=auth(account_key))

    assert response.status_code == 200, response.text
    example = response.json()
    assert example["endpoint"].endswith("/v1/messages")
    assert example["body"]["messages"][0]["recipient_phone"]
    sent = client.post("/v1/messages", json=example["body"], headers=auth(stream["token"]))
    assert sent.status_code == 202, sent.text
    assert sent.json()["accepted"] == 1


# ---------------------------------------------------------------- account key


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-real-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "wrong", "basic", "empty"],
)
def test_a_missing_or_wrong_account_key_is_401(client, account_key, make_stream, headers):
    stream = make_stream()
    routes = [
        ("GET", STREAMS, None),
        ("POST", STREAMS, {"name": "Orders", "type": "transactional"}),
        ("GET", f"{STREAMS}/{stream['id']}", None),
        ("POST", f"{STREAMS}/{stream['id']}/disable", None),
        ("DELETE", f"{STREAMS}/{stream['id']}", None),
        ("GET", f"/api/v1/messages/{uuid.uuid4()}", None),
    ]

    answers = {
        f"{method} {path}": client.request(method, path, json=body, headers=headers)
        for method, path, body in routes
    }

    assert {route: r.status_code for route, r in answers.items()} == dict.fromkeys(answers, 401)
    assert {r.json()["error"]["code"] for r in answers.values()} == {"invalid_key"}
    assert stream_of(client, account_key, stream["id"]) == {
        k: v for k, v in stream.items() if k != "token"
    }
    assert listing(client, account_key)["total"] == 1


def test_a_stream_token_is_not_an_account_key(client, make_stream):
    stream = make_stream()

    response = client.get(f"{STREAMS}/{stream['id']}", headers=auth(stream["token"]))

    assert error_of(response, 401)["code"] == "invalid_key"


@pytest.mark.parametrize("how", ["create", "patch", "put"])
def test_a_window_that_closes_when_it_opens_is_refused_on_every_path(
    client, account_key, make_stream, how
):
    """``{"start": "20:00"}`` leaves ``end`` at its default, 20:00: a PATCH stored it (open
    all day), and a create or PUT, which check the settings twice, answered 500."""
    window = {"quiet_hours": {"start": "20:00"}}
    if how == "create":
        body = {"name": "Promo", "type": "marketing", "settings": window}
        answer = client.post(STREAMS, json=body, headers=auth(account_key))
    else:
        stream = make_stream(type="marketing")
        if how == "patch":
            url, body = f"{STREAMS}/{stream['id']}", {"settings": window}
            answer = client.patch(url, json=body, headers=auth(account_key))
        else:
            url = f"{STREAMS}/{stream['id']}/settings"
            answer = client.put(url, json=window, headers=auth(account_key))
        stored = client.get(f"{STREAMS}/{stream['id']}/settings", headers=auth(account_key))
        assert "quiet_hours" not in stored.json()
    assert error_of(answer, 422)["field"] in ("quiet_hours.end", "settings.quiet_hours.end")


def test_a_window_saved_before_it_was_refused_is_named_on_the_next_change(
    client, runtime, account_key, make_stream
):
    """A stream saved with 09:00-09:00 keeps it until its settings change; then the merged
    settings are checked again, and the answer names the window (it was a 500)."""
    stream = make_stream(type="marketing")
    with runtime.session_factory() as session:
        session.execute(
            update(Stream)
            .where(Stream.id == uuid.UUID(stream["id"]))
            .values(settings={"quiet_hours": {"start": "09:00", "end": "09:00"}})
        )
        session.commit()
    answer = client.patch(
        f"{STREAMS}/{stream['id']}",
        json={"settings": {"max_per_day": 1000}},
        headers=auth(account_key),
    )
    error = error_of(answer, 422)
    assert error["field"] == "settings.quiet_hours.end"
    assert error["message"].startswith("settings.quiet_hours.end: must differ from start")
    stored = client.get(f"{STREAMS}/{stream['id']}/settings", headers=auth(account_key))
    assert "max_per_day" not in stored.json(), "a refused change changes nothing"

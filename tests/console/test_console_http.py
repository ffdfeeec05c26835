"""The console without a browser: sessions, CSRF, cookie flags, errors next to their fields,
and the account wall, through FastAPI's TestClient against real PostgreSQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.accounts import rotate_account_key
from core.runtime import Runtime
from dispatcher.app import create_app
from dispatcher.console.csrf import SIGN_IN_COOKIE
from dispatcher.console.sessions import COOKIE_NAME

PROXY = "10.0.0.5"


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


def sign_in(client: TestClient, key: str) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    form = client.get("/console/signin")
    assert form.status_code == 200
    answer = client.post(
        "/console/signin",
        data={"account_key": key, "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console/streams"
    return csrf_of(client.get("/console/streams").text)


def errors_of(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-error-for="([^"]+)">([^<]+)<', page))


def set_cookie_header(response: Any, name: str) -> SimpleCookie:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(header)
            return cookie
    raise AssertionError(f"no {name} cookie set")


@pytest.fixture
def console(client_from: Callable[[str], TestClient], account_key: str) -> tuple[TestClient, str]:
    client = client_from("203.0.113.10")
    return client, sign_in(client, account_key)


def test_pages_need_a_session(client: TestClient) -> None:
    page = client.get("/console/streams", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/console/signin"
    fragment = client.get("/console/streams/table", headers={"HX-Request": "true"})
    assert fragment.status_code == 401
    assert fragment.headers["HX-Redirect"] == "/console/signin"


def test_a_wrong_key_is_refused_next_to_its_field(client: TestClient) -> None:
    form = client.get("/console/signin")
    answer = client.post(
        "/console/signin", data={"account_key": "sk_wrong", "csrf_token": csrf_of(form.text)}
    )
    assert answer.status_code == 401
    assert errors_of(answer.text) == {"account_key": "This account key is not valid."}
    assert COOKIE_NAME not in client.cookies


def test_session_cookie_flags_over_plain_http(client: TestClient, account_key: str) -> None:
    form = client.get("/console/signin")
    answer = client.post(
        "/console/signin",
        data={"account_key": account_key, "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    morsel = set_cookie_header(answer, COOKIE_NAME)[COOKIE_NAME]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "lax"
    assert morsel["path"] == "/console"
    assert not morsel["secure"]  # plain HTTP: a Secure cookie would never come back
    assert account_key not in answer.headers.get("set-cookie", "")


def test_session_cookie_is_secure_behind_a_trusted_tls_proxy(
    settings: Any, runtime: Runtime, account_key: str
) -> None:
    app = create_app(
        settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]}), runtime=runtime
    )
    with TestClient(app, client=(PROXY, 40000)) as behind_proxy:
        form = behind_proxy.get("/console/signin", headers={"X-Forwarded-Proto": "https"})
        sign_in_cookie = set_cookie_header(form, SIGN_IN_COOKIE)[SIGN_IN_COOKIE]
        assert sign_in_cookie["secure"] is True
        # The test client speaks plain HTTP to the app, so it holds back Secure cookies; the
        # browser behind the TLS proxy would send it.
        behind_proxy.cookies.set(SIGN_IN_COOKIE, sign_in_cookie.value, path="/console")
        answer = behind_proxy.post(
            "/console/signin",
            data={"account_key": account_key, "csrf_token": csrf_of(form.text)},
            headers={"X-Forwarded-Proto": "https"},
            follow_redirects=False,
        )
    assert set_cookie_header(answer, COOKIE_NAME)[COOKIE_NAME]["secure"] is True


def test_forwarded_proto_from_an_untrusted_peer_is_ignored(
    client: TestClient, account_key: str
) -> None:
    form = client.get("/console/signin")
    answer = client.post(
        "/console/signin",
        data={"account_key": account_key, "csrf_token": csrf_of(form.text)},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert not set_cookie_header(answer, COOKIE_NAME)[COOKIE_NAME]["secure"]


def test_sign_in_form_without_its_token_is_refused(client: TestClient, account_key: str) -> None:
    client.get("/console/signin")
    answer = client.post("/console/signin", data={"account_key": account_key})
    assert answer.status_code == 403
    assert "security token" in answer.text
    assert COOKIE_NAME not in client.cookies


def test_a_form_without_the_csrf_token_is_refused_and_changes_nothing(
    console: tuple[TestClient, str], make_stream: Callable[..., dict[str, Any]]
) -> None:
    client, csrf = console
    stream = make_stream(name="Kept")
    for headers, data in (
        ({}, {}),  # a plain form post from elsewhere
        ({}, {"csrf_token": "forged"}),
        ({"X-CSRF-Token": "forged", "HX-Request": "true"}, {}),
    ):
        answer = client.post(f"/console/streams/{stream['id']}/delete", data=data, headers=headers)
        assert answer.status_code == 403
        assert "security token is missing or wrong" in answer.text
    created = client.post("/console/streams/new/marketing", data={"name": "Forged"})
    assert created.status_code == 403
    table = client.get("/console/streams").text
    assert "Kept" in table and "Forged" not in table
    # The right token goes through.
    done = client.post(f"/console/streams/{stream['id']}/delete", headers={"X-CSRF-Token": csrf})
    assert done.status_code == 200


def test_sign_out_ends_the_session_for_every_copy_of_the_cookie(
    console: tuple[TestClient, str], client_from: Callable[[str], TestClient]
) -> None:
    client, csrf = console
    stolen = client_from("198.51.100.9")
    stolen.cookies.set(COOKIE_NAME, client.cookies[COOKIE_NAME], path="/console")
    assert stolen.get("/console/streams", follow_redirects=False).status_code == 200
    out = client.post("/console/signout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert out.headers["location"] == "/console/signin"
    assert stolen.get("/console/streams", follow_redirects=False).status_code == 303


def test_sign_out_needs_the_csrf_token(console: tuple[TestClient, str]) -> None:
    client, _ = console
    assert client.post("/console/signout", data={}).status_code == 403
    assert client.get("/console/streams", follow_redirects=False).status_code == 200


def test_a_session_expires(console: tuple[TestClient, str], clock: Any, settings: Any) -> None:
    client, _ = console
    clock.advance(settings.console_session_hours * 3600 - 60)
    assert client.get("/console/streams", follow_redirects=False).status_code == 200
    clock.advance(61)
    assert client.get("/console/streams", follow_redirects=False).status_code == 303


@pytest.fixture
def clock(runtime: Runtime) -> Any:
    from datetime import UTC, datetime

    from tests.processes import MovableClock

    movable = MovableClock(datetime.now(UTC).replace(microsecond=0))
    runtime.clock = movable
    return movable


def test_rotating_the_account_key_ends_its_sessions(
    console: tuple[TestClient, str], runtime: Runtime
) -> None:
    client, _ = console
    from schemas.tables import Account

    with runtime.session_factory() as session:
        account_id = session.query(Account.id).scalar()
    rotate_account_key(runtime.session_factory, account_id)
    assert client.get("/console/streams", follow_redirects=False).status_code == 303


def test_api_errors_show_next_to_their_fields(console: tuple[TestClient, str]) -> None:
    client, csrf = console
    answer = client.post(
        "/console/streams/new/otp",
        data={
            "csrf_token": csrf,
            "name": "Codes",
            "allowed_ips": "203.0.113.0/24, 300.1.1.1",
            "default_sender": "Way too long a sender",
            "settings.template": "no placeholder here",
        },
    )
    assert answer.status_code == 422
    errors = errors_of(answer.text)
    assert errors["settings.template"] == "settings.template: must contain the {code} placeholder"
    assert "Codes" in answer.text  # what was typed stays in the form
    assert 'data-first-error-step="codes"' in answer.text  # the form opens on that step
    # One error at a time from the API's own checks, each next to its field.
    answer = client.post(
        "/console/streams/new/otp",
        data={"csrf_token": csrf, "name": "Codes", "allowed_ips": "300.1.1.1"},
    )
    assert errors_of(answer.text) == {
        "allowed_ips": "&#39;300.1.1.1&#39; is not an IPv4 or IPv6 address or CIDR"
    }
    answer = client.post(
        "/console/streams/new/otp",
        data={"csrf_token": csrf, "name": "Codes", "default_sender": "Way too long a sender"},
    )
    assert list(errors_of(answer.text)) == ["default_sender"]
    assert "No streams match" in client.get("/console/streams").text  # nothing stored


def test_panel_errors_show_next_to_their_fields(
    console: tuple[TestClient, str], make_stream: Callable[..., dict[str, Any]]
) -> None:
    client, csrf = console
    stream = make_stream(name="Orders")
    headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    answer = client.post(
        f"/console/streams/{stream['id']}/panel/settings",
        data={"settings.max_per_second": "0", "settings.max_per_day": ""},
        headers=headers,
    )
    assert answer.status_code == 422
    assert errors_of(answer.text) == {
        "settings.max_per_second": "settings.max_per_second: Input should be greater than or "
        "equal to 1"
    }
    answer = client.post(
        f"/console/streams/{stream['id']}/test", data={"recipient_phone": "12"}, headers=headers
    )
    assert answer.status_code == 422
    assert "recipient_phone" in errors_of(answer.text)
    draft = make_stream(name="Unfinished", type="otp", default_sender=None)
    answer = client.post(
        f"/console/streams/{draft['id']}/test",
        data={"recipient_phone": "+972524265292"},
        headers=headers,
    )
    assert answer.status_code == 422
    assert (
        'role="alert">The stream&#39;s set-up is not complete; see missing_steps.</div>'
        in answer.text
    )


def test_one_account_never_sees_or_touches_anothers_streams(
    console: tuple[TestClient, str],
    make_stream: Callable[..., dict[str, Any]],
    other_account_key: str,
    client: TestClient,
) -> None:
    own_client, csrf = console
    foreign = make_stream(key=other_account_key, name="Globex secret stream")
    assert "Globex secret stream" not in own_client.get("/console/streams").text
    headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    for path in (
        "token",
        "test",
        "reset-token",
        "restrict",
        "delete",
        "panel",
        "panel?tab=request",
    ):
        answer = own_client.get(f"/console/streams/{foreign['id']}/{path}", headers=headers)
        assert answer.status_code == 404, path
        assert foreign["token"] not in answer.text
    for path in ("delete", "disable", "reset-token", "panel/info"):
        answer = own_client.post(
            f"/console/streams/{foreign['id']}/{path}", data={"name": "Mine now"}, headers=headers
        )
        assert answer.status_code == 404, path
    assert (
        own_client.get(f"/console/streams/{uuid.uuid4()}/token", headers=headers).status_code == 404
    )
    still = client.get(
        f"/api/v1/streams/{foreign['id']}", headers={"Authorization": f"Bearer {other_account_key}"}
    ).json()
    assert still["name"] == "Globex secret stream" and still["status"] == "ready"
    token = client.get(
        f"/api/v1/streams/{foreign['id']}/token",
        headers={"Authorization": f"Bearer {other_account_key}"},
    ).json()["token"]
    assert token == foreign["token"]


def test_not_found_is_a_page_on_the_console_and_json_on_the_api(
    console: tuple[TestClient, str], account_key: str
) -> None:
    client, _ = console
    page = client.get(f"/console/streams/{uuid.uuid4()}/token")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "No such stream." in page.text
    api = client.get(
        f"/api/v1/streams/{uuid.uuid4()}/token", headers={"Authorization": f"Bearer {account_key}"}
    )
    assert api.json() == {"error": {"code": "not_found", "message": "No such stream."}}


def test_panel_tabs_change_the_stream_through_the_api(
    console: tuple[TestClient, str], make_stream: Callable[..., dict[str, Any]], account_key: str
) -> None:
    client, csrf = console
    headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    orders = make_stream(name="Orders")
    base = f"/console/streams/{orders['id']}/panel"
    event = {"event.key": "order_shipped", "event.name": "Shipped", "event.template": "Hi {name}"}
    added = client.post(f"{base}/events", data=event, headers=headers)
    assert added.status_code == 200 and "Event order_shipped added." in added.text
    again = client.post(f"{base}/events", data=event, headers=headers)
    assert again.status_code == 422
    assert errors_of(again.text) == {
        "event.key": "The stream already has an event with key &#39;order_shipped&#39;."
    }
    api_events = client.get(
        f"/api/v1/streams/{orders['id']}/events", headers={"Authorization": f"Bearer {account_key}"}
    ).json()["items"]
    assert [e["key"] for e in api_events] == ["order_shipped"]
    form = client.get(f"{base}?tab=events&edit=order_shipped", headers=headers)
    assert "Edit event" in form.text and "Hi {name}" in form.text
    broken = client.post(
        f"{base}/events/order_shipped",
        data={"event.name": "Shipped", "event.template": "Hi {name"},
        headers=headers,
    )
    assert broken.status_code == 422 and "event.template" in errors_of(broken.text)
    changed = client.post(
        f"{base}/events/order_shipped",
        data={"event.name": "Shipped today", "event.template": "Hello {name}"},
        headers=headers,
    )
    assert "Event order_shipped saved." in changed.text
    (api_event,) = client.get(
        f"/api/v1/streams/{orders['id']}/events",
        headers={"Authorization": f"Bearer {account_key}"},
    ).json()["items"]
    assert (api_event["name"], api_event["template"]) == ("Shipped today", "Hello {name}")
    gone = client.post(f"{base}/events/order_shipped/delete", headers=headers)
    assert "No event templates yet." in gone.text
    # A stale row (deleted meanwhile elsewhere): the tab says so and drops it; a bare 404
    # left it on screen with nothing said, since htmx swaps no error answer.
    again = client.post(f"{base}/events/order_shipped/delete", headers=headers)
    assert again.status_code == 200
    assert "Event order_shipped was already deleted." in again.text

    care = make_stream(name="Care", type="whatsapp")
    base = f"/console/streams/{care['id']}/panel"
    saved = client.post(
        f"{base}/whatsapp",
        data={"whatsapp.phone_number_id": "1065403522", "whatsapp.access_token": "EAAGtoken9876"},
        headers=headers,
    )
    assert "WhatsApp set-up saved." in saved.text and "Stored: …9876" in saved.text
    assert 'badge status-ready">Ready' in saved.text
    # An untouched token input keeps the stored token.
    kept = client.post(
        f"{base}/whatsapp",
        data={"whatsapp.phone_number_id": "1065403522", "whatsapp.access_token": ""},
        headers=headers,
    )
    assert "Stored: …9876" in kept.text
    bad = client.post(
        f"{base}/whatsapp/templates",
        data={"template.name": "Bad Name", "template.language": "en", "template.body": "Hi"},
        headers=headers,
    )
    assert bad.status_code == 422 and "template.name" in errors_of(bad.text)
    added = client.post(
        f"{base}/whatsapp/templates",
        data={
            "template.name": "order_update",
            "template.language": "en",
            "template.category": "utility",
            "template.body": "Hi {{1}}",
        },
        headers=headers,
    )
    assert "Template order_update added." in added.text
    (template,) = client.get(
        f"/api/v1/streams/{care['id']}/whatsapp/templates",
        headers={"Authorization": f"Bearer {account_key}"},
    ).json()
    assert f"/whatsapp/templates/{template['id']}/delete" in added.text
    removed = client.post(f"{base}/whatsapp/templates/{template['id']}/delete", headers=headers)
    assert "Template removed." in removed.text and "No templates registered." in removed.text
    stale = client.post(f"{base}/whatsapp/templates/{template['id']}/delete", headers=headers)
    assert stale.status_code == 200
    assert "That template was already removed." in stale.text
    assert "No templates registered." in stale.text
    elsewhere = f"/console/streams/{uuid.uuid4()}/panel/whatsapp/templates/{template['id']}"
    assert client.post(f"{elsewhere}/delete", headers=headers).status_code == 404

    refused = client.post(
        f"/console/streams/{orders['id']}/restrict", data={"reason": ""}, headers=headers
    )
    assert refused.status_code == 422 and "reason" in errors_of(refused.text)
    held = client.post(
        f"/console/streams/{orders['id']}/restrict", data={"reason": "KYC"}, headers=headers
    )
    assert held.status_code == 200 and held.headers["HX-Trigger"] == "streams-changed"
    view = client.get(
        f"/api/v1/streams/{orders['id']}", headers={"Authorization": f"Bearer {account_key}"}
    ).json()
    assert view["status"] == "restricted" and view["restricted_reason"] == "KYC"
    client.post(f"/console/streams/{orders['id']}/unrestrict", headers=headers)
    view = client.get(
        f"/api/v1/streams/{orders['id']}", headers={"Authorization": f"Bearer {account_key}"}
    ).json()
    assert view["status"] == "ready"


def test_a_malformed_panel_id_is_refused_by_name_and_not_echoed(
    console: tuple[TestClient, str], make_stream: Callable[..., dict[str, Any]]
) -> None:
    client, _ = console
    orders = make_stream(name="Orders")
    opened = client.get("/console/streams", params={"panel": orders["id"]})
    assert opened.status_code == 200
    assert f'hx-get="/console/streams/{orders["id"]}/panel"' in opened.text
    for malformed in ('"><script>alert(1)</script>', "../../api/v1/streams", "12345"):
        answer = client.get("/console/streams", params={"panel": malformed})
        assert answer.status_code == 422, malformed
        assert answer.headers["content-type"].startswith("text/html")
        assert "panel: Input should be a valid UUID" in answer.text
        for echoed in ("/panel", "alert(", "../", "12345"):
            assert echoed not in answer.text, malformed
        modal = client.get(
            "/console/streams", params={"panel": malformed}, headers={"HX-Request": "true"}
        )
        assert modal.status_code == 422 and modal.headers["HX-Retarget"] == "#modal"
    # The same page for every bad query parameter of the console, where it was JSON before.
    paged = client.get("/console/streams", params={"page": "0"})
    assert paged.status_code == 422 and paged.headers["content-type"].startswith("text/html")
    assert "page: Input should be greater than or equal to 1" in paged.text


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/console/streams/table", {"name": "a\x00"}),
        ("/console/streams/table", {"tag": "a\x00"}),
        ("/console/realtime/feed", {"name": "a\x00"}),
        ("/console/realtime/feed", {"tag": "a\x00"}),
    ],
)
def test_a_nul_in_a_filter_is_refused_by_name(
    console: tuple[TestClient, str], path: str, params: dict[str, str]
) -> None:
    """The console's filters take the API's query checks: a NUL is a 422 naming the filter,
    before the table's query or the feed runs."""
    client, _ = console
    answer = client.get(path, params=params)
    assert answer.status_code == 422, answer.text
    (name,) = params
    assert re.search(rf"{name}(\[0\])?: may not contain [^<]*U\+0000", answer.text), answer.text


def test_console_responses_that_show_secrets_are_never_stored(
    console: tuple[TestClient, str],
    make_stream: Callable[..., dict[str, Any]],
    client: TestClient,
    account_key: str,
) -> None:
    own_client, csrf = console
    orders = make_stream(name="Orders")
    headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    shown = own_client.get(f"/console/streams/{orders['id']}/token", headers=headers)
    assert orders["token"] in shown.text
    assert shown.headers["cache-control"] == "no-store"
    reset = own_client.post(f"/console/streams/{orders['id']}/reset-token", headers=headers)
    new_token = client.get(
        f"/api/v1/streams/{orders['id']}/token", headers={"Authorization": f"Bearer {account_key}"}
    ).json()["token"]
    assert new_token in reset.text
    assert reset.headers["cache-control"] == "no-store"
    # Every page carries the session's CSRF token: pages, fragments, errors, redirects alike.
    for path in (
        "/console/streams",
        f"/console/streams/{orders['id']}/panel",
        f"/console/streams/{uuid.uuid4()}/token",
        "/console/streams?page=0",
        "/console",
    ):
        answer = own_client.get(path, follow_redirects=False)
        assert answer.headers["cache-control"] == "no-store", path
    assert client.get("/console/signin").headers["cache-control"] == "no-store"
    # Static assets hold no secret and stay cacheable.
    assert "no-store" not in own_client.get("/console/static/console.css").headers.get(
        "cache-control", ""
    )


def test_no_other_site_may_frame_the_console(
    console: tuple[TestClient, str], make_stream: Callable[..., dict[str, Any]], client: TestClient
) -> None:
    own_client, csrf = console
    orders = make_stream(name="Orders")
    headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    answers = [
        own_client.get("/console/streams"),
        own_client.get(f"/console/streams/{orders['id']}/reset-token", headers=headers),
        own_client.get(f"/console/streams/{orders['id']}/delete", headers=headers),
        own_client.get("/console/realtime"),
        own_client.get(f"/console/streams/{uuid.uuid4()}/panel"),
        client.get("/console/signin"),
    ]
    for answer in answers:
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'", answer.url
        assert answer.headers["x-frame-options"] == "DENY", answer.url

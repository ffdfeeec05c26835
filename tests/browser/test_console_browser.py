"""The console end to end in a real headless Chromium (Debian's, never a downloaded one),
against a real ``streams serve`` and a real worker pool on PostgreSQL and Redis.

One browser, one ingress and one worker pool for the whole module; each test opens its own
browser context (its own cookies)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from core.accounts import create_account
from core.runtime import build_runtime
from tests.conftest import REDIS_URL, _empty_database, base_settings
from tests.processes import ingress, worker_pool

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ALL_QUEUES = "transactional,marketing,otp,two_way,whatsapp"
PHONE = "+972524265292"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


@pytest.fixture(scope="module")
def system(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A clean database and Redis db, two accounts, an ingress and a worker pool."""
    settings = base_settings(database_url)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    runtime = build_runtime(settings)
    _empty_database(runtime)
    _, key = create_account(runtime.session_factory, "Acme")
    _, other_key = create_account(runtime.session_factory, "Globex")
    logs = tmp_path_factory.mktemp("console")
    with (
        ingress(settings, logs / "ingress.log") as base,
        worker_pool(settings, logs / "worker.log", queues=ALL_QUEUES, threads=2),
    ):
        yield {"base": base, "key": key, "other_key": other_key}
    runtime.close()
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def browser(system: dict[str, Any]) -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def api(system: dict[str, Any], method: str, path: str, key: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {key or system['key']}"}
    return httpx.request(method, system["base"] + path, headers=headers, timeout=10, **kw)


def signed_in_page(browser: Any, system: dict[str, Any], key: str | None = None) -> Any:
    context = browser.new_context(base_url=system["base"], viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto("/console/streams")
    expect(page).to_have_url(re.compile(r"/console/signin$"))
    page.fill("input[name=account_key]", key or system["key"])
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/console/streams$"))
    return page


def row(page: Any, name: str) -> Any:
    return page.locator("#streams tbody tr", has=page.locator(".stream-name", has_text=name))


def open_menu(page: Any, name: str) -> Any:
    stream_row = row(page, name)
    stream_row.locator("summary").click()
    return stream_row


def stream_id(page: Any, name: str) -> str:
    return row(page, name).get_attribute("data-stream-id")


def test_sign_in_and_create_a_stream_of_each_type(browser: Any, system: dict[str, Any]) -> None:
    page = signed_in_page(browser, system)
    cookie = next(c for c in page.context.cookies() if c["name"] == "streams_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"]

    def start(stream_type: str) -> None:
        page.goto("/console/streams/new")
        page.click(f"a.type-card[data-type={stream_type}]")
        expect(page.locator("h1")).to_contain_text("New")

    # An API error shows next to its field, and what was typed stays.
    start("marketing")
    page.fill("[name=name]", "Spring sale")
    page.fill("[name=allowed_ips]", "203.0.113.0/24, 10.0.0.999")
    page.click("[data-step=details] button[value=draft]")
    expect(page.locator('[data-error-for="allowed_ips"]')).to_contain_text("10.0.0.999")
    expect(page.locator("[name=name]")).to_have_value("Spring sale")
    # Marketing: details, then the sender step, then create.
    page.fill("[name=allowed_ips]", "203.0.113.0/24")
    page.fill("[name=tags]", "promo, eu")
    page.click("[data-step=details] button:has-text('Next')")
    page.fill("[name=default_sender]", "Acme")
    page.click("[data-step=sender] button:has-text('Next')")
    page.fill("[name='settings.max_per_second']", "50")
    page.click("button[value=create]")
    expect(page.locator("#panel .panel-head h2")).to_have_text("Spring sale")
    expect(page.locator("#panel .panel-head .badge")).to_have_text("Ready")

    # OTP saved as a draft at the first step: the API says what is missing.
    start("otp")
    page.fill("[name=name]", "Login codes")
    page.click("[data-step=details] button[value=draft]")
    expect(page.locator("#panel .panel-head .badge")).to_have_text("Draft")
    expect(page.locator("#panel .panel-head")).to_contain_text("missing default_sender")
    # Its Settings tab holds the OTP code settings; no WhatsApp or Webhooks tab.
    expect(page.locator("#panel .tab")).to_have_text(["Info", "Settings", "Events", "Request API"])
    page.click("#panel .tab:has-text('Settings')")
    expect(page.locator("#panel [name='settings.template']")).to_have_value("Your code is {code}")

    # Transactional on demo sending (the sandbox carrier): ready without a sender.
    start("transactional")
    page.fill("[name=name]", "Order updates")
    page.fill("[name=tags]", "shop")
    page.check("[name=demo]")
    page.click("[data-step=details] button[value=draft]")
    expect(page.locator("#panel .panel-head .badge")).to_have_text("Ready")

    # Two-way: the callbacks step.
    start("two_way")
    page.fill("[name=name]", "Support chat")
    page.click("[data-step=details] button:has-text('Next')")
    page.fill("[name=default_sender]", "Acme")
    page.click("[data-step=sender] button:has-text('Next')")
    page.fill("[name='settings.callback_url']", "https://example.com/hooks/streams")
    page.click("[data-step=callbacks] button[value=draft]")
    expect(page.locator("#panel .panel-head .badge")).to_have_text("Ready")
    page.click("#panel .tab:has-text('Webhooks')")
    expect(page.locator("#webhook-url")).to_contain_text("/webhooks/")
    expect(page.locator("#webhook-url")).to_contain_text("/inbound")

    # WhatsApp: the account step (phone number id and token) makes it ready.
    start("whatsapp")
    page.fill("[name=name]", "WhatsApp care")
    page.click("[data-step=details] button:has-text('Next')")
    page.fill("[name='whatsapp.phone_number_id']", "106540352242922")
    page.fill("[name='whatsapp.access_token']", "EAAG-test-token-1234")
    page.click("[data-step=whatsapp] button[value=draft]")
    expect(page.locator("#panel .panel-head .badge")).to_have_text("Ready")
    expect(page.locator("#panel .tab")).to_have_text(
        ["Info", "Settings", "WhatsApp", "Webhooks", "Request API"]
    )
    page.click("#panel .tab:has-text('WhatsApp')")
    expect(page.locator("#panel [name='whatsapp.access_token']")).to_have_attribute(
        "placeholder", "Stored: …1234"
    )

    listed = api(system, "GET", "/api/v1/streams").json()
    assert {s["name"]: s["type"] for s in listed["items"]} == {
        "Spring sale": "marketing",
        "Login codes": "otp",
        "Order updates": "transactional",
        "Support chat": "two_way",
        "WhatsApp care": "whatsapp",
    }
    page.context.close()


def test_filter_and_paginate(browser: Any, system: dict[str, Any]) -> None:
    for number in range(1, 13):
        created = api(
            system,
            "POST",
            "/api/v1/streams",
            json={"name": f"Bulk {number:02d}", "type": "marketing", "tags": ["bulk"]},
        )
        assert created.status_code == 201
    page = signed_in_page(browser, system)
    total = api(system, "GET", "/api/v1/streams").json()["total"]
    expect(page.locator("#streams-total")).to_have_text(f"{total} streams")
    expect(page.locator("#streams tbody tr")).to_have_count(10)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "streams.png"), full_page=True)

    page.fill("#filters [name=tag]", "bulk")
    expect(page.locator("#streams-total")).to_have_text("12 streams")
    page.click(".pagination a:has-text('2')")
    expect(page.locator("#streams tbody tr")).to_have_count(2)
    expect(page.locator(".pagination .current")).to_have_text("2")
    expect(page).to_have_url(re.compile(r"tag=bulk&page=2"))

    page.fill("#filters [name=tag]", "")
    page.fill("#filters [name=name]", "order")
    expect(page.locator("#streams-total")).to_have_text("1 stream")
    expect(page.locator(".stream-name")).to_have_text(["Order updates"])

    page.fill("#filters [name=name]", "")
    page.select_option("#filters [name=status]", "draft")
    expect(page.locator("#streams-total")).to_have_text("13 streams")  # 12 bulk + the OTP draft
    page.context.close()


def test_show_and_reset_a_token(browser: Any, system: dict[str, Any]) -> None:
    page = signed_in_page(browser, system)
    page.fill("#filters [name=name]", "Order updates")
    expect(page.locator("#streams-total")).to_have_text("1 stream")
    sid = stream_id(page, "Order updates")
    old = api(system, "GET", f"/api/v1/streams/{sid}/token").json()["token"]

    open_menu(page, "Order updates")
    page.click("text=Show token")
    expect(page.locator("#token-value")).to_have_text(old)
    page.click("#modal button.copy")
    expect(page.locator("#modal button.copy")).to_have_text("Copied")
    page.click("#modal .actions button:has-text('Close')")

    open_menu(page, "Order updates")
    page.click("text=Reset token")
    expect(page.locator("#confirm-title")).to_have_text("Reset the token?")
    page.click("#modal button:has-text('Reset token')")
    expect(page.locator("#token-title")).to_contain_text("New token")
    new = page.locator("#token-value").inner_text()
    assert new.startswith("st_") and new != old
    assert api(system, "GET", f"/api/v1/streams/{sid}/token").json()["token"] == new
    send = {"messages": [{"recipient_phone": PHONE, "message_content": "hi"}]}
    refused = httpx.post(
        system["base"] + "/v1/messages", json=send, headers={"Authorization": f"Bearer {old}"}
    )
    assert refused.status_code == 401
    page.context.close()


def test_a_test_message_is_delivered_and_shows_on_the_realtime_page(
    browser: Any, system: dict[str, Any]
) -> None:
    page = signed_in_page(browser, system)
    realtime = page.context.new_page()
    realtime.set_default_timeout(15_000)
    realtime.goto("/console/realtime")
    expect(realtime.locator("#feed-state")).to_have_attribute("data-state", "live")
    live_row = realtime.locator("#realtime-rows tr", has_text="Order updates")
    expect(live_row).to_have_count(1)

    page.fill("#filters [name=name]", "Order updates")
    expect(page.locator("#streams-total")).to_have_text("1 stream")
    sid = stream_id(page, "Order updates")
    open_menu(page, "Order updates")
    page.click("text=Test stream API")
    page.fill("#modal [name=recipient_phone]", "0524265292")
    page.click("#modal button:has-text('Send test')")
    expect(page.locator('#modal [data-error-for="recipient_phone"]')).to_contain_text(
        "international format"
    )
    page.fill("#modal [name=recipient_phone]", PHONE)
    page.click("#modal button:has-text('Send test')")
    expect(page.locator("#test-result")).to_contain_text("Accepted")
    message_id = page.locator("#test-result code").inner_text()

    # The realtime page saw it come in and go out (the worker pool delivered it).
    expect(live_row).to_have_attribute("data-in-total", re.compile(r"^[1-9]"))
    expect(live_row).to_have_attribute("data-out-total", re.compile(r"^[1-9]"))
    # A little more traffic through the send API, for the screenshot's sparklines.
    token = api(system, "GET", f"/api/v1/streams/{sid}/token").json()["token"]
    for burst in (5, 12, 8):
        items = [{"recipient_phone": PHONE, "message_content": "Your parcel"}] * burst
        sent = httpx.post(
            system["base"] + "/v1/messages",
            json={"messages": items},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert sent.status_code == 202
        realtime.wait_for_timeout(1000)
    expect(live_row).to_have_attribute("data-out-total", re.compile(r"^[1-9]\d"))
    ARTIFACTS.mkdir(exist_ok=True)
    realtime.screenshot(path=str(ARTIFACTS / "realtime.png"), full_page=True)

    realtime.locator("#realtime-filters [name=name]").fill("order")
    expect(realtime.locator("#realtime-rows tr[data-stream-id]")).to_have_count(1)
    expect(realtime.locator("#realtime-rows tr[data-stream-id]")).to_have_attribute(
        "data-stream-id", sid
    )
    realtime.locator("#realtime-filters [name=name]").fill("")
    expect(realtime.locator("#realtime-rows tr[data-stream-id]")).not_to_have_count(1)

    # The side panel's Info tab: the statistics now count them, with the chart.
    page.keyboard.press("Escape")
    page.click(".stream-name:has-text('Order updates')")
    expect(page.locator("#panel .stat-value").first).not_to_have_text("0")
    expect(page.locator("#panel .chart rect.bar-sent")).not_to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "panel.png"))
    page.click("#panel .tab:has-text('Request API')")
    expect(page.locator("#request-endpoint")).to_contain_text("POST http")
    page.click("#panel [data-copy='#request-body']")
    expect(page.locator("#panel [data-copy='#request-body']")).to_have_text("Copied")

    message = api(system, "GET", f"/api/v1/messages/{message_id}").json()
    assert message["status"] in ("sent", "delivered")
    page.context.close()


def test_disable_and_delete_streams(browser: Any, system: dict[str, Any]) -> None:
    page = signed_in_page(browser, system)
    page.fill("#filters [name=name]", "Order updates")
    expect(page.locator("#streams-total")).to_have_text("1 stream")
    sid = stream_id(page, "Order updates")
    token = api(system, "GET", f"/api/v1/streams/{sid}/token").json()["token"]
    open_menu(page, "Order updates")
    page.click(".menu-items button:has-text('Disable')")
    expect(page.locator("#toast")).to_contain_text("disabled")
    expect(row(page, "Order updates").locator(".badge")).to_have_text("Disabled")
    send = {"messages": [{"recipient_phone": PHONE, "message_content": "hi"}]}
    refused = httpx.post(
        system["base"] + "/v1/messages", json=send, headers={"Authorization": f"Bearer {token}"}
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "stream_disabled"

    page.fill("#filters [name=name]", "Bulk 01")
    expect(page.locator("#streams-total")).to_have_text("1 stream")
    open_menu(page, "Bulk 01")
    page.click(".menu-items button:has-text('Delete')")
    page.click("#modal button:has-text('Cancel')")
    expect(page.locator("#streams-total")).to_have_text("1 stream")
    open_menu(page, "Bulk 01")
    page.click(".menu-items button:has-text('Delete')")
    page.click("#modal button:has-text('Delete stream')")
    expect(page.locator("#streams-total")).to_have_text("0 streams")
    names = [s["name"] for s in api(system, "GET", "/api/v1/streams?per_page=100").json()["items"]]
    assert "Bulk 01" not in names
    page.context.close()


def test_a_form_without_the_csrf_token_is_refused(browser: Any, system: dict[str, Any]) -> None:
    page = signed_in_page(browser, system)
    page.fill("#filters [name=name]", "Bulk 02")
    expect(page.locator("#streams-total")).to_have_text("1 stream")
    sid = stream_id(page, "Bulk 02")
    # The session cookie goes with the request (same site), but the token does not.
    status = page.evaluate(
        """async (id) => (await fetch(`/console/streams/${id}/delete`, {method: "POST",
             body: new URLSearchParams({})})).status""",
        sid,
    )
    assert status == 403
    assert api(system, "GET", f"/api/v1/streams/{sid}").status_code == 200
    page.context.close()


def test_one_accounts_session_never_sees_anothers_streams(
    browser: Any, system: dict[str, Any]
) -> None:
    own = api(system, "GET", "/api/v1/streams?per_page=100").json()["items"]
    page = signed_in_page(browser, system, key=system["other_key"])
    expect(page.locator("#streams-total")).to_have_text("0 streams")
    for name in ("Spring sale", "Order updates", "Bulk 02"):
        assert page.locator(".stream-name", has_text=name).count() == 0
    foreign = own[0]["id"]
    answer = page.goto(f"/console/streams/{foreign}/token")
    assert answer is not None and answer.status == 404
    assert "No such stream." in page.content()
    page.goto(f"/console/streams?panel={foreign}")
    expect(page.locator("#modal")).to_contain_text("No such stream.")
    page.goto("/console/realtime")
    expect(page.locator("#feed-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#realtime-rows tr[data-stream-id]")).to_have_count(0)
    page.context.close()


def test_another_site_cannot_frame_the_console(browser: Any, system: dict[str, Any]) -> None:
    page = browser.new_context().new_page()
    page.set_default_timeout(10_000)
    signin = system["base"] + "/console/signin"
    with page.expect_response(signin) as framed:
        page.set_content(f'<iframe id="console" src="{signin}"></iframe>')  # waits for its load
    assert framed.value.status == 200  # served, but the browser does not show it in a frame
    (frame,) = [f for f in page.frames if f != page.main_frame]
    assert frame.url != signin  # Chromium shows its own error page in the frame instead
    assert frame.locator("input[name=account_key]").count() == 0
    page.context.close()

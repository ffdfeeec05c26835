"""Console form fields → API bodies, the chart's layout, and the scheme behind a proxy. Pure."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from core.network import request_scheme
from dispatcher.console.chart import HEIGHT, throughput_chart
from dispatcher.console.forms import (
    callback_headers,
    settings_from_form,
    stream_create_body,
    stream_patch_body,
    whatsapp_body,
)
from schemas.stats import ThroughputPoint

PROXIES = [ipaddress.ip_network("10.0.0.0/8")]


def test_create_body_splits_lists_and_leaves_empty_inputs_out() -> None:
    body = stream_create_body(
        {
            "name": "Orders",
            "tags": "shop, eu ,",
            "allowed_ips": "203.0.113.0/24,\n2001:db8::/32",
            "default_sender": "  ",
            "demo": "on",
            "settings.max_per_second": "50",
            "settings.max_per_day": "",
        },
        "marketing",
    )
    assert body == {
        "name": "Orders",
        "type": "marketing",
        "tags": ["shop", "eu"],
        "allowed_ips": ["203.0.113.0/24", "2001:db8::/32"],
        "demo": True,
        "settings": {"max_per_second": "50"},
    }


def test_settings_form_clears_emptied_inputs_on_edit() -> None:
    form = {
        "settings.max_per_second": "",
        "settings.max_per_day": "1000",
        "settings.quiet_hours.start": "09:00",
        "settings.callback_headers": "X-Key: abc\n\nX-Env: prod",
    }
    assert settings_from_form(form, clear_missing=True) == {
        "max_per_second": None,
        "max_per_day": "1000",
        "quiet_hours": None,
        "callback_headers": {"X-Key": "abc", "X-Env": "prod"},
    }
    form["settings.quiet_hours.enabled"] = "on"
    assert settings_from_form(form, clear_missing=False)["quiet_hours"] == {
        "start": "09:00",
        "end": "20:00",
        "timezone": None,
    }


def test_a_header_line_without_a_colon_is_kept_for_the_api_to_name() -> None:
    assert callback_headers("Bad Header") == {"Bad Header": ""}


def test_patch_body_sends_only_the_inputs_shown() -> None:
    assert stream_patch_body({"name": "New", "description": "", "demo.present": "1"}) == {
        "name": "New",
        "description": None,
        "demo": False,
    }


def test_whatsapp_secrets_go_only_when_typed() -> None:
    form = {
        "whatsapp.phone_number_id": "",
        "whatsapp.access_token": "",
        "whatsapp.verify_token": "hello",
    }
    assert whatsapp_body(form, clear_blank_ids=True) == {
        "phone_number_id": None,
        "verify_token": "hello",
    }
    assert whatsapp_body(form, clear_blank_ids=False) == {"verify_token": "hello"}


def test_chart_has_a_bar_per_bucket_scaled_to_the_peak() -> None:
    start = datetime(2026, 5, 1, 10, 30, tzinfo=UTC)
    points = [
        ThroughputPoint(
            at=datetime(2026, 5, 1, 12, tzinfo=UTC),
            accepted=10,
            sent=8,
            delivered=8,
            errors=2,
            sent_per_minute=0.1,
        )
    ]
    chart = throughput_chart(points, start, start + timedelta(hours=4), 3600)
    assert [bar.at.hour for bar in chart.bars] == [10, 11, 12, 13, 14]
    busiest = chart.bars[2]
    assert chart.peak == 10
    assert busiest.sent_height == HEIGHT * 0.8 and busiest.errors_height == HEIGHT * 0.2
    assert busiest.errors_y == 0
    assert all(bar.sent_height == 0 for bar in chart.bars if bar is not busiest)


def test_an_empty_range_draws_flat_bars() -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    chart = throughput_chart([], start, start + timedelta(hours=2), 3600)
    assert chart.peak == 0 and all(bar.sent_height == 0 for bar in chart.bars)


def test_forwarded_proto_counts_only_from_a_trusted_proxy() -> None:
    assert request_scheme("http", "10.0.0.5", "https", PROXIES) == "https"
    assert request_scheme("http", "10.0.0.5", "https, http", PROXIES) == "https"
    assert request_scheme("http", "203.0.113.9", "https", PROXIES) == "http"
    assert request_scheme("http", "10.0.0.5", "gopher", PROXIES) == "http"
    assert request_scheme("https", None, None, PROXIES) == "https"

"""Invariant 3: a reset takes effect on every ingress process within one second."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import auth, message
from tests.processes import ingress, wait_until

pytestmark = pytest.mark.slow


def test_invariant_3_reset_reaches_a_second_ingress_within_one_second(
    settings, runtime, account_key, tmp_path
):
    with (
        ingress(settings, tmp_path / "a.log") as first,
        ingress(settings, tmp_path / "b.log") as second,
    ):
        created = httpx.post(
            first + "/api/v1/streams",
            json={"name": "Alerts", "type": "transactional", "default_sender": "Acme"},
            headers=auth(account_key),
        ).json()
        old = httpx.get(
            f"{first}/api/v1/streams/{created['id']}/token", headers=auth(account_key)
        ).json()["token"]
        body = {"messages": [message()]}
        # Warm the second process's token cache with the old token.
        assert httpx.post(second + "/v1/messages", json=body, headers=auth(old)).status_code == 202

        new = httpx.post(
            f"{first}/api/v1/streams/{created['id']}/token/reset", headers=auth(account_key)
        ).json()["token"]
        reset_at = time.monotonic()

        def old_refused() -> bool:
            return (
                httpx.post(second + "/v1/messages", json=body, headers=auth(old)).status_code == 401
            )

        assert wait_until(old_refused, timeout=1.0, interval=0.02)
        elapsed = time.monotonic() - reset_at
        assert elapsed <= 1.0, f"old token worked for {elapsed:.2f}s after the reset"
        assert httpx.post(second + "/v1/messages", json=body, headers=auth(new)).status_code == 202
        assert httpx.post(first + "/v1/messages", json=body, headers=auth(old)).status_code == 401

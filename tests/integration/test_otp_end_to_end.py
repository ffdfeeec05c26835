"""OTP with real processes: ``streams serve`` → Redis ``otp`` queue → ``streams worker`` →
sandbox → ``delivered``; then simultaneous verifications over HTTP against the real ingress
(its threadpool and PostgreSQL): exactly one is valid. The processes' logs hold no code."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.conftest import auth
from tests.otp_codes import PHONE
from tests.processes import ingress, wait_until, worker_pool

pytestmark = pytest.mark.slow
CODE = "6038271945"


def test_otp_through_real_ingress_and_worker_processes(settings, runtime, account_key, tmp_path):
    with (
        ingress(settings, tmp_path / "ingress.log") as base,
        worker_pool(settings, tmp_path / "worker.log", queues="otp", threads=2),
    ):
        created = httpx.post(
            base + "/api/v1/streams",
            json={
                "name": "Logins",
                "type": "otp",
                "default_sender": "Acme",
                "settings": {"code_mode": "customer_code", "code_length": 10},
            },
            headers=auth(account_key),
        ).json()
        assert created["status"] == "ready"
        token = httpx.get(
            f"{base}/api/v1/streams/{created['id']}/token", headers=auth(account_key)
        ).json()["token"]

        sent = httpx.post(
            base + "/v1/otp/send",
            json={"recipient_phone": PHONE, "code": CODE},
            headers=auth(token),
        )
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["message_id"]

        def delivered() -> bool:
            shown = httpx.get(f"{base}/v1/messages/{message_id}", headers=auth(token)).json()
            return shown["status"] == "delivered"

        assert wait_until(delivered, timeout=30, interval=0.2)
        shown = httpx.get(f"{base}/api/v1/messages/{message_id}", headers=auth(account_key))
        assert shown.json()["message_content"] == "Your code is **********"
        assert [h["status"] for h in shown.json()["history"]] == [
            "queued",
            "sending",
            "sent",
            "delivered",
        ]

        barrier = threading.Barrier(6)
        answers: list[dict] = []
        lock = threading.Lock()

        def verify() -> None:
            with httpx.Client(base_url=base, headers=auth(token)) as http:
                barrier.wait()
                answer = http.post(
                    "/v1/otp/verify", json={"recipient_phone": PHONE, "code": CODE}
                ).json()
            with lock:
                answers.append(answer)

        threads = [threading.Thread(target=verify) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [a["valid"] for a in answers].count(True) == 1, answers
        assert {a.get("reason") for a in answers if not a["valid"]} == {"used"}
        metrics = httpx.get(base + "/metrics").text
        assert 'streams_otp_verifications_total{outcome="valid"} 1.0' in metrics
        assert 'streams_otp_verifications_total{outcome="used"} 5.0' in metrics
        assert 'streams_otp_sends_total{mode="customer_code"} 1.0' in metrics

    logs = (tmp_path / "ingress.log").read_text() + (tmp_path / "worker.log").read_text()
    assert "otp_sent" in logs and "message_sent" in logs
    assert CODE not in logs

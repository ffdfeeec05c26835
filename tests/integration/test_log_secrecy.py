"""Invariant 8: tokens, account keys and provider credentials never reach a log line or an
error body, across a whole flow (ingress and worker in this process, JSON logs captured)."""

from __future__ import annotations

import logging

import structlog

from core.logs import configure_logging
from tests.conftest import auth, message
from tests.processes import wait_until
from workers.pool import start_worker


def test_invariant_8_secrets_never_reach_logs(
    restore_logging, client, runtime, make_stream, account_key, capfd
):
    configure_logging("DEBUG", "json")  # here, so it writes to this phase's captured stderr
    stream = make_stream(allowed_ips=["203.0.113.0/24"])
    old_token = stream["token"]
    forged = "st_" + "Z" * 43
    secrets = [account_key, old_token, forged]

    refused = client.post("/v1/messages", json={"messages": [message()]}, headers=auth(forged))
    assert forged not in refused.text
    wrong_key = client.get("/api/v1/streams", headers=auth("sk_" + "Y" * 43))
    assert "Y" * 43 not in wrong_key.text

    sent = client.post("/v1/messages", json={"messages": [message()]}, headers=auth(old_token))
    message_id = sent.json()["results"][0]["message_id"]
    new_token = client.post(
        f"/api/v1/streams/{stream['id']}/token/reset", headers=auth(account_key)
    ).json()["token"]
    secrets.append(new_token)
    structlog.get_logger("test").info("careless_line", detail=f"Authorization: Bearer {new_token}")
    logging.getLogger("thirdparty").warning("a library printed %s", old_token)

    worker = start_worker(runtime, ["transactional"], threads=2)
    try:
        assert wait_until(
            lambda: (
                client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()[
                    "status"
                ]
                == "delivered"
            ),
            timeout=20,
        )
    finally:
        worker.stop(timeout=5_000)

    output = capfd.readouterr()
    logged = output.out + output.err
    assert '"event": "messages_accepted"' in logged
    assert '"event": "message_sent"' in logged
    assert "careless_line" in logged and "a library printed" in logged
    for secret in secrets:
        assert secret not in logged
        assert secret[3:20] not in logged, "no fragment of a secret either"

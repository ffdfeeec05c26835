"""The README's quick start: ``streams dev`` on its embedded defaults (SQLite, the in-process
broker, no Redis), from an empty directory, takes the printed token and delivers a message.
The rest of the suite runs on PostgreSQL, so this is what keeps the SQLite path honest."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx

from tests.processes import STREAMS, free_port, stop, wait_until


def test_streams_dev_delivers_a_first_message_on_its_embedded_defaults(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    # The banner (stdout) shows the demo credentials on purpose; the logs (stderr) must not,
    # and the session's log scan reads them.
    banner, log = tmp_path / "dev-terminal.out", tmp_path / "dev.log"
    with banner.open("wb") as out, log.open("wb") as err:
        process = subprocess.Popen(
            [STREAMS, "dev", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        assert wait_until(lambda: "Stream token:" in banner.read_text(), timeout=60), (
            log.read_text()[-4000:]
        )
        token = re.search(r"Stream token: (st_\S+)", banner.read_text()).group(1)  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _up(base), timeout=30), log.read_text()
        answer = httpx.post(
            f"{base}/v1/messages",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "messages": [
                    {
                        "internal_id": "hello-1",
                        "recipient_phone": "+972524265292",
                        "message_content": "Hello from Streams",
                    }
                ]
            },
        )
        assert answer.status_code == 202, answer.text
        message_id = answer.json()["results"][0]["message_id"]

        def status() -> str:
            return httpx.get(
                f"{base}/v1/messages/{message_id}", headers={"Authorization": f"Bearer {token}"}
            ).json()["status"]

        assert wait_until(lambda: status() == "delivered", timeout=30, interval=0.2), (
            status(),
            log.read_text()[-4000:],
        )
        assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
    finally:
        stop(process)
    assert (tmp_path / ".streams").is_dir()  # SQLite where the README says


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False

"""``streams dev``: the whole system in one process on embedded defaults.

SQLite under ``.streams/``, dramatiq's in-process broker with workers for every queue, the
relay, the sandbox provider, and the ingress on :8080. It prints a ready account key and a
ready stream token so a newcomer can send at once.
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from pathlib import Path

import structlog
import uvicorn

from core.accounts import create_account, rotate_account_key
from core.broker import ALL_QUEUES
from core.logs import configure_logging
from core.migrate import upgrade
from core.runtime import Runtime, build_runtime
from core.settings import Settings
from dispatcher.app import create_app
from workers.callback_sweep import CallbackSweep
from workers.pool import start_worker
from workers.relay import Relay

DATA_DIR = Path(".streams")
log = structlog.get_logger(__name__)


def dev_settings() -> Settings:
    """Environment overrides win; otherwise SQLite, no Redis, and a secret key kept in
    ``.streams/secret.key`` so tokens survive restarts."""
    DATA_DIR.mkdir(exist_ok=True)
    settings = Settings()
    if not settings.secret_key:
        key_file = DATA_DIR / "secret.key"
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(48))
            key_file.chmod(0o600)
        settings = settings.model_copy(update={"secret_key": key_file.read_text().strip()})
    return settings


def ensure_demo_stream(runtime: Runtime) -> tuple[str, str, str]:
    """The dev account (with a fresh key each start) and its demo stream's token."""
    from sqlalchemy import select

    from core.credentials import digest, new_stream_token, new_webhook_secret
    from schemas.tables import Account, Stream

    state_file = DATA_DIR / "dev.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    with runtime.session_factory() as session:
        account = (
            session.get(Account, uuid.UUID(state["account_id"]))
            if state.get("account_id")
            else None
        )
    if account is None:
        account_id, key = create_account(runtime.session_factory, "Dev account")
    else:
        account_id, key = account.id, rotate_account_key(runtime.session_factory, account.id)
    with runtime.session_factory() as session:
        stream = session.scalars(
            select(Stream)
            .where(Stream.account_id == account_id, Stream.deleted_at.is_(None))
            .order_by(Stream.created_at)
        ).first()
        if stream is None:
            token = new_stream_token()
            now = runtime.clock()
            stream = Stream(
                id=uuid.uuid4(),
                account_id=account_id,
                name="Demo stream",
                type="transactional",
                description="Created by streams dev: sends through the sandbox carrier.",
                status="ready",
                disabled=False,
                allowed_ips=[],
                default_sender="Streams",
                demo=True,
                settings={},
                token_digest=digest(token),
                token_sealed=runtime.secret_box.seal(token),
                webhook_secret_sealed=runtime.secret_box.seal(new_webhook_secret()),
                created_at=now,
                updated_at=now,
                callbacks_changed_at=now,
            )
            session.add(stream)
            session.commit()
        token = runtime.secret_box.open(stream.token_sealed or "")
        stream_id = str(stream.id)
    state_file.write_text(json.dumps({"account_id": str(account_id)}))
    return key, token, stream_id


def run_dev(host: str, port: int) -> int:
    settings = dev_settings()
    configure_logging(
        settings.log_level, "console" if settings.log_format == "auto" else settings.log_format
    )
    upgrade(settings.database_url)
    runtime = build_runtime(settings, role="streams-dev")
    worker = start_worker(runtime, ALL_QUEUES, threads=4)
    stop = threading.Event()
    relay = threading.Thread(target=Relay(runtime).run, args=(stop,), name="relay", daemon=True)
    relay.start()
    callback_sweep = threading.Thread(
        target=CallbackSweep(runtime).run, args=(stop,), name="callback-sweep", daemon=True
    )
    callback_sweep.start()
    key, token, stream_id = ensure_demo_stream(runtime)
    base = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}"
    print(_banner(base, key, token, stream_id), flush=True)
    try:
        uvicorn.run(create_app(settings, runtime=runtime), host=host, port=port, log_config=None)
    finally:
        stop.set()
        worker.stop(timeout=5_000)
        relay.join(timeout=5)
        runtime.close()
    return 0


def _banner(base: str, key: str, token: str, stream_id: str) -> str:
    return f"""
  Streams dev is running on {base}  (SQLite in .streams/, in-process queues, sandbox carrier)

  Account key : {key}
  Stream token: {token}   (stream {stream_id}, transactional, demo)

  Send a message:
    curl -s {base}/v1/messages -H 'Authorization: Bearer {token}' \\
      -H 'Content-Type: application/json' \\
      -d '{{"messages": [{{"internal_id": "hello-1", "recipient_phone": "+972524265292",
                          "message_content": "Hello from Streams"}}]}}'

  List your streams:
    curl -s {base}/api/v1/streams -H 'Authorization: Bearer {key}'

  Console: {base}/console  (sign in with the account key above)

  API docs: {base}/docs
"""

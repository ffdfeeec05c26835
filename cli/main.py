"""``streams``: dev, serve, worker, relay, migrate, accounts create."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence

from core.broker import ALL_QUEUES
from core.settings import Settings

#: How long ``streams serve`` drains open requests after SIGTERM (keep Kubernetes'
#: ``terminationGracePeriodSeconds`` above it).
GRACEFUL_SHUTDOWN_SECONDS = 30


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streams", description="Streams messaging backend")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="everything in one process on embedded defaults")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)

    serve = commands.add_parser("serve", help="the ingress (dispatcher)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)

    worker = commands.add_parser("worker", help="a worker pool for some or all queues")
    worker.add_argument(
        "--queues", default=",".join(ALL_QUEUES), help="comma-separated (default: all)"
    )
    # A pool of no process or no thread would run on and consume nothing: refused.
    worker.add_argument("--processes", type=_positive_count, default=1, metavar="N")
    worker.add_argument("--threads", type=_positive_count, default=8, metavar="M")
    worker.add_argument("--metrics-port", type=int, default=None)
    worker.add_argument(
        "--poll-ms",
        type=int,
        default=None,
        help="idle poll interval (default STREAMS_WORKER_POLL_MS, 50); e.g. 5 for the otp pool",
    )
    worker.add_argument(
        "--nice",
        type=_nice_increment,
        default=0,
        metavar="0-19",
        help="lower this pool's CPU priority by N (also for its session, see "
        "workers/cpu_priority.py): on a shared host, 10 for a bulk pool such as marketing",
    )

    relay = commands.add_parser("relay", help="the outbox sweep")
    relay.add_argument("--metrics-port", type=int, default=None)
    commands.add_parser("migrate", help="apply database migrations")

    accounts = commands.add_parser("accounts", help="manage accounts")
    account_commands = accounts.add_subparsers(dest="action", required=True)
    create = account_commands.add_parser("create", help="create an account and print its key once")
    create.add_argument("name")

    args = parser.parse_args(argv)
    try:
        return _run(args)
    except RuntimeError as exc:  # configuration errors: say what to set, no traceback
        print(f"streams: {exc}", file=sys.stderr)
        return 2


def _nice_increment(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 19, not {text!r}")
    return value


def _positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    # Metric files are this command's business: a directory inherited from the environment
    # may hold another run's values (core.metrics_multiprocess makes a fresh one if needed).
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if args.command == "dev":
        from cli.dev import run_dev

        return run_dev(args.host, args.port)
    settings = Settings()
    from core.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        settings.require_secret_key()
        _serve(args.host, args.port, args.workers)
        return 0
    if args.command == "worker":
        from workers.pool import run_pool

        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
        unknown = sorted(set(queues) - set(ALL_QUEUES))
        if unknown:
            raise RuntimeError(
                f"unknown queue(s) {', '.join(unknown)}; choose from {', '.join(ALL_QUEUES)}"
            )
        settings.require_secret_key()
        if args.poll_ms is not None:
            # Through the environment, so every process of the pool reads it.
            os.environ["STREAMS_WORKER_POLL_MS"] = str(args.poll_ms)
        if args.nice:
            from workers.cpu_priority import lower_cpu_priority

            lower_cpu_priority(args.nice)
        run_pool(queues, args.processes, args.threads, args.metrics_port)
        return 0
    if args.command == "relay":
        import signal

        from workers.callback_sweep import CallbackSweep
        from workers.relay import Relay, relay_runtime

        runtime = relay_runtime(settings)
        if args.metrics_port is not None:
            from workers.pool import serve_metrics

            serve_metrics(args.metrics_port)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        callback_sweep = threading.Thread(target=CallbackSweep(runtime).run, args=(stop,))
        callback_sweep.start()
        Relay(runtime).run(stop)
        callback_sweep.join()
        runtime.close()
        return 0
    if args.command == "migrate":
        from core.migrate import upgrade

        upgrade(settings.database_url)
        print("migrations applied")
        begin_broker_epoch(settings)
        return 0
    if args.command == "accounts":
        from core.accounts import create_account
        from core.database import build_engine, build_session_factory

        engine = build_engine(settings.database_url)
        account_id, key = create_account(build_session_factory(engine), args.name)
        engine.dispose()
        print(f"account {account_id} created")
        print(f"account key (shown once): {key}")
        return 0
    raise AssertionError(args.command)


def begin_broker_epoch(settings: Settings) -> None:
    """Tell the relay that the broker's Redis, as it is, is the one in use: a relay that
    finds no sentinel there takes it for a Redis that lost its data (``workers.broker_epoch``)
    and enqueues every marked message again."""
    if settings.redis_url is None:
        return  # streams dev: the broker lives in the process
    import redis
    from sqlalchemy import select

    from core.clock import utcnow
    from core.database import build_engine
    from core.redis_clients import redis_client
    from schemas.enums import MessageStatus
    from schemas.tables import Message, status_is
    from workers import broker_epoch

    engine = build_engine(settings.database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            marked = connection.scalar(
                select(Message.id)
                .where(status_is(MessageStatus.queued), Message.enqueued_at.is_not(None))
                .limit(1)
            )
    finally:
        engine.dispose()
    client = redis_client(settings.redis_url, settings)
    try:
        if broker_epoch.begin(client, utcnow(), marked_waiting=marked is not None):
            print("broker epoch begun")
    except redis.RedisError as exc:
        print(
            f"broker epoch not written ({type(exc).__name__}): the relay will enqueue marked "
            "messages once more when it first meets this Redis",
            file=sys.stderr,
        )
    finally:
        client.close()


def _serve(host: str, port: int, workers: int) -> None:
    """uvicorn on the ingress app. With several workers, their metrics are summed through
    prometheus-client's multiprocess mode (``core.metrics_multiprocess``); uvicorn restarts
    a worker that dies on its own, so a reaper marks exited pids dead."""
    import uvicorn

    from core.metrics_multiprocess import (
        DeadProcessReaper,
        remove_multiprocess_directory,
        start_multiprocess_directory,
    )

    directory = start_multiprocess_directory() if workers > 1 else None
    reaper = DeadProcessReaper(directory) if directory is not None else None
    if reaper is not None:
        reaper.start()
    try:
        uvicorn.run(
            "dispatcher.app:create_app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
            # SIGTERM: stop accepting, let open requests finish for up to this long.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    finally:
        if reaper is not None:
            reaper.stop()
        if directory is not None:
            remove_multiprocess_directory(directory)


if __name__ == "__main__":
    sys.exit(main())

"""A PostgreSQL cluster of the test's own, so a test can stop and restart it without
touching the machine's server (which other test runs share).

``initdb`` refuses to run as root, so as root the cluster is created and run as the
``postgres`` user (``runuser``), in a fresh directory owned by it; as anyone else, as that
user. Binaries come from Debian's ``/usr/lib/postgresql/<version>/bin`` (the ``postgresql``
package), else from ``PATH``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg

from tests.processes import free_port


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("initdb not found: install the postgresql package")
    return Path(initdb).parent


def _version(path: str) -> int:
    part = path.split("/")[4]
    return int(part) if part.isdigit() else 0


class PrivateCluster:
    """``start``/``stop``/``restart`` a cluster on 127.0.0.1:``port`` (trust auth, user
    ``postgres``, fsync off: it holds test data only)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._bin = _bin_dir()
        self._root = Path(tempfile.mkdtemp(prefix="streams-pg-"))
        self._data = self._root / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self._root, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self._data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )

    @property
    def server_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off"
        )
        log = str(self._root / "server.log")
        self._run("pg_ctl", "-D", str(self._data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open sessions are terminated, as in a real restart."""
        self._run("pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.server_url.rsplit("/", 1)[0] + "/" + name

    def remove(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self._root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        # From a directory the postgres user may enter (a clone under /root is closed to it).
        subprocess.run(command, check=True, capture_output=True, timeout=60, cwd=self._root)


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started ``PrivateCluster``, stopped and deleted on exit."""
    cluster = PrivateCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()

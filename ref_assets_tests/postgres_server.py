"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a fresh cluster in a
temporary directory, listening on loopback on a free port, stopped by its PID.

initdb and postgres refuse to run as root: as root, the server runs as the ``postgres`` user that
Debian's package creates, in a directory of its own. ``./dev test`` installs the package when it
is missing and sets ``REF_POSTGRES_TEST=required``, so there a server that cannot start fails the
test; under a bare pytest it is skipped with the reason.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = Path("/usr/lib/postgresql")
START_SECONDS = 60.0
USER = "ref"
DATABASE = "dagster"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str

    def environment(self) -> dict[str, str]:
        """The variables the production instance's dagster.yaml reads (``env:``)."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.database,
        }


def unavailable(reason: str) -> None:
    message = (
        f"the PostgreSQL test server cannot start: {reason}; install Debian's postgresql "
        "(`apt-get install -y postgresql`; ./dev test does this itself)"
    )
    if os.environ.get("REF_POSTGRES_TEST") == "required":
        pytest.fail(message)
    pytest.skip(message)


def binaries() -> Path | None:
    """The newest installed version's bin directory."""
    versions = sorted(
        (p for p in BINARIES.glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running server with database ``dagster`` owned by user ``ref`` (a password user)."""
    bin_dir = binaries()
    if bin_dir is None:
        unavailable(f"no {BINARIES}/*/bin/postgres")
    as_user: dict = {}
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no `postgres` user to run the server as")
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    root = Path(tempfile.mkdtemp(prefix="ref-postgres-"))  # /tmp: reachable by that user
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        password = secrets.token_hex(16)
        (root / "password").write_text(password)
        if owner is not None:
            os.chown(root / "password", owner.pw_uid, owner.pw_gid)
        init = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                USER,
                "--pwfile",
                str(root / "password"),
                "--auth=scram-sha-256",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            **as_user,
        )
        if init.returncode != 0:
            unavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
        port = free_port()
        log = (root / "server.log").open("w")
        if owner is not None:
            os.chown(root / "server.log", owner.pw_uid, owner.pw_gid)
        server = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(root / "data"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(root),  # its socket here, not in /var/run/postgresql
                "-c",
                "fsync=off",  # a throwaway cluster: durability is not under test
                "-c",
                "max_connections=200",  # the daemon, webserver-less runs and their pools
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            **as_user,
        )
        try:
            config = PostgresServer("127.0.0.1", port, USER, password, DATABASE)
            _wait_until_ready(server, config, root / "server.log")
            yield config
        finally:
            server.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_ready(server: subprocess.Popen, config: PostgresServer, log: Path) -> None:
    """Connect until the server answers, then create the database."""
    import psycopg2

    deadline = time.monotonic() + START_SECONDS
    while True:
        if server.poll() is not None:
            unavailable(f"postgres exited ({server.returncode}): {log.read_text()[-800:]}")
        try:
            connection = psycopg2.connect(
                host=config.host,
                port=config.port,
                user=config.user,
                password=config.password,
                dbname="postgres",
                connect_timeout=5,
            )
            break
        except psycopg2.OperationalError as err:
            if time.monotonic() > deadline:
                unavailable(f"no answer within {START_SECONDS:.0f} s ({err}): {log.read_text()}")
            time.sleep(0.2)
    connection.autocommit = True  # CREATE DATABASE runs outside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {config.database}")
    finally:
        connection.close()

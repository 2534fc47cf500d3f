"""``ref-assets serve`` as a subprocess on a free loopback port, stopped by its process group.

>>> with ServeProcess.started(env) as server:  # doctest: +SKIP
...     xr.open_zarr(server.url("/datasets/demo_air_temperature/zarr"), zarr_format=3)
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ref_assets_tests.processes import stop_process_group

# Importing xarray, icechunk and xpublish and opening the stores takes seconds on a loaded machine.
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServeProcess:
    process: subprocess.Popen
    port: int
    log: Path

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @classmethod
    @contextlib.contextmanager
    def started(
        cls, env: Mapping[str, str], log: Path, arguments: Sequence[str] = ()
    ) -> Iterator[ServeProcess]:
        port = free_port()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "ref_assets.cli", "serve", "--port", str(port), *arguments],
                env=dict(env),
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(process, port, log)
        try:
            server._wait_until_answering()
            yield server
        finally:
            if process.poll() is None:
                stop_process_group(process, grace=10)

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ref-assets serve exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url("/datasets"), timeout=5):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError(
            f"ref-assets serve did not answer in {START_TIMEOUT} s:\n{self.output()}"
        )

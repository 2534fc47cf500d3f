"""A local HTTP server for provider tests: serves files from a directory with HEAD and byte-range
GETs (206), logs every request, and can answer scripted failures (429, 503, ...) first.

>>> with FileServer(directory) as server:  # doctest: +SKIP
...     server.fail("/2024/file.tif", 503, 429)  # the next two requests of that path fail
...     url = server.url("/2024/file.tif")

Bound to 127.0.0.1 on a free port; tests never reach beyond loopback.
"""

from __future__ import annotations

import email.utils
import hashlib
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    range: tuple[int, int] | None  # inclusive byte range asked for
    status: int


class FileServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[LoggedRequest] = []
        self._failures: dict[str, deque[int]] = defaultdict(deque)
        self._cut_short: dict[str, deque[int]] = defaultdict(deque)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                server._answer(self, body=False)

            def do_GET(self) -> None:
                server._answer(self, body=True)

            def log_message(self, *args) -> None:  # quiet: the log is `requests`
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval: shutdown waits for it, once per test.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str = "/") -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def fail(self, path: str, *statuses: int) -> None:
        """The next requests of ``path`` answer these statuses, in order."""
        with self._lock:
            self._failures[path].extend(statuses)

    def cut_short(self, path: str, *byte_counts: int) -> None:
        """The next answers of ``path`` announce the full length but send only this many bytes
        of the body, then drop the connection."""
        with self._lock:
            self._cut_short[path].extend(byte_counts)

    def requests_for(self, path: str, method: str = "GET") -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path and r.method == method]

    def _answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        asked = _parse_range(handler.headers.get("Range"))
        with self._lock:
            failure = self._failures[path].popleft() if self._failures[path] else None
        if failure is not None:
            self._log(handler, path, asked, failure)
            handler.send_response(failure)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.root.resolve()) or not file.is_file():
            self._log(handler, path, asked, 404)
            handler.send_error(404)
            return
        data = file.read_bytes()
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        if handler.headers.get("If-Range") not in (None, etag):
            asked = None  # the file changed since the client's HEAD: answer it whole
        status, payload = 200, data
        if asked is not None:
            start, end = asked[0], min(asked[1], len(data) - 1)
            if start >= len(data):
                self._log(handler, path, asked, 416)
                handler.send_error(416)
                return
            status, payload = 206, data[start : end + 1]
        self._log(handler, path, asked, status)
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(payload)))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("ETag", etag)
        handler.send_header(
            "Last-Modified", email.utils.formatdate(file.stat().st_mtime, usegmt=True)
        )
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        handler.end_headers()
        with self._lock:
            cut = self._cut_short[path].popleft() if self._cut_short[path] else None
        if body:
            handler.wfile.write(payload if cut is None else payload[:cut])
        if cut is not None:
            handler.close_connection = True

    def _log(self, handler, path: str, asked, status: int) -> None:
        with self._lock:
            self.requests.append(LoggedRequest(handler.command, path, asked, status))


def _parse_range(header: str | None) -> tuple[int, int] | None:
    if not header or not header.startswith("bytes="):
        return None
    first, _, last = header.removeprefix("bytes=").partition("-")
    return int(first), int(last) if last else 2**62

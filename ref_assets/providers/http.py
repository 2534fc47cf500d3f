"""A polite HTTP client for providers: bounded retries, one request at a time per host by
default, range reads, and errors that say what failed and whether retrying may help.

>>> client = HttpClient()  # doctest: +SKIP
>>> head = client.head("https://data.example/chirps/2024/01/file.tif")  # doctest: +SKIP
>>> first_kb = client.get_range(head.url, 0, 1023)  # doctest: +SKIP

Retried: 429, 500, 502, 503, 504, timeouts and dropped connections, with jittered exponential
back-off (``Retry-After`` honoured up to ``max_backoff``). Not retried: other 4xx (a 404 is
`SourceNotFoundError`: the period is not published). Nothing here runs at import time.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from urllib.parse import urlsplit

import requests

from ref_assets.providers.protocol import ProviderError
from ref_assets.secrets import redact

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
# Failures worth another try: no answer in time, no connection, or a body cut off mid-way.
_TRANSIENT_ERRORS = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class SourceUnavailableError(ProviderError):
    """The source did not answer usefully after the retries; running again later may work."""

    retryable = True


class SourceNotFoundError(ProviderError):
    """The source has no such file (HTTP 404/410): the period is not published (yet)."""

    retryable = False


@dataclass(frozen=True)
class HeadResult:
    url: str
    size: int | None
    etag: str | None
    last_modified: str | None  # ISO 8601, UTC
    accepts_ranges: bool


@dataclass
class HttpClient:
    """``max_attempts`` tries per request; ``per_host`` requests in flight to one host (1: one
    at a time, the polite default for public archives)."""

    timeout: float = 30.0
    max_attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    per_host: int = 1
    user_agent: str = "ref_assets (climate data ingestion)"
    sleep: Callable[[float], None] = time.sleep
    _session: requests.Session = field(default_factory=requests.Session, repr=False)
    _slots: dict[str, threading.BoundedSemaphore] = field(default_factory=dict, repr=False)
    _slots_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def head(self, url: str) -> HeadResult:
        return _described(self._request("HEAD", url, allow_redirects=True), url)

    def exists(self, url: str) -> bool:
        """Whether ``url`` is published (HEAD 2xx), False on 404/410; other failures raise."""
        try:
            self.head(url)
        except SourceNotFoundError:
            return False
        return True

    def get(self, url: str) -> bytes:
        return self._request("GET", url).content

    def download(self, url: str) -> tuple[bytes, HeadResult]:
        """The whole file and what its GET response says of it (size, ETag, Last-Modified of
        exactly these bytes, unlike a separate HEAD that a replaced file could answer)."""
        response = self._request("GET", url)
        return response.content, _described(response, url)

    def get_range(self, url: str, start: int, end: int, *, if_range: str | None = None) -> bytes:
        """Bytes ``start`` to ``end`` inclusive. With ``if_range`` (the ETag a HEAD gave), a file
        replaced since then answers whole (200) and is refused, so ranges of two versions never
        mix. A server that ignores ``Range`` is an error too (the whole file would be
        downloaded where a window was meant)."""
        headers = {"Range": f"bytes={start}-{end}"}
        if if_range and not if_range.startswith("W/"):  # a weak ETag never matches If-Range
            headers["If-Range"] = if_range
        response = self._request("GET", url, headers=headers)
        if response.status_code != 206:
            raise SourceUnavailableError(
                f"{redact(url)}: a range request was answered whole (HTTP "
                f"{response.status_code}): the file changed since it was opened, or the server "
                "does not support ranges"
            )
        return response.content

    def _request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **kwargs
    ) -> requests.Response:
        shown = redact(url)
        headers = {"User-Agent": self.user_agent, **(headers or {})}  # the same on every attempt
        problem = ""
        for attempt in range(1, self.max_attempts + 1):
            with self._slot(url):
                try:
                    response = self._session.request(
                        method, url, timeout=self.timeout, headers=headers, **kwargs
                    )
                except _TRANSIENT_ERRORS as err:
                    response, problem = None, f"{type(err).__name__}: {redact(str(err))}"
            if response is not None:
                if response.status_code in (404, 410):
                    raise SourceNotFoundError(f"{shown}: not found (HTTP {response.status_code})")
                if response.status_code not in RETRIED_STATUSES:
                    if response.status_code >= 400:
                        raise SourceUnavailableError(
                            f"{shown}: HTTP {response.status_code} {response.reason}; not retried"
                        )
                    return response
                problem = f"HTTP {response.status_code} {response.reason}"
            if attempt < self.max_attempts:
                self.sleep(self._delay(attempt, response))
        raise SourceUnavailableError(
            f"{shown}: {problem} after {self.max_attempts} attempts; the source may be down or "
            "rate-limiting: run the partition again later"
        )

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), self.max_backoff)
        return backoff_delay(attempt, self.backoff, self.max_backoff)

    def _slot(self, url: str) -> threading.BoundedSemaphore:
        host = urlsplit(url).netloc
        with self._slots_lock:
            if host not in self._slots:
                self._slots[host] = threading.BoundedSemaphore(self.per_host)
            return self._slots[host]


def _described(response: requests.Response, url: str) -> HeadResult:
    length = response.headers.get("Content-Length")
    return HeadResult(
        url=response.url or url,
        size=int(length) if length is not None else None,
        etag=response.headers.get("ETag"),
        last_modified=_iso(response.headers.get("Last-Modified")),
        accepts_ranges=response.headers.get("Accept-Ranges", "").lower() == "bytes",
    )


def backoff_delay(attempt: int, backoff: float, max_backoff: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, capped, and
    jittered so that clients failing together do not retry together."""
    return min(backoff * 2 ** (attempt - 1), max_backoff) * random.uniform(0.5, 1)


def _iso(http_date: str | None) -> str | None:
    if not http_date:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    return parsed.astimezone(UTC).isoformat() if parsed.tzinfo else parsed.isoformat()

"""Windowed reads of remote (Cloud-Optimized) GeoTIFFs over HTTP range requests.

GDAL reads the file through a Python file object whose bytes come from `HttpClient.get_range`,
so only the header and the tiles of the requested window cross the network (never the whole
file), with the client's retries and politeness. Fetched bytes are kept in aligned blocks, so
GDAL's many small header reads cost one request, and the source item is the checksum of exactly
the bytes read (the ranges in offset order).

>>> with open_remote_cog(HttpClient(), url) as cog:  # doctest: +SKIP
...     check_georeferencing(cog.dataset)
...     values = cog.read(Window(col_off=3600, row_off=400, width=120, height=90))
>>> cog.source  # doctest: +SKIP
SourceItem(uri=url, size=bytes read, sha256=of the ranges read, etag=..., last_modified=...)

Sidecar files (``.aux.xml``, ``.ovr``, ``.msk``, directory listings) that GDAL probes for are
answered locally as missing: the only remote path is the one opened.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.abc import MultiByteRangeResourceContainer
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from ref_assets.providers.http import HttpClient
from ref_assets.providers.protocol import ProviderError, SourceItem
from ref_assets.secrets import redact

# GDAL's own /vsicurl/ reads in 16 KiB chunks: a COG header fits in one, and a window's tiles are
# fetched whole with at most one partly used block at each end.
DEFAULT_BLOCK_SIZE = 16 * 1024
_VSI_PREFIX = re.compile(r"/vsiriopener_[0-9a-f]+/")


class CogReadError(ProviderError):
    """The remote file is not a readable GeoTIFF (truncated or corrupt) or lacks what was asked."""


@dataclass
class RangeCache:
    """The bytes of one remote file fetched so far, in aligned blocks shared by every handle GDAL
    opens on it. A failure while fetching is kept in ``error`` (GDAL's callbacks cannot raise)."""

    client: HttpClient
    url: str
    size: int
    block_size: int = DEFAULT_BLOCK_SIZE
    etag: str | None = None  # every range is asked If-Range this version
    blocks: dict[int, bytes] = field(default_factory=dict)
    error: ProviderError | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def read(self, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` (fewer at the end of the file)."""
        [data] = self.read_ranges([(start, length)])
        return data

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Each ``(start, length)``, fetching all missing blocks first with one request per run of
        consecutive blocks."""
        wanted = sorted(
            {
                block
                for start, length in ranges
                if length > 0 and start < self.size
                for block in range(
                    start // self.block_size,
                    (min(start + length, self.size) - 1) // self.block_size + 1,
                )
            }
        )
        with self._lock:
            missing = [block for block in wanted if block not in self.blocks]
            for first, last in _runs(missing):
                self._fetch(first, last)
            return [self._slice(start, length) for start, length in ranges]

    def _fetch(self, first: int, last: int) -> None:
        start = first * self.block_size
        end = min((last + 1) * self.block_size, self.size) - 1
        payload = self.client.get_range(self.url, start, end, if_range=self.etag)
        if len(payload) != end - start + 1:
            raise CogReadError(
                f"{redact(self.url)}: asked for bytes {start}-{end} and got {len(payload)} bytes; "
                "the file changed or the server truncated the answer"
            )
        for block in range(first, last + 1):
            offset = (block - first) * self.block_size
            self.blocks[block] = payload[offset : offset + self.block_size]

    def _slice(self, start: int, length: int) -> bytes:
        end = min(start + length, self.size)
        parts = []
        position = start
        while position < end:
            block, offset = divmod(position, self.block_size)
            chunk = self.blocks[block][offset : offset + end - position]
            parts.append(chunk)
            position += len(chunk)
        return b"".join(parts)

    def source_item(self, uri: str, etag: str | None, last_modified: str | None) -> SourceItem:
        """The checksum and size of the bytes read, in offset order."""
        digest = hashlib.sha256()
        size = 0
        for block in sorted(self.blocks):
            digest.update(self.blocks[block])
            size += len(self.blocks[block])
        return SourceItem(
            uri=uri,
            size=size,
            sha256=digest.hexdigest(),
            etag=etag,
            last_modified=last_modified,
        )


class _Handle(io.RawIOBase):
    """One seekable read handle on a `RangeCache` (GDAL may open several)."""

    def __init__(self, cache: RangeCache) -> None:
        self.cache = cache
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.cache.size}
        self.position = origin[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        length = self.cache.size - self.position if size < 0 else size
        try:
            data = self.cache.read(self.position, length)
        except ProviderError as err:
            self.cache.error = self.cache.error or err
            return b""  # a short read: GDAL fails, and the reader raises the kept error
        self.position += len(data)
        return data

    def get_byte_ranges(self, offsets: list[int], sizes: list[int]) -> list[bytes]:
        """GDAL's multi-range read of a window's tiles (all missing blocks fetched at once)."""
        try:
            end = max(offset + size for offset, size in zip(offsets, sizes, strict=True))
            if end > self.cache.size:  # tile offsets come from the file's own directory
                raise CogReadError(
                    f"{redact(self.cache.url)}: the file is truncated: its tiles reach byte "
                    f"{end} but it has {self.cache.size} bytes"
                )
            return self.cache.read_ranges(list(zip(offsets, sizes, strict=True)))
        except ProviderError as err:
            self.cache.error = self.cache.error or err
            # GDAL copies these into its buffers: same lengths, and the kept error is raised.
            return [bytes(size) for size in sizes]


class _SingleFile(MultiByteRangeResourceContainer):
    """Serves GDAL exactly one path; every other path GDAL probes (sidecars) does not exist."""

    def __init__(self, path: str, cache: RangeCache) -> None:
        self.path = path
        self.cache = cache

    def _check(self, path: str) -> None:
        if path != self.path:
            raise FileNotFoundError(path)

    def open(self, path: str, mode: str = "rb", **kwds) -> _Handle:
        self._check(path)
        return _Handle(self.cache)

    def isfile(self, path: str) -> bool:
        return path == self.path

    def isdir(self, path: str) -> bool:
        return False

    def ls(self, path: str) -> list[str]:
        return []

    def mtime(self, path: str) -> int:
        return 0

    def rm(self, path: str) -> None:
        raise PermissionError(path)

    def size(self, path: str) -> int:
        self._check(path)
        return self.cache.size


@dataclass
class RemoteCog:
    """An open remote GeoTIFF: its rasterio ``dataset`` (georeferencing, profile) and windowed
    reads; ``source`` is the source item of everything read (complete once closed)."""

    uri: str
    dataset: DatasetReader
    cache: RangeCache
    etag: str | None
    last_modified: str | None

    def read(self, window: Window, *, band: int = 1, nodata: float | None = None) -> np.ndarray:
        """The window's values as float32, no-data (the file's, else ``nodata``) as NaN."""
        with _translated(self.cache, "reading a window of"):
            values = self.dataset.read(band, window=window, boundless=False)
        missing = self.dataset.nodata if self.dataset.nodata is not None else nodata
        values = values.astype("float32")
        if missing is not None:
            values[values == np.float32(missing)] = np.nan
        return values

    @property
    def source(self) -> SourceItem:
        return self.cache.source_item(self.uri, self.etag, self.last_modified)


@contextmanager
def _translated(cache: RangeCache, doing: str) -> Iterator[None]:
    """Raise the network error kept by the cache, else a GDAL failure as a `CogReadError`."""
    try:
        yield
    except RasterioError as err:
        if cache.error is not None:
            raise cache.error from None
        # rasterio's message often defers to GDAL's ("see previous exception"), and names the
        # private path GDAL saw: show GDAL's words, about the URL.
        detail = _VSI_PREFIX.sub("", str(err.__cause__ or err))
        raise CogReadError(
            f"{redact(cache.url)}: GDAL failed {doing} the file (truncated or corrupt?): {detail}"
        ) from None
    if cache.error is not None:  # GDAL may carry on past a failed read with zeros
        raise cache.error


@contextmanager
def open_remote_cog(
    client: HttpClient, url: str, *, block_size: int = DEFAULT_BLOCK_SIZE
) -> Iterator[RemoteCog]:
    """Open ``url`` for windowed reads: one HEAD (size, ETag, Last-Modified), then range GETs.

    Raises `SourceNotFoundError` when the file is absent, `SourceUnavailableError` when the
    server fails, and `CogReadError` when the bytes are not a readable GeoTIFF.
    """
    head = client.head(url)
    if head.size is None:
        raise CogReadError(
            f"{redact(url)}: the server gave no Content-Length, needed for range reads"
        )
    cache = RangeCache(client, head.url, head.size, block_size, etag=head.etag)
    # GDAL sees the URL as a path below a private prefix; sidecars are answered as missing.
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        with _translated(cache, "opening"):
            dataset = rasterio.open(url, opener=_SingleFile(url, cache))
        with dataset:
            yield RemoteCog(url, dataset, cache, head.etag, head.last_modified)


def _runs(blocks: list[int]) -> Iterator[tuple[int, int]]:
    """Consecutive runs ``(first, last)`` of sorted block numbers."""
    first = previous = None
    for block in blocks:
        if previous is not None and block == previous + 1:
            previous = block
            continue
        if first is not None:
            yield first, previous
        first = previous = block
    if first is not None:
        yield first, previous

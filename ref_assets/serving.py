"""The datasets' stores over HTTP, read-only, with xpublish.

Each dataset is opened by `ref_assets.open_dataset` (``main``'s tip when the server starts, or a
release tag) and served under ``/datasets/<id>/``:

- ``zarr/``: the dataset as a Zarr v3 store (xpublish-zarr), one chunk per period as in the
  store: ``xr.open_zarr("http://HOST:PORT/datasets/<id>/zarr", zarr_format=3)``;
- ``edr/position?coords=POINT(lon lat)`` and ``edr/area?coords=POLYGON((...))``: OGC API EDR
  queries (xpublish-edr), with ``datetime``, ``parameter-name`` and ``f`` (csv, netcdf,
  cf_covjson, geojson, parquet);
- ``tiles/WebMercatorQuad/{z}/{y}/{x}?variables=t2m&style=raster/viridis&width=256&height=256
  &f=image/png``: OGC API Tiles map tiles (xpublish-tiles), with ``time`` and
  ``colorscalerange``; ``f`` must be given (xpublish-tiles 0.12 fails on its own default);
- ``/datasets`` lists them; ``/docs`` is the OpenAPI page.

Nothing is written: Icechunk read-only sessions, and only GET routes. The server binds loopback
unless told otherwise (`check_host`): it has no authentication.

>>> app = serving_app(served_datasets(load_settings()))  # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import PrivateAttr
from xpublish.plugins import hookimpl
from xpublish_zarr.plugin import ZarrPlugin

from ref_assets.config import Settings
from ref_assets.store.repository import StoreError

if TYPE_CHECKING:
    import xarray as xr
    import xpublish


class ServingError(ValueError):
    """A server that cannot start as asked; the message says what to do."""


@dataclass(frozen=True)
class ServedDatasets:
    """The datasets to serve (id -> lazily opened dataset), the Zarr store of the snapshot each
    was opened from (id -> Icechunk read-only store), and those left out, with why."""

    datasets: dict[str, xr.Dataset]
    sources: dict[str, Any]
    skipped: dict[str, str]


def served_datasets(
    settings: Settings, datasets: Iterable[str] | None = None, *, tag: str | None = None
) -> ServedDatasets:
    """Every dataset (default: all of the configuration) whose store holds periods, at
    ``main``'s tip or release ``tag``, chunked as stored; the others are in ``skipped``."""
    from ref_assets.catalog import load_catalog
    from ref_assets.reader import open_dataset
    from ref_assets.store import reader as store_reader
    from ref_assets.store.releases import resolve
    from ref_assets.store.repository import DatasetStore

    ids = sorted(datasets) if datasets is not None else sorted(load_catalog(settings).specs)
    opened, sources, skipped = {}, {}, {}
    for dataset_id in ids:
        store = DatasetStore(settings.storage_root, dataset_id)
        try:
            # One snapshot for the dataset and its chunks: main may move while the server runs.
            snapshot = resolve(store, tag) if tag else store.open().lookup_branch("main")
            data = open_dataset(dataset_id, snapshot, settings=settings)
        except StoreError as err:  # no store, no period, no such release
            skipped[dataset_id] = str(err)
            continue
        opened[dataset_id] = _chunked_as_stored(data)
        sources[dataset_id] = store_reader.session_for(store, snapshot).store
    return ServedDatasets(opened, sources, skipped)


def _chunked_as_stored(data: xr.Dataset) -> xr.Dataset:
    """``data`` as dask arrays in the store's chunks: xpublish-zarr then encodes one stored chunk
    per request (an in-memory array it would encode whole when the server starts)."""
    chunks: dict[str, int] = {}
    for variable in data.data_vars.values():
        chunks.update(variable.encoding.get("preferred_chunks", {}))
    return data.chunk(chunks)


def serving_app(served: ServedDatasets) -> xpublish.Rest:
    """The xpublish application serving ``served`` with its Zarr and EDR plugins."""
    import xpublish

    if not served.datasets:
        raise ServingError("no dataset to serve")
    # Named, not found by entry point, so that a plugin installed later is not served unasked
    # (xpublish-tiles also declares a WMS plugin).
    from xpublish.plugins.included.dataset_info import DatasetInfoPlugin
    from xpublish.plugins.included.module_version import ModuleVersionPlugin
    from xpublish.plugins.included.plugin_info import PluginInfoPlugin
    from xpublish_edr.plugin import CfEdrPlugin
    from xpublish_tiles.xpublish.tiles import TilesPlugin

    plugins = [
        StoredChunksZarrPlugin().serving(served),
        CfEdrPlugin(),
        TilesPlugin(),
        DatasetInfoPlugin(),
        ModuleVersionPlugin(),
        PluginInfoPlugin(),
    ]
    rest = xpublish.Rest(served.datasets, plugins={plugin.name: plugin for plugin in plugins})
    rest.app.middleware("http")(_refusing_points_off_the_grid(served))
    return rest


def _refusing_points_off_the_grid(served: ServedDatasets):
    """A middleware answering an EDR position query at a point off the dataset's grid with 404
    and why (xpublish-edr would answer with the nearest edge cell's series), by the rule
    extraction uses: a point more than half a cell beyond the cell centres."""
    from fastapi.responses import JSONResponse

    async def middleware(request, call_next):
        parts = request.url.path.strip("/").split("/")
        if (
            len(parts) == 4
            and parts[0] == "datasets"
            and parts[2:] == ["edr", "position"]
            and parts[1] in served.datasets
        ):
            problem = _off_the_grid(parts[1], served.datasets[parts[1]], request.query_params)
            if problem:
                return JSONResponse({"detail": problem}, status_code=404)
        return await call_next(request)

    return middleware


def _off_the_grid(dataset_id: str, data: xr.Dataset, query) -> str | None:
    """Why the ``coords`` of a position query in longitude and latitude lie off the grid of
    ``data`` (None: they do not, or the query or grid is in another CRS: xpublish-edr judges)."""
    import pyproj
    import shapely
    import shapely.wkt

    from ref_assets.extract.plan import nearest_cells
    from ref_assets.extract.request import ExtractionError

    if query.get("crs", "EPSG:4326").upper() not in ("EPSG:4326", "CRS84", "OGC:CRS84"):
        return None
    wkt = data["spatial_ref"].attrs.get("crs_wkt") if "spatial_ref" in data.coords else None
    if not wkt or pyproj.CRS.from_wkt(wkt).to_epsg() != 4326:
        return None
    try:
        geometry = shapely.wkt.loads(query.get("coords", ""))
    except shapely.errors.ShapelyError:
        return None  # xpublish-edr says what is wrong with it
    points = tuple((float(x), float(y)) for x, y, *_ in shapely.get_coordinates(geometry))
    try:
        nearest_cells(dataset_id, points, data["y"].values, data["x"].values)
    except ExtractionError as err:
        return str(err)
    return None


class StoredChunksZarrPlugin(ZarrPlugin):
    """xpublish-zarr's Zarr v3 endpoints, each chunk sent as the store holds it.

    xpublish-zarr builds a chunk by computing the variable's values there and encoding them
    again (a few ms of dask, decoding and encoding per chunk). Where the served array's encoding
    (data type, chunk grid and key encoding, codecs, fill value) is the stored array's, as it
    is for the arrays `served_datasets` opens, the stored bytes are that chunk already: they
    are sent as they are, read on the server's event loop, and a chunk the store never wrote is
    404, which Zarr readers take as the fill value. Any other array goes through xpublish-zarr's
    encoding."""

    # dataset id -> (the Icechunk store of its snapshot, the arrays whose chunks pass through)
    _stored: dict[str, tuple[Any, frozenset[str]]] = PrivateAttr(default_factory=dict)

    def serving(self, served: ServedDatasets) -> StoredChunksZarrPlugin:
        for dataset_id, data in served.datasets.items():
            source = served.sources[dataset_id]
            self._stored[dataset_id] = (source, _passing_through(data, source))
        return self

    @hookimpl
    def dataset_router(self, deps):
        from fastapi import HTTPException
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import Response
        from zarr.core.buffer import default_buffer_prototype

        router = super().dataset_router(deps)
        chunk_path = f"{self.dataset_router_prefix}/{{var}}/c/{{chunk:path}}"
        encoded = next(route for route in router.routes if route.path == chunk_path)
        router.routes.remove(encoded)

        @router.get("/{var}/c/{chunk:path}")
        async def get_chunk(dataset_id: str, var: str, chunk: str):
            """A chunk of ``var``: as stored, or encoded by xpublish-zarr."""
            source, passing = self._stored.get(dataset_id, (None, frozenset()))
            if var not in passing:
                return await run_in_threadpool(
                    _encoded_chunk,
                    encoded.endpoint,
                    var=var,
                    chunk=chunk,
                    dataset=deps.dataset(dataset_id),
                    cache=deps.cache(),
                )
            stored = await source.get(f"{var}/c/{chunk}", prototype=default_buffer_prototype())
            if stored is None:
                raise HTTPException(status_code=404, detail=f"{var}/c/{chunk}")
            return Response(stored.to_bytes(), media_type="application/octet-stream")

        return router


def _encoded_chunk(endpoint, **arguments):
    """xpublish-zarr's chunk. It encodes a chunk by writing it into a scratch store, where zarr
    by default skips a chunk that is all fill value (a period's sea, or never written), and the
    request then fails: here zarr writes it."""
    import zarr

    with zarr.config.set({"array.write_empty_chunks": True}):
        return endpoint(**arguments)


def _passing_through(data: xr.Dataset, source) -> frozenset[str]:
    """The arrays of ``data`` that xpublish-zarr would encode as ``source`` stores them."""
    import cachey
    from xpublish_zarr.utils import get_bytes, get_store
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    # The metadata xpublish-zarr serves (built from dask arrays: no values are read).
    served = get_store(data, cachey.Cache(available_bytes=0))
    same = set()
    for name in data.variables:
        mine = get_bytes(served, f"{name}/zarr.json")
        stored = sync(source.get(f"{name}/zarr.json", prototype=default_buffer_prototype()))
        if mine and stored and _chunk_encoding(mine) == _chunk_encoding(stored.to_bytes()):
            same.add(str(name))
    return frozenset(same)


# What decides a chunk's bytes in a Zarr v3 array's metadata (not its shape nor attributes).
_CHUNK_ENCODING = ("data_type", "chunk_grid", "chunk_key_encoding", "codecs", "fill_value")


def _chunk_encoding(metadata: bytes) -> dict:
    import json

    fields = json.loads(metadata)
    return {key: fields.get(key) for key in _CHUNK_ENCODING}


def check_host(host: str, *, allow_remote: bool) -> None:
    """Refuse an address other machines can reach unless ``allow_remote``: the server has no
    authentication, and every store it serves would be open to the network."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a host name: it may resolve to any interface
    if not loopback and not allow_remote:
        raise ServingError(
            f"--host {host} would let other machines read every served store, without "
            "authentication; serve on 127.0.0.1 (the default) behind a proxy that "
            "authenticates, or pass --allow-remote if this network is trusted"
        )


def run_server(served: ServedDatasets, *, host: str, port: int, log_level: str = "warning"):
    """Serve ``served`` on ``host:port`` until interrupted (SIGINT or SIGTERM)."""
    import uvicorn

    if not served.datasets:
        raise ServingError(
            "no store to serve: "
            + ("; ".join(served.skipped.values()) or "no datasets are configured")
        )
    config = uvicorn.Config(serving_app(served).app, host=host, port=port, log_level=log_level)
    uvicorn.Server(config).run()

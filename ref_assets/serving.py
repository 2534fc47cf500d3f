"""The datasets' stores over HTTP, read-only, with xpublish.

Each dataset is opened by `ref_assets.open_dataset` (``main``'s tip when the server starts, or a
release tag) and served under ``/datasets/<id>/``:

- ``zarr/``: the dataset as a Zarr v3 store (xpublish-zarr), one chunk per period as in the
  store: ``xr.open_zarr("http://HOST:PORT/datasets/<id>/zarr", zarr_format=3)``;
- ``edr/position?coords=POINT(lon lat)`` and ``edr/area?coords=POLYGON((...))``: OGC API EDR
  queries (xpublish-edr), with ``datetime``, ``parameter-name`` and ``f`` (csv, netcdf,
  cf_covjson, geojson, parquet);
- ``/datasets`` lists them; ``/docs`` is the OpenAPI page.

Nothing is written: Icechunk read-only sessions, and only GET routes. The server binds loopback
unless told otherwise (`check_host`): it has no authentication.

>>> app = serving_app(served_datasets(load_settings()).datasets)  # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ref_assets.config import Settings
from ref_assets.store.repository import StoreError

if TYPE_CHECKING:
    import xarray as xr
    import xpublish


class ServingError(ValueError):
    """A server that cannot start as asked; the message says what to do."""


@dataclass(frozen=True)
class ServedDatasets:
    """The datasets to serve (id -> lazily opened dataset) and those left out, with why."""

    datasets: dict[str, xr.Dataset]
    skipped: dict[str, str]


def served_datasets(
    settings: Settings, datasets: Iterable[str] | None = None, *, tag: str | None = None
) -> ServedDatasets:
    """Every dataset (default: all of the configuration) whose store holds periods, at
    ``main``'s tip or release ``tag``, chunked as stored; the others are in ``skipped``."""
    from ref_assets.catalog import load_catalog
    from ref_assets.reader import open_dataset

    ids = sorted(datasets) if datasets is not None else sorted(load_catalog(settings).specs)
    opened, skipped = {}, {}
    for dataset_id in ids:
        try:
            data = open_dataset(dataset_id, tag=tag, settings=settings)
        except StoreError as err:  # no store, no period, no such release
            skipped[dataset_id] = str(err)
            continue
        opened[dataset_id] = _chunked_as_stored(data)
    return ServedDatasets(opened, skipped)


def _chunked_as_stored(data: xr.Dataset) -> xr.Dataset:
    """``data`` as dask arrays in the store's chunks: xpublish-zarr then encodes one stored chunk
    per request (an in-memory array it would encode whole when the server starts)."""
    chunks: dict[str, int] = {}
    for variable in data.data_vars.values():
        chunks.update(variable.encoding.get("preferred_chunks", {}))
    return data.chunk(chunks)


def serving_app(datasets: dict[str, xr.Dataset]) -> xpublish.Rest:
    """The xpublish application serving ``datasets`` with its Zarr and EDR plugins."""
    import xpublish
    import zarr

    if not datasets:
        raise ServingError("no dataset to serve")
    # Plugins found by entry point: xpublish-zarr (zarr), xpublish-edr (cf_edr) and xpublish's
    # own listings; named so that a plugin installed later is not served unasked.
    from xpublish.plugins.included.dataset_info import DatasetInfoPlugin
    from xpublish.plugins.included.module_version import ModuleVersionPlugin
    from xpublish.plugins.included.plugin_info import PluginInfoPlugin
    from xpublish_edr.plugin import CfEdrPlugin
    from xpublish_zarr.plugin import ZarrPlugin

    # xpublish-zarr encodes a chunk by writing it to a scratch store, where zarr by default
    # skips a chunk that is all fill value (a period's sea, a period never written): the
    # request then fails. This process serves; writing every chunk costs nothing here.
    zarr.config.set({"array.write_empty_chunks": True})
    plugins = [
        ZarrPlugin(),
        CfEdrPlugin(),
        DatasetInfoPlugin(),
        ModuleVersionPlugin(),
        PluginInfoPlugin(),
    ]
    return xpublish.Rest(datasets, plugins={plugin.name: plugin for plugin in plugins})


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


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    datasets: Iterable[str] | None = None,
    tag: str | None = None,
    allow_remote: bool = False,
    log_level: str = "warning",
    announce=print,
) -> None:
    """Serve the datasets until interrupted (SIGINT or SIGTERM)."""
    import uvicorn

    check_host(host, allow_remote=allow_remote)
    served = served_datasets(settings, datasets, tag=tag)
    for dataset_id, reason in served.skipped.items():
        announce(f"not served: {dataset_id}: {reason}")
    if not served.datasets:
        raise ServingError(
            "no store to serve: "
            + ("; ".join(served.skipped.values()) or "no datasets are configured")
        )
    app = serving_app(served.datasets).app
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)
    server = uvicorn.Server(config)
    where = f"http://{host}:{port}"
    ref = f"release {tag}" if tag else "main"
    announce(
        f"serving {', '.join(served.datasets)} ({ref}) on {where}: "
        f"{where}/datasets/<id>/zarr (Zarr v3), {where}/datasets/<id>/edr/position|area "
        f"(OGC EDR), {where}/docs"
    )
    server.run()

"""``ref-assets serve``: the datasets' stores over HTTP, read-only (Zarr v3, OGC EDR, tiles).

ref-assets serve [DATASET ...] [--host 127.0.0.1] [--port 8000] [--tag NAME] [--allow-remote]
"""

from __future__ import annotations

import argparse
import sys

from ref_assets.cli.common import add_command, dataset_spec


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "serve",
        summary="serve the stores read-only over HTTP: Zarr v3, OGC EDR and map tiles (xpublish)",
        description="Serve each dataset's store (default: every dataset whose store holds "
        "periods), as main's tip when the server starts or as release --tag, under "
        "/datasets/<id>/: zarr/ (a Zarr v3 store: `xr.open_zarr(URL, zarr_format=3)`), "
        "edr/position and edr/area (OGC API EDR queries: coords=POINT(lon lat) or "
        "POLYGON((...)), datetime, parameter-name, f=csv|netcdf|cf_covjson|geojson|parquet), "
        "tiles/WebMercatorQuad/{z}/{y}/{x} (OGC API Tiles: PNG maps; variables, style, width, "
        "height, time, colorscalerange). "
        "/docs lists every route. Runs until interrupted.\n\nThe server has no "
        "authentication: it listens on 127.0.0.1 unless --host names another address and "
        "--allow-remote says the network is trusted.",
        examples=[
            "ref-assets serve",
            "ref-assets serve demo_air_temperature --port 8001 --tag v2024.1",
        ],
        prints_data=False,
    )
    parser.add_argument("datasets", nargs="*", metavar="DATASET", help="default: every dataset")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--tag", metavar="NAME", help="serve release NAME of each store")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other machines can reach (no authentication: trusted networks)",
    )
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    from ref_assets.config import load_settings
    from ref_assets.serving import check_host, serve

    check_host(args.host, allow_remote=args.allow_remote)  # before opening any store
    settings = load_settings()
    for dataset_id in args.datasets:
        dataset_spec(dataset_id, settings, store_may_outlive_spec=True)
    serve(
        settings,
        host=args.host,
        port=args.port,
        datasets=args.datasets or None,
        tag=args.tag,
        allow_remote=args.allow_remote,
        announce=lambda line: print(line, file=sys.stderr, flush=True),
    )
    return 0

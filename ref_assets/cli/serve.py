"""``ref-assets serve``: the datasets' stores over HTTP, read-only (Zarr v3, OGC EDR, tiles).

ref-assets serve [DATASET ...] [--host H] [--port 8000] [--tag NAME] [--allow-remote] [--json]
"""

from __future__ import annotations

import argparse
import sys

from ref_assets.cli.common import add_command, dataset_spec, print_json


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
        "height, f=image/png, time, colorscalerange). "
        "/docs lists every route. Runs until interrupted.\n\nThe server has no "
        "authentication: it listens on 127.0.0.1 unless --host names another address and "
        "--allow-remote says the network is trusted.\n\nWith --json, one JSON document on "
        "stdout once the datasets are open (url, datasets, skipped, tag), then the server's "
        "log on stderr.",
        examples=[
            "ref-assets serve",
            "ref-assets serve demo_air_temperature --port 8001 --tag v2024.1 --json",
        ],
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
    from ref_assets.serving import check_host, run_server, served_datasets

    check_host(args.host, allow_remote=args.allow_remote)  # before opening any store
    settings = load_settings()
    for dataset_id in args.datasets:
        dataset_spec(dataset_id, settings, store_may_outlive_spec=True)
    served = served_datasets(settings, args.datasets or None, tag=args.tag)
    url = f"http://{args.host}:{args.port}"
    if args.json and served.datasets:
        print_json(
            {
                "url": url,
                "datasets": sorted(served.datasets),
                "skipped": served.skipped,
                "tag": args.tag,
            }
        )
    else:
        for dataset_id, reason in served.skipped.items():
            print(f"not served: {dataset_id}: {reason}", file=sys.stderr)
        if served.datasets:
            ref = f"release {args.tag}" if args.tag else "main"
            print(
                f"serving {', '.join(served.datasets)} ({ref}) on {url}: "
                f"{url}/datasets/<id>/zarr (Zarr v3), {url}/datasets/<id>/edr/position|area "
                f"(OGC EDR), {url}/datasets/<id>/tiles (OGC Tiles), {url}/docs",
                file=sys.stderr,
                flush=True,
            )
    run_server(served, host=args.host, port=args.port)
    return 0

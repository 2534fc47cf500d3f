"""``ref-assets extract``: a subset of a dataset as NetCDF, Zarr or CSV in a staging area.

ref-assets extract DATASET [--bbox W S E N | --points LON,LAT ...] [--start P] [--end P]
                   [--vars V ...] [--format netcdf|zarr|csv] [--to DEST] [--tag T | --snapshot S]
ref-assets extract --clean [--to DEST]          # delete expired outputs, say what went
"""

from __future__ import annotations

import argparse
import sys

from ref_assets.cli.common import CommandError, add_command, dataset_spec, print_json


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "extract",
        summary="write a subset of a dataset (bbox or points, periods, variables) to a staging "
        "area as NetCDF, Zarr or CSV",
        description="Read a subset of the dataset's store, at main's tip, a --snapshot or a "
        "release --tag (pinned when the command starts: periods landing meanwhile are not "
        "read), and write it into the staging area (--to, default [extraction] staging in "
        "ref.toml) as DATASET/<key>-<random>.nc, .zarr or .csv, with a record "
        "DATASET/<key>.json beside it: the request, the snapshot, the checksum of each period "
        "record read, the output's sha256, when it was made and when it expires ([extraction] "
        "ttl_hours). The same request on the same snapshot reuses the staged output while it "
        "lives. Point series are read from the time-series copy wherever it holds the "
        "snapshot's periods.\n\n"
        "A request larger than [extraction] max_mib (MiB of values) is refused, naming its "
        "size; so is a range past what the snapshot holds or an unknown variable, naming what "
        "there is.\n\n--clean deletes the outputs that have expired (and what no record names, "
        "once older than the TTL: extractions that died) and lists them.",
        examples=[
            "ref-assets extract demo_air_temperature --bbox 30 -5 42 5 --start 2024-01-01 "
            "--end 2024-01-31",
            "ref-assets extract demo_air_temperature --points 36.8,-1.3 32.6,0.3 --format csv "
            "--to /srv/staging --json",
            "ref-assets extract demo_air_temperature --bbox 170 -20 -170 -10 --tag v2024.1 "
            "--format zarr",
            "ref-assets extract --clean",
        ],
    )
    parser.add_argument("dataset", nargs="?", help="a dataset id (see `ref-assets datasets`)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--bbox",
        nargs=4,
        type=float,
        metavar=("W", "S", "E", "N"),
        help="west south east north (degrees; W > E crosses the antimeridian)",
    )
    where.add_argument(
        "--points",
        nargs="+",
        metavar="LON,LAT",
        help="series at the nearest cell of each point",
    )
    parser.add_argument("--start", metavar="PERIOD", help="first period (default: the first)")
    parser.add_argument("--end", metavar="PERIOD", help="last period (default: the newest)")
    parser.add_argument("--vars", nargs="+", metavar="VAR", help="variables (default: all)")
    parser.add_argument(
        "--format", choices=["netcdf", "zarr", "csv"], default="netcdf", help="default: netcdf"
    )
    parser.add_argument(
        "--to",
        metavar="DEST",
        help="the staging area: a directory or s3://bucket/prefix (default: [extraction] staging)",
    )
    release = parser.add_mutually_exclusive_group()
    release.add_argument("--tag", help="read this release")
    release.add_argument("--snapshot", metavar="ID", help="read this snapshot")
    parser.add_argument(
        "--clean", action="store_true", help="delete expired outputs of the staging area"
    )
    parser.set_defaults(handler=extract)


def extract(args: argparse.Namespace) -> int:
    from ref_assets.config import load_settings

    settings = load_settings()
    if args.clean:
        return _clean(args, settings)
    if not args.dataset:
        raise CommandError("name a DATASET to extract from (or give --clean)")
    from ref_assets.extract import extract as run_extraction
    from ref_assets.extract import make_request

    dataset_spec(args.dataset, settings, store_may_outlive_spec=True)
    request = make_request(
        dataset=args.dataset,
        bbox=tuple(args.bbox) if args.bbox else None,
        points=_points(args.points) if args.points else None,
        start=args.start,
        end=args.end,
        variables=tuple(args.vars) if args.vars else None,
        format=args.format,
        snapshot=args.snapshot,
        tag=args.tag,
    )

    def progress(block, done: int, total: int) -> None:
        if not (args.json or total == 1):
            print(f"{args.dataset}: block {done}/{total} written", file=sys.stderr)

    result = run_extraction(request, settings=settings, staging=args.to, on_block=progress)
    record = result.record
    if args.json:
        print_json(
            {
                "dataset": args.dataset,
                "output": result.url,
                "record": result.record_url,
                "reused": result.reused,
                "snapshot": record["snapshot"],
                "tag": record["tag"],
                "bytes": record["bytes"],
                "sha256": record["sha256"],
                "expires": record["expires"],
            }
        )
        return 0
    how = "reused" if result.reused else "extracted"
    print(
        f"{args.dataset}: {how} {result.url} ({record['bytes']:,} bytes, {record['periods']} "
        f"periods from snapshot {record['snapshot']}"
        f"{' (release ' + record['tag'] + ')' if record['tag'] else ''}); sha256 "
        f"{record['sha256']}; expires {record['expires']}; record {result.record_url}"
    )
    return 0


def _points(texts: list[str]) -> tuple[tuple[float, float], ...]:
    points = []
    for text in texts:
        try:
            lon, lat = (float(part) for part in text.split(","))
        except ValueError:
            raise CommandError(
                f"--points {text!r}: give each point as LON,LAT in degrees (e.g. 36.8,-1.3)"
            ) from None
        points.append((lon, lat))
    return tuple(points)


def _clean(args: argparse.Namespace, settings) -> int:
    from ref_assets.extract import clean_staging

    if args.dataset:
        raise CommandError("--clean cleans the whole staging area: give no DATASET")
    report = clean_staging(settings, staging=args.to)
    if args.json:
        print_json(report.as_json())
        return 0
    for item in report.removed:
        when = f", expired {item.expired_at}" if item.expired_at else ""
        print(f"removed {item.url} ({item.bytes:,} bytes, {item.reason}{when})")
    print(
        f"{report.staging}: removed {len(report.removed)} output(s), {report.bytes_freed:,} "
        f"bytes; kept {report.kept}"
    )
    return 0

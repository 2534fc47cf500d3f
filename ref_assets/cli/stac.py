"""``ref-assets stac``: write the STAC catalogue of the datasets' stores.

ref-assets stac --to DIR [DATASET ...] [--tag NAME]   # catalog.json + one collection per dataset
"""

from __future__ import annotations

import argparse

from ref_assets.cli.common import CommandError, add_command, dataset_spec, print_json


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "stac",
        summary="write the STAC catalogue: a collection per dataset store, under catalog.json",
        description="Describe each dataset's store as a STAC collection (datacube extension: "
        "dimensions with their extents and steps, variables with their units; temporal and "
        "spatial extent of what the store holds; an asset for the Icechunk repository with "
        "its snapshot and branch or tag) and write them, with the root catalog.json linking "
        "them, to --to: a directory or s3://bucket/prefix. Datasets whose store holds no "
        "period yet are left out and named.",
        examples=[
            "ref-assets stac --to /srv/stac",
            "ref-assets stac --to s3://bucket/stac demo_air_temperature --tag v2024.1 --json",
        ],
    )
    parser.add_argument("datasets", nargs="*", metavar="DATASET", help="default: every dataset")
    parser.add_argument("--to", required=True, metavar="DIR", help="a directory or s3:// URL")
    parser.add_argument(
        "--tag", metavar="NAME", help="describe release NAME of each store, not main's tip"
    )
    parser.set_defaults(handler=write)


def write(args: argparse.Namespace) -> int:
    from ref_assets.catalog import load_catalog
    from ref_assets.catalog_stac import build_catalog, write_catalog
    from ref_assets.config import load_settings

    settings = load_settings()
    datasets = {
        dataset_id: dataset_spec(dataset_id, settings, store_may_outlive_spec=True)
        for dataset_id in args.datasets
    } or load_catalog(settings).specs
    built = build_catalog(settings.storage_root, datasets, tag=args.tag)
    collections = sorted(child.id for child in built.catalog.get_children())
    if not collections:
        reasons = "; ".join(built.skipped.values()) or "no datasets are configured"
        raise CommandError(f"no store to describe: {reasons}")
    files = write_catalog(built.catalog, args.to)
    root = next(name for name in files if name.endswith("catalog.json"))
    if args.json:
        print_json(
            {"catalog": root, "collections": collections, "files": files, "skipped": built.skipped}
        )
        return 0
    print(f"STAC catalogue {root}: {len(collections)} collections ({', '.join(collections)})")
    for dataset_id, reason in built.skipped.items():
        print(f"  left out {dataset_id}: {reason}")
    return 0

"""``ref-assets timeseries``: bring a dataset's time-series copy up to date from the command line.

ref-assets timeseries DATASET [--start P] [--end P]   # rewrite the time chunks that changed

Dagster's `timeseries/<dataset>` asset does the same on its own once the daemon runs; this is for
stores written without one (`ref-assets materialize` alone) and for checking what an update does.
"""

from __future__ import annotations

import argparse

from ref_assets.cli.common import CommandError, add_command, dataset_spec, print_json


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "timeseries",
        summary="update a dataset's time-series copy from its store (the time chunks that changed)",
        description="Compare, for each time chunk of the dataset's time-series copy in the range, "
        "the checksums it was built from with the per-period records, and rewrite exactly the "
        "chunks that differ (new or revised periods), in one commit of the copy; build the copy "
        "if there is none. The spec must have a `timeseries` section.\n\nThe range defaults to "
        "every stored period.",
        examples=[
            "ref-assets timeseries demo_air_temperature",
            "ref-assets timeseries demo_air_temperature --start 2024-01-01 --end 2024-12-31 --json",
        ],
    )
    parser.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    parser.add_argument("--start", metavar="PERIOD", help="first period (default: the first)")
    parser.add_argument("--end", metavar="PERIOD", help="last period (default: the newest)")
    parser.set_defaults(handler=update)


def update(args: argparse.Namespace) -> int:
    from ref_assets.config import load_settings
    from ref_assets.periods import Period
    from ref_assets.store.layout import StoreLayoutError
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.timeseries import timeseries_store, update_timeseries

    settings = load_settings()
    spec = dataset_spec(args.dataset, settings)
    indices = None
    if args.start or args.end:
        first, stop = 0, None  # defaults: the first period; the newest stored one
        if args.start:
            first = spec.time_index(Period.from_text(spec.period, args.start, dataset=spec.id))
        if args.end:
            stop = spec.time_index(Period.from_text(spec.period, args.end, dataset=spec.id)) + 1
        indices = (first, stop)
    store = DatasetStore(settings.storage_root, spec.id)
    copy = timeseries_store(store)
    try:
        with copy.reporting("updating the time-series copy"):
            result = update_timeseries(spec, store, run_id="cli", indices=indices)
    except StoreLayoutError as err:  # a changed chunking: the message says what to do
        raise CommandError(str(err)) from None
    if args.json:
        print_json(
            {
                "dataset": spec.id,
                "store": copy.location,
                "chunks_checked": len(result.checked),
                "chunks_rewritten": result.chunks,
                "periods": result.periods,
                "upstream_snapshot": result.upstream_snapshot,
                "snapshot": result.snapshot,
            }
        )
        return 0
    if result.chunks:
        print(
            f"{spec.id}: time-series copy: rewrote {len(result.chunks)} of "
            f"{len(result.checked)} time chunks ({result.periods} periods) from snapshot "
            f"{result.upstream_snapshot} of the store; commit {result.snapshot}"
        )
    else:
        print(f"{spec.id}: time-series copy: all {len(result.checked)} time chunks current")
    return 0

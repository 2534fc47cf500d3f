"""``ref-assets rebuild`` and ``ref-assets rechunk``: rewrite a store through a branch.

ref-assets rebuild DATASET                    # lay the store out for the spec, fetch every period
ref-assets rechunk DATASET [--chunks y=N,x=N] # other spatial chunks, every period copied

Both keep the annotations (stashed first, restored onto the branch) and publish only a branch
whose every period verifies; see `ref_assets.rebuild`.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime

from ref_assets.cli.common import (
    CommandError,
    add_command,
    add_quiet,
    dataset_spec,
    print_json,
    wants_progress,
)

# What each stage of `ref_assets.rebuild.STAGES` does, as the progress lines say it.
STAGE_TEXT = {
    "stash": "stashing the annotations",
    "discard": "discarding branches left by earlier tries",
    "branch": "branching off main",
    "layout": "laying out the new arrays on the branch",
    "fill": "filling the branch",
    "restore": "restoring the annotations onto the branch",
    "verify": "verifying every period on the branch against its record",
    "publish": "publishing the branch as main (replaying what landed meanwhile)",
    "clear": "clearing the annotation stash",
}


def add_commands(commands: argparse._SubParsersAction) -> None:
    rebuild = add_command(
        commands,
        "rebuild",
        summary="rebuild a store for its changed spec (grid, variables, dtype...) on a branch, "
        "then publish it",
        description="After a spec change the store cannot take (a new grid, variables, dtype, "
        "units, extra dimensions, start, time block), lay the store out anew on a branch, "
        "fetch every period main holds again from the provider with the new spec, restore "
        "the annotations, verify every period against its record, and move main to the "
        "branch only if main did not move meanwhile; otherwise the periods that landed on "
        "main are fetched again onto the branch first. The annotations are stashed on local "
        "disk until it is published. Killed or failing, it leaves main as it was: run it "
        "again. A spec that fits the store changes nothing.",
        examples=["ref-assets rebuild era5_land_east_africa"],
    )
    rebuild.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    add_quiet(rebuild)
    rebuild.set_defaults(handler=_rebuild)
    rechunk = add_command(
        commands,
        "rechunk",
        summary="give a store other spatial chunks on a branch (every period copied), then "
        "publish it",
        description="Recreate the variables with other spatial chunks on a branch, copy every "
        "period from main (values and records unchanged, so every checksum stays valid), "
        "verify them and publish the branch as rebuild does. Without --chunks, the spec's "
        "chunks; chunks larger than the grid are capped to it, saying so. The spec must fit "
        "the store but for its chunks: the provider is asked for the grid, and a spec that "
        "differs otherwise (a grid changed in params too) is refused, naming rebuild. Along "
        "time a chunk is always one period (runs write distinct periods at once); for long "
        "series at points, give the spec a `timeseries` section.",
        examples=[
            "ref-assets rechunk demo_air_temperature --chunks y=50,x=50",
            "ref-assets rechunk demo_air_temperature",
        ],
    )
    rechunk.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    rechunk.add_argument(
        "--chunks", metavar="y=N,x=N", help="cells a side of a chunk (default: the spec's)"
    )
    add_quiet(rechunk)
    rechunk.set_defaults(handler=_rechunk)


def _rebuild(args: argparse.Namespace) -> int:
    from ref_assets.providers.registry import installed_providers
    from ref_assets.rebuild import rebuild_dataset

    spec, store, settings = _dataset(args)
    provider = installed_providers(settings.providers).create(spec)
    show = _stages(args)
    result = _reported(
        lambda: rebuild_dataset(
            spec,
            provider,
            store,
            settings=settings,
            run_id=_run_id("rebuild"),
            on_stage=show,
            on_progress=_fill_progress(args, spec.id),
        )
    )
    return _summary(args, result, "rebuilt", "fetched again")


def _rechunk(args: argparse.Namespace) -> int:
    from ref_assets.rebuild import parse_chunks, rechunk_dataset

    spec, store, settings = _dataset(args)
    chunks = parse_chunks(spec.id, args.chunks) if args.chunks else None
    description = _description(spec, settings)
    result = _reported(
        lambda: rechunk_dataset(
            spec,
            store,
            chunks=chunks,
            description=description,
            settings=settings,
            run_id=_run_id("rechunk"),
            on_stage=_stages(args),
        )
    )
    y, x = result.chunks
    return _summary(args, result, f"rechunked to chunks y={y}, x={x}", "copied")


def _description(spec, settings):
    """The provider's description of ``spec`` (its grid), for a rechunk to compare the whole
    structure with the store's; None, said on stderr, when the provider cannot be built here
    (then only the spec's own fields are compared)."""
    from ref_assets.providers.protocol import ProviderError
    from ref_assets.providers.registry import installed_providers

    try:
        return installed_providers(settings.providers).create(spec).describe()
    except (ProviderError, OSError) as err:
        print(
            f"{spec.id}: warning: the provider cannot describe the grid here ({err}); only the "
            "spec's own fields are compared with the store, so a grid changed in params is not "
            "noticed",
            file=sys.stderr,
        )
        return None


def _dataset(args: argparse.Namespace):
    from ref_assets.config import load_settings
    from ref_assets.store.repository import DatasetStore

    settings = load_settings()
    spec = dataset_spec(args.dataset, settings)
    return spec, DatasetStore(settings.storage_root, spec.id), settings


def _reported(rewrite):
    from ref_assets.store.layout import StoreLayoutError

    try:
        return rewrite()
    except StoreLayoutError as err:  # the spec asks for more than a store holds: it says what
        raise CommandError(str(err)) from None


def _run_id(purpose: str) -> str:
    return f"{purpose}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}"


def _stages(args: argparse.Namespace):
    """A line on stderr as each stage begins (none with --json or --quiet)."""
    number = {stage: n for n, stage in enumerate(STAGE_TEXT, start=1)}

    def show(stage: str) -> None:
        if wants_progress(args):
            print(
                f"{args.dataset}: [{number[stage]}/{len(number)}] {STAGE_TEXT[stage]}",
                file=sys.stderr,
                flush=True,
            )

    return show


def _fill_progress(args: argparse.Namespace, dataset_id: str):
    from ref_assets.cli.progress import Progress

    progress: Progress | None = None

    def update(done: int, total: int) -> None:
        nonlocal progress
        if progress is None:
            progress = Progress(dataset_id, total, enabled=wants_progress(args))
        progress.update(done)
        if done >= total:
            progress.finish()

    return update


def _summary(args: argparse.Namespace, result, done: str, how: str) -> int:
    if args.json:
        print_json(
            {
                "dataset": result.dataset_id,
                "action": result.purpose,
                "published": result.published is not None,
                "snapshot": result.published,
                "periods": result.periods,
                "dropped": result.dropped,
                "replayed": result.replayed,
                "annotations": result.annotations,
                "chunks": list(result.chunks) if result.chunks else None,
                "stash_cleared": result.stash_cleared,
                "note": result.note,
            }
        )
        return 0
    if result.published is None:
        print(result.note)
        return 0
    print(
        f"{result.dataset_id}: {done}: {result.periods} periods {how}, "
        f"{result.replayed} replayed from updates that landed meanwhile; main is now snapshot "
        f"{result.published}; {result.annotations} operator annotations kept; stash cleared"
    )
    if result.purpose == "rebuild":
        print(
            f"{result.dataset_id}: the periods have new checksums: `ref-assets sync-instance "
            f"{result.dataset_id}` shows them to the Dagster instance"
        )
    if result.note:  # what is left to do (the time-series copy)
        print(result.note)
    if result.dropped:
        print(
            f"{result.dataset_id}: {len(result.dropped)} periods the spec no longer covers were "
            f"left out: {', '.join(result.dropped[:10])}{'...' if len(result.dropped) > 10 else ''}"
        )
    return 0

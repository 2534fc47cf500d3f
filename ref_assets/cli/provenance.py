"""``ref-assets provenance | verify | reproduce | sync-instance``: provenance from the command line.

ref-assets provenance DATASET PERIOD [--json]      # one period's record
ref-assets provenance export DATASET DEST          # <period>.record.json files (dir or URL)
ref-assets verify DATASET [--period P ...] [--tag NAME]   # stored values (and copy) vs records
ref-assets reproduce DATASET PERIOD                # fetch again, rebuild, compare
ref-assets sync-instance [DATASET ...]             # tell Dagster what the stores hold
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ref_assets.cli.common import (
    CommandError,
    add_command,
    add_quiet,
    dataset_spec,
    print_json,
    wants_progress,
)

if TYPE_CHECKING:  # the rest is imported by the commands: `--help` stays fast
    from ref_assets.provenance import ProvenanceRecord


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The provenance commands, added to ref-assets' subcommands."""
    parser = add_command(
        commands,
        "provenance",
        summary="show a period's provenance record, or export every record",
        description="Show the provenance record of one stored period: its sources (URI, size, "
        "SHA-256), output checksum, provider, spec fingerprint, run and package versions. "
        "`provenance export` writes every record of a dataset as <period>.record.json files "
        "into a directory or an fsspec URL.",
        examples=[
            "ref-assets provenance demo_air_temperature 2024-01-02",
            "ref-assets provenance era5_land_east_africa 2024-01-01T05:00 --json",
            "ref-assets provenance export demo_air_temperature ./records",
        ],
        usage="ref-assets provenance DATASET PERIOD [--json]\n"
        "       ref-assets provenance export DATASET DEST [--json]",
    )
    parser.add_argument("words", nargs="+", metavar="DATASET PERIOD | export DATASET DEST")
    parser.set_defaults(handler=provenance)

    parser = add_command(
        commands,
        "verify",
        summary="recompute each stored period's checksum and compare it with its record",
        description="Read back every stored period (or only --period ones), recompute its "
        "output checksum and compare it with its record; a progress line (periods/s, ETA) is "
        "printed on stderr. Without --period, the dataset's time-series copy (if it has one) "
        "is checked too: each time chunk's recorded checksums against the records, and its "
        "values against the per-period store's.\n\nExit status 0: every period verified, or "
        "the store holds none yet; 1: a mismatch (each named); 2: the store cannot be read.",
        examples=[
            "ref-assets verify demo_air_temperature",
            "ref-assets verify demo_air_temperature --period 2024-01-02 --json",
            "ref-assets verify demo_air_temperature --tag v2024.1",
        ],
    )
    parser.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    parser.add_argument(
        "--period", action="append", metavar="PERIOD", help="only this period (repeatable)"
    )
    parser.add_argument(
        "--tag",
        metavar="NAME",
        help="verify release NAME (`ref-assets tag`) instead of main's tip; the time-series "
        "copy, which follows main, is not checked then",
    )
    add_quiet(parser)
    parser.set_defaults(handler=verify)

    parser = add_command(
        commands,
        "reproduce",
        summary="fetch a period again, rebuild it in memory and compare with its record",
        description="Fetch the period's inputs again, rebuild it in memory (nothing is written) "
        'and tell apart "the source changed" (input SHA-256s differ), "the result changed" '
        "(same inputs, other output: the differences in spec, code or versions are listed) and "
        '"reproduced". Exit status 1 unless reproduced.',
        examples=["ref-assets reproduce demo_air_temperature 2024-01-02"],
    )
    parser.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    parser.add_argument("period", help="a partition key or its start in ISO form")
    parser.set_defaults(handler=reproduce)

    parser = add_command(
        commands,
        "sync-instance",
        summary="report the periods the stores hold to the Dagster instance of DAGSTER_HOME",
        description="Report a materialization, with its record and its checksum as data "
        "version, for every stored period the Dagster instance does not know (or knows with "
        "another checksum): after DAGSTER_HOME was wiped, the UI sees the same partitions again. "
        "Running it twice reports nothing the second time.",
        examples=["DAGSTER_HOME=$PWD/.dagster ref-assets sync-instance demo_air_temperature"],
    )
    parser.add_argument("datasets", nargs="*", metavar="DATASET", help="default: every dataset")
    parser.set_defaults(handler=sync_instance)


def provenance(args: argparse.Namespace) -> int:
    from ref_assets.config import load_settings
    from ref_assets.provenance import export_records, read_provenance
    from ref_assets.secrets import redact

    if args.words[0] == "export":
        if len(args.words) != 3:
            raise CommandError("usage: ref-assets provenance export DATASET DEST")
        _, dataset_id, destination = args.words
        dataset_spec(dataset_id, load_settings(), store_may_outlive_spec=True)
        count = export_records(dataset_id, destination)
        if args.json:
            print_json(
                {"dataset": dataset_id, "destination": redact(destination), "records": count}
            )
        else:
            print(f"{dataset_id}: {count} records written to {redact(destination)}")
        return 0
    if len(args.words) != 2:
        raise CommandError("usage: ref-assets provenance DATASET PERIOD [--json]")
    dataset_spec(args.words[0], load_settings(), store_may_outlive_spec=True)
    record = read_provenance(*args.words)
    if args.json:
        print_json(record.model_dump(mode="json", exclude_none=True))
    else:
        print(describe_record(record))
    return 0


def describe_record(record: ProvenanceRecord) -> str:
    """A record for people to read."""
    versions = ", ".join(f"{name} {v}" for name, v in (record.versions or {}).items())
    lines = [
        f"{record.dataset} {record.period} (time index {record.time_index})",
        f"  output checksum  {record.checksum}",
        f"  provider         {record.provider} {record.provider_version}",
        f"  code version     {record.code_version or 'not recorded'}",
        f"  spec             fingerprint {record.spec_fingerprint}",
        f"  run              {record.run_id}",
        f"  fetched at       {record.fetched_at or 'not recorded'}",
        f"  written at       {record.written_at}",
        f"  versions         {versions or 'not recorded'}",
        f"  sources ({len(record.sources)}):",
    ]
    for source in record.sources:
        extra = "".join(
            f" {label} {value}"
            for label, value in (("etag", source.etag), ("last-modified", source.last_modified))
            if value
        )
        lines.append(f"    {source.uri}  {source.size} bytes  sha256 {source.sha256}{extra}")
    lines.append("  variables:")
    for name, info in record.variables.items():
        shape = "x".join(map(str, info.shape))
        stats = (
            "no finite values"
            if info.minimum is None
            else f"min {info.minimum} mean {info.mean} max {info.maximum}"
        )
        lines.append(
            f"    {name} [{info.units}] {info.dtype} {shape}  {stats}  "
            f"NaN fraction {info.nan_fraction:.3f}"
        )
    if record.flags:  # per-step source flags, such as ERA5's expver
        lines.append("  flags            " + ", ".join(f"{k} {v}" for k, v in record.flags.items()))
    return "\n".join(lines)


def verify(args: argparse.Namespace) -> int:
    from ref_assets.cli.progress import Progress
    from ref_assets.config import load_settings
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.timeseries import timeseries_store
    from ref_assets.verification import verify_dataset, verify_timeseries

    settings = load_settings()
    dataset_spec(args.dataset, settings, store_may_outlive_spec=True)
    store = DatasetStore(settings.storage_root, args.dataset)
    snapshot = None
    if args.tag:
        from ref_assets.store.releases import resolve

        snapshot = resolve(store, args.tag)
    progress: Progress | None = None  # once the number of periods to read is known

    def checked(done: int, total: int) -> None:
        nonlocal progress
        if progress is None:
            progress = Progress(args.dataset, total, enabled=wants_progress(args))
        progress.update(done)

    try:
        with store.reporting("verifying the store"):
            checks = verify_dataset(
                args.dataset, periods=args.period, snapshot=snapshot, on_progress=checked
            )
    finally:
        if progress is not None:
            progress.finish()
    # The time-series copy is checked whole, against the whole per-period store.
    copy = timeseries_store(store)
    with copy.reporting("verifying the time-series copy"):
        chunks = None if args.period or args.tag else verify_timeseries(args.dataset)
    failed = [check for check in checks if not check.ok]
    failed_chunks = [check for check in chunks or [] if not check.ok]
    status = 1 if failed or failed_chunks else 0
    if args.json:
        print_json(
            {
                "dataset": args.dataset,
                "store": store.location,
                "release": args.tag,  # None: main's tip
                "snapshot": snapshot,
                "checked": len(checks),
                "verified": len(checks) - len(failed),
                "mismatches": [
                    {
                        "period": check.period,
                        "problem": check.problem,
                        "recorded": check.recorded,
                        "recomputed": check.recomputed,
                    }
                    for check in failed
                ],
                "timeseries": None
                if chunks is None
                else {
                    "store": copy.location,
                    "checked": len(chunks),
                    "verified": len(chunks) - len(failed_chunks),
                    "mismatches": [
                        {
                            "chunk": check.chunk,
                            "first": check.first,
                            "last": check.last,
                            "problem": check.problem,
                        }
                        for check in failed_chunks
                    ],
                },
            }
        )
        return status
    if not checks and not args.period:
        # Nothing stored cannot mismatch: not a failure, but never a silent "0 of 0".
        print(store.no_periods_yet())
        return 0
    for check in failed:
        print(
            f"MISMATCH {args.dataset} {check.period}: {check.problem} "
            f"(record {check.recorded}, store {check.recomputed})"
        )
    what = f"{args.dataset} release {args.tag} (snapshot {snapshot})" if args.tag else args.dataset
    print(f"{what}: {len(checks) - len(failed)} of {len(checks)} periods verified")
    if chunks is not None:
        for check in failed_chunks:
            print(
                f"MISMATCH {args.dataset} time series, chunk {check.chunk} "
                f"({check.first}..{check.last}): {check.problem}"
            )
        print(
            f"{args.dataset}: time-series copy: {len(chunks) - len(failed_chunks)} of "
            f"{len(chunks)} time chunks verified ({sum(c.periods for c in chunks)} periods)"
        )
    return status


def reproduce(args: argparse.Namespace) -> int:
    from ref_assets.config import load_settings
    from ref_assets.providers.registry import installed_providers
    from ref_assets.verification import reproduce_period

    settings = load_settings()
    spec = dataset_spec(args.dataset, settings)
    result = reproduce_period(
        spec, installed_providers(settings.providers), args.period, settings=settings
    )
    reproduced = result.inputs_identical and result.output_identical
    if args.json:
        print_json(
            {
                "dataset": result.dataset,
                "period": result.period,
                "verdict": result.verdict,
                "reproduced": reproduced,
                "inputs_identical": result.inputs_identical,
                "changed_inputs": result.changed_inputs,
                "output_identical": result.output_identical,
                "recorded_checksum": result.recorded.checksum,
                "rebuilt_checksum": result.rebuilt_checksum,
                "notes": result.notes,
            }
        )
        return 0 if reproduced else 1
    print(f"{result.dataset} {result.period}: {result.verdict}")
    print(f"  inputs: {'identical' if result.inputs_identical else 'CHANGED'}")
    for change in result.changed_inputs:
        print(f"    {change}")
    print(
        f"  output: {'identical' if result.output_identical else 'CHANGED'} "
        f"(record {result.recorded.checksum}, rebuilt {result.rebuilt_checksum})"
    )
    for note in result.notes:
        print(f"  note: {note}")
    return 0 if reproduced else 1


def sync_instance(args: argparse.Namespace) -> int:
    import dagster as dg

    from ref_assets.catalog import load_catalog
    from ref_assets.config import load_settings
    from ref_assets.defs.instance_sync import sync_instance as sync

    if not os.environ.get("DAGSTER_HOME"):
        raise CommandError("set DAGSTER_HOME to the Dagster instance to sync")
    settings = load_settings()
    dataset_ids = args.datasets or sorted(load_catalog(settings).specs)
    with dg.DagsterInstance.get() as instance:
        reports = sync(instance, dataset_ids, settings=settings)
    if args.json:
        print_json(
            {
                dataset_id: {
                    "store_exists": report.store_exists,
                    "present": report.present,
                    "reported": report.reported,
                }
                for dataset_id, report in reports.items()
            }
        )
        return 0
    for dataset_id, report in reports.items():
        if not report.store_exists:
            print(f"{dataset_id}: no store yet, nothing to report")
            continue
        print(
            f"{dataset_id}: {report.present} periods in the store, {report.reported} "
            "materializations reported"
        )
    return 0

"""``ref-assets provenance | verify | reproduce | sync-instance``: provenance from the command line.

ref-assets provenance DATASET PERIOD [--json]      # one period's record
ref-assets provenance export DATASET DEST          # <period>.record.json files (dir or URL)
ref-assets verify DATASET [--period P ...]         # stored values against their records
ref-assets reproduce DATASET PERIOD                # fetch again, rebuild, compare
ref-assets sync-instance [DATASET ...]             # tell Dagster what the stores hold
"""

from __future__ import annotations

import argparse
import os

from ref_assets.catalog import load_catalog
from ref_assets.cli.config import CommandError
from ref_assets.config import load_settings
from ref_assets.provenance import ProvenanceRecord, export_records, read_provenance
from ref_assets.providers.registry import installed_providers
from ref_assets.secrets import redact
from ref_assets.store.repository import DatasetStore
from ref_assets.verification import reproduce_period, verify_dataset


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The provenance commands, added to ref-assets' subcommands."""
    parser = commands.add_parser(
        "provenance",
        help="show a period's provenance record, or export every record",
        usage="ref-assets provenance DATASET PERIOD [--json]\n"
        "       ref-assets provenance export DATASET DEST",
    )
    parser.add_argument("words", nargs="+", metavar="DATASET PERIOD | export DATASET DEST")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    parser.set_defaults(handler=provenance)

    parser = commands.add_parser(
        "verify", help="recompute each stored period's checksum and compare it with its record"
    )
    parser.add_argument("dataset")
    parser.add_argument(
        "--period", action="append", metavar="P", help="only this period (repeatable)"
    )
    parser.set_defaults(handler=verify)

    parser = commands.add_parser(
        "reproduce", help="fetch a period again, rebuild it in memory and compare with its record"
    )
    parser.add_argument("dataset")
    parser.add_argument("period")
    parser.set_defaults(handler=reproduce)

    parser = commands.add_parser(
        "sync-instance",
        help="report the periods the stores hold to the Dagster instance of DAGSTER_HOME",
    )
    parser.add_argument("datasets", nargs="*", metavar="DATASET", help="default: every dataset")
    parser.set_defaults(handler=sync_instance)


def provenance(args: argparse.Namespace) -> int:
    if args.words[0] == "export":
        if len(args.words) != 3:
            raise CommandError("usage: ref-assets provenance export DATASET DEST")
        _, dataset_id, destination = args.words
        count = export_records(dataset_id, destination)
        print(f"{dataset_id}: {count} records written to {redact(destination)}")
        return 0
    if len(args.words) != 2:
        raise CommandError("usage: ref-assets provenance DATASET PERIOD [--json]")
    record = read_provenance(*args.words)
    if args.json:
        print(record.model_dump_json(indent=2, exclude_none=True))
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
    store = DatasetStore(load_settings().storage_root, args.dataset)
    with store.reporting("verifying the store"):
        checks = verify_dataset(args.dataset, periods=args.period)
    if not checks and not args.period:
        # Nothing stored cannot mismatch: not a failure, but never a silent "0 of 0".
        print(store.no_periods_yet())
        return 0
    failed = [check for check in checks if not check.ok]
    for check in failed:
        print(
            f"MISMATCH {args.dataset} {check.period}: {check.problem} "
            f"(record {check.recorded}, store {check.recomputed})"
        )
    print(f"{args.dataset}: {len(checks) - len(failed)} of {len(checks)} periods verified")
    return 1 if failed else 0


def reproduce(args: argparse.Namespace) -> int:
    settings = load_settings()
    spec = load_catalog(settings).get(args.dataset)
    result = reproduce_period(
        spec, installed_providers(settings.providers), args.period, settings=settings
    )
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
    return 0 if result.inputs_identical and result.output_identical else 1


def sync_instance(args: argparse.Namespace) -> int:
    import dagster as dg

    from ref_assets.defs.instance_sync import sync_instance as sync

    if not os.environ.get("DAGSTER_HOME"):
        raise CommandError("set DAGSTER_HOME to the Dagster instance to sync")
    settings = load_settings()
    dataset_ids = args.datasets or sorted(load_catalog(settings).specs)
    with dg.DagsterInstance.get() as instance:
        reports = sync(instance, dataset_ids, settings=settings)
    for dataset_id, report in reports.items():
        if not report.store_exists:
            print(f"{dataset_id}: no store yet, nothing to report")
            continue
        print(
            f"{dataset_id}: {report.present} periods in the store, {report.reported} "
            "materializations reported"
        )
    return 0

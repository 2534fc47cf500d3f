"""``ref-assets``: the command line.

ref-assets datasets                                  # the datasets and any broken specs
ref-assets template [NAME]                           # example specs to start a dataset from
ref-assets status DATASET [--start P] [--end P]      # present and missing periods
ref-assets materialize DATASET --start P [--end P]   # run partitions with the Dagster instance
ref-assets instance init                             # create the Dagster instance of DAGSTER_HOME
ref-assets config show|validate|set KEY VALUE        # the effective configuration
ref-assets providers list|prune [--dry-run]          # declared providers and their state
ref-assets provenance DATASET PERIOD | export DATASET DEST   # period records
ref-assets verify DATASET | reproduce DATASET PERIOD  # stored data against its records
ref-assets sync-instance [DATASET ...]               # report the stores to the Dagster instance
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib import resources

from ref_assets.catalog import load_catalog
from ref_assets.cli import config as config_cli
from ref_assets.cli import provenance as provenance_cli
from ref_assets.cli.config import CommandError
from ref_assets.config import ConfigError, load_settings
from ref_assets.defs.instance_init import InstanceInitError
from ref_assets.periods import Period, PeriodError
from ref_assets.provenance import ProvenanceNotFoundError
from ref_assets.providers.protocol import ProviderError, periods_between
from ref_assets.reader import dataset_status
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec, SpecCatalog, UnknownDatasetError
from ref_assets.store.repository import DatasetStore, StoreError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (
        CommandError,
        ConfigError,
        StoreError,
        PeriodError,
        UnknownDatasetError,
        ProvenanceNotFoundError,
        ProviderError,
        InstanceInitError,
        OSError,
    ) as err:
        # Masked again here: an OSError's text may carry a path or URL with credentials.
        print(f"ref-assets: error: {redact(str(err))}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ref-assets", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    datasets = commands.add_parser("datasets", help="list the datasets and any broken specs")
    datasets.set_defaults(handler=_datasets)

    template = commands.add_parser(
        "template",
        help="list the packaged example specs, or print one to start a dataset from",
    )
    template.add_argument("name", nargs="?", help="a template (one per provider)")
    template.set_defaults(handler=_template)

    status = commands.add_parser("status", help="list present and missing periods of a dataset")
    status.add_argument("dataset")
    status.add_argument("--start", help="first period key (default: the dataset's start)")
    status.add_argument("--end", help="last period key (default: the newest complete period)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)

    materialize = commands.add_parser(
        "materialize",
        help="materialize a range of partitions in this process, recorded in the Dagster "
        "instance of DAGSTER_HOME",
    )
    materialize.add_argument("dataset")
    materialize.add_argument("--start", required=True, help="first period key")
    materialize.add_argument("--end", help="last period key (default: --start)")
    materialize.set_defaults(handler=_materialize)

    instance = commands.add_parser(
        "instance", help="the Dagster instance of DAGSTER_HOME (init: create it before runs)"
    )
    instance_commands = instance.add_subparsers(required=True, metavar="ACTION")
    init = instance_commands.add_parser(
        "init",
        help="create the instance (dagster.yaml and every storage) once, under a lock, so that "
        "runs started at once on a new DAGSTER_HOME do not race creating it; safe to repeat",
    )
    init.set_defaults(handler=_instance_init)

    config_cli.add_commands(commands)
    provenance_cli.add_commands(commands)
    return parser


def _catalog() -> SpecCatalog:
    return load_catalog(load_settings())


def _period_range(spec: DatasetSpec, start: str, end: str | None) -> list[Period]:
    first = spec.period_for_key(start)
    last = spec.period_for_key(end) if end else first
    if last < first:
        raise CommandError(f"{spec.id}: --end {last.key} is before --start {first.key}")
    return periods_between(first, last)


def _datasets(args: argparse.Namespace) -> int:
    catalog = _catalog()
    for dataset_id, spec in sorted(catalog.specs.items()):
        end = spec.period.key(spec.end) if spec.end else "ongoing"
        print(
            f"{dataset_id}\t{spec.provider}\t{spec.period.value}\t"
            f"{spec.period.key(spec.start)}..{end}\t{catalog.sources[dataset_id]}"
        )
    for error in catalog.errors:
        print(f"broken spec: {error}", file=sys.stderr)
    return 1 if catalog.errors else 0


def _template(args: argparse.Namespace) -> int:
    templates = resources.files("ref_assets").joinpath("data", "templates")
    names = sorted(
        p.name.removesuffix(".yaml") for p in templates.iterdir() if p.name.endswith(".yaml")
    )
    if args.name is None:
        print("\n".join(names))
        return 0
    if args.name not in names:
        raise CommandError(f"no template {args.name!r} (templates: {', '.join(names)})")
    settings = load_settings()
    path = settings.resolve_path(f"packaged:ref_assets/data/templates/{args.name}.yaml")
    print(path.read_text(encoding="utf-8"), end="")
    print(
        f"# save as {settings.user_spec_dir}/<id>.yaml, then edit id, title and params",
        file=sys.stderr,
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    spec = _catalog().specs.get(args.dataset)
    if spec is None and (args.start or args.end):
        raise CommandError(
            f"{args.dataset}: no spec is loaded for this dataset, so --start/--end cannot be read; "
            "run without them to see the whole store"
        )
    settings = load_settings()
    start = spec.period_for_key(args.start).start if spec and args.start else None
    end = spec.period_for_key(args.end).start if spec and args.end else (spec.end if spec else None)
    status = dataset_status(args.dataset, start=start, end=end, settings=settings)
    location = DatasetStore(settings.storage_root, args.dataset).location
    if args.json:
        print(
            json.dumps(
                {
                    "dataset": args.dataset,
                    "store": location,
                    "present": [p.key for p in status.present],
                    "missing": [p.key for p in status.missing],
                },
                indent=2,
            )
        )
        return 0
    if status.first is None:
        print(f"{args.dataset}: the store at {location} holds no periods yet")
        return 0
    total = len(status.present) + len(status.missing)
    print(
        f"{args.dataset}: {len(status.present)} of {total} periods present from "
        f"{status.first.key} to {status.last.key} (store: {location})"
    )
    print(f"present: {_ranges(status.present)}")
    print(f"missing: {_ranges(status.missing)}")
    return 0


def _ranges(periods: list[Period]) -> str:
    """Consecutive periods folded into ``first..last`` runs."""
    if not periods:
        return "none"
    runs: list[list[Period]] = [[periods[0], periods[0]]]
    for period in periods[1:]:
        if period.start == runs[-1][1].end:
            runs[-1][1] = period
        else:
            runs.append([period, period])
    return ", ".join(a.key if a == b else f"{a.key}..{b.key}" for a, b in runs)


def _instance_init(args: argparse.Namespace) -> int:
    from ref_assets.defs.instance_init import dagster_home, init_instance

    report = init_instance(dagster_home())
    config = "written (ref_assets' defaults)" if report.config_written else "kept"
    print(f"Dagster instance ready in {report.home}")
    print(f"  {report.home / 'dagster.yaml'}: {config}")
    for storage in report.storages:
        print(f"  {storage}")
    return 0


def _materialize(args: argparse.Namespace) -> int:
    import dagster as dg

    from ref_assets.definitions import build_definitions
    from ref_assets.defs.assets import range_run_tags
    from ref_assets.defs.instance_init import dagster_home, init_instance

    spec = _catalog().get(args.dataset)
    periods = _period_range(spec, args.start, args.end)
    if os.environ.get("DAGSTER_HOME"):
        init_instance(dagster_home())  # other runs may be starting on a new instance too
        instance = dg.DagsterInstance.get()
    else:
        print("DAGSTER_HOME is not set: runs are recorded in a temporary instance", file=sys.stderr)
        instance = dg.DagsterInstance.ephemeral()
    job = build_definitions().resolve_implicit_job_def_def_for_assets([dg.AssetKey(spec.id)])
    size = spec.runs.max_partitions_per_run or len(periods)
    chunks = [periods[i : i + size] for i in range(0, len(periods), size)]
    failed_runs = []
    with instance:
        for chunk in chunks:
            span = f"{chunk[0].key}..{chunk[-1].key}"
            result = job.execute_in_process(
                asset_selection=[dg.AssetKey(spec.id)],
                instance=instance,
                raise_on_error=False,
                # One run for the whole chunk, as a UI backfill with this policy would launch.
                tags=range_run_tags(chunk[0].key, chunk[-1].key),
                # The instance records every event; the console gets progress and problems.
                run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
            )
            state = "ok" if result.success else "FAILED"
            print(f"{spec.id} {span} ({len(chunk)} periods): {state} (run {result.run_id})")
            if not result.success:
                failed_runs.append(span)
    if failed_runs:
        print(
            f"{spec.id}: runs failed for {', '.join(failed_runs)}; periods committed before a "
            f"failure are kept (see `ref-assets status {spec.id}`)",
            file=sys.stderr,
        )
        return 1
    return 0

"""``ref-assets``: the command line.

ref-assets datasets                                  # the datasets and any broken specs
ref-assets template [NAME]                           # example specs to start a dataset from
ref-assets status DATASET [--start P] [--end P]      # present and missing periods
ref-assets materialize DATASET --start P [--end P]   # run partitions with the Dagster instance
ref-assets backfill DATASET --start P [--end P]     # queue a backfill for the Dagster daemon
ref-assets instance init [--mode M]                  # create the Dagster instance of DAGSTER_HOME
ref-assets instance config [--mode M]                # print a deployment mode's dagster.yaml
ref-assets config show|validate|set KEY VALUE        # the effective configuration
ref-assets providers list|prune [--dry-run]          # declared providers and their state
ref-assets provenance DATASET PERIOD | export DATASET DEST   # period records
ref-assets verify DATASET | reproduce DATASET PERIOD  # stored data against its records
ref-assets sync-instance [DATASET ...]               # report the stores to the Dagster instance
ref-assets annotate DATASET [VARIABLE] --label ...   # the data dictionary, committed and logged
ref-assets rebuild DATASET                           # rebuild the store for a changed spec
ref-assets rechunk DATASET [--chunks y=N,x=N]        # other spatial chunks, periods copied
ref-assets tag DATASET NAME | --list                 # releases: immutable, citable snapshots
ref-assets maintain DATASET [--keep-last N] [--dry-run]   # expire old snapshots, collect garbage
ref-assets stac --to DIR [DATASET ...] [--tag NAME]  # the STAC catalogue of the stores
ref-assets serve [DATASET ...] [--port N] [--tag NAME]   # the stores over HTTP: Zarr, OGC EDR
ref-assets extract DATASET [--bbox W S E N | --points LON,LAT ...] [--format F] [--to DEST]
ref-assets extract --clean                           # delete expired staged extractions

Modules are imported by the command that needs them, so that ``--help`` and ``--version`` answer
at once (importing the library, xarray and Dagster takes seconds).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ref_assets.cli import annotations as annotations_cli
from ref_assets.cli import config as config_cli
from ref_assets.cli import extract as extract_cli
from ref_assets.cli import maintain as maintain_cli
from ref_assets.cli import provenance as provenance_cli
from ref_assets.cli import rebuild as rebuild_cli
from ref_assets.cli import serve as serve_cli
from ref_assets.cli import stac as stac_cli
from ref_assets.cli import timeseries as timeseries_cli
from ref_assets.cli.common import (
    CommandError,
    HelpFormatter,
    add_command,
    add_quiet,
    dataset_spec,
    json_output,
    print_json,
    wants_progress,
)

if TYPE_CHECKING:
    from ref_assets.periods import Period, PeriodRanges
    from ref_assets.specs import DatasetSpec, SpecCatalog

# Shown by --version after ref-assets itself: what a bug report needs.
VERSIONED_PACKAGES = ("dagster", "icechunk", "xarray", "zarr")

DESCRIPTION = """\
Analysis-ready climate datasets as time-partitioned Dagster assets on Icechunk: list datasets,
materialize periods, check stores and their provenance, manage settings.

Periods are named by their partition key (2024-01-01-13:00, 2024-01-01, 2024-01, 2024) or by their
start in ISO form (2024-01-01T13:00, 2024-01-01T13:00:00Z). Every command that prints data takes
--json (one JSON document on stdout); `ref-assets COMMAND --help` shows a command's options and an
example."""

EXAMPLES = """\
Examples:
  ref-assets datasets
  ref-assets materialize demo_air_temperature --start 2024-01-01 --end 2024-03-31
  ref-assets status demo_air_temperature --json"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # The handler's own level: inside a run Dagster sets ref_assets' loggers to the instance's
    # python_log_level (INFO), and those lines reach the console through Dagster's logger already.
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[console])
    try:
        with json_output(getattr(args, "json", False)):
            return args.handler(args)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        from ref_assets.secrets import redact

        # Masked again here: an OSError's text may carry a path or URL with credentials.
        print(f"ref-assets: error: {redact(str(err))}", file=sys.stderr)
        return 2


# Failures shown as one line without a traceback, besides CommandError and OSError: module, class.
USER_ERRORS = (
    ("ref_assets.annotations", "AnnotationError"),
    ("ref_assets.config", "ConfigError"),
    ("ref_assets.extract.request", "ExtractionError"),
    ("ref_assets.periods", "PeriodError"),
    ("ref_assets.provenance", "ProvenanceNotFoundError"),
    ("ref_assets.providers.protocol", "ProviderError"),
    ("ref_assets.serving", "ServingError"),
    ("ref_assets.specs", "UnknownDatasetError"),
    ("ref_assets.store.repository", "StoreError"),
)


def _user_errors() -> tuple[type[Exception], ...]:
    """The classes of `USER_ERRORS` whose modules are loaded: an error of any other cannot have
    been raised, and importing their modules (xarray, icechunk) would only delay the message."""
    loaded = [
        getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules
    ]
    return (CommandError, OSError, *loaded)


def version_text() -> str:
    """ref-assets' version and those of the packages it builds on, one per line."""
    from importlib.metadata import PackageNotFoundError, version

    from ref_assets import __version__

    lines = [f"ref-assets {__version__}"]
    for name in VERSIONED_PACKAGES:
        try:
            lines.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            lines.append(f"{name} not installed")
    lines.append(f"Python {platform.python_version()}")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    """``--version``, its text read from package metadata only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ref-assets",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the versions of ref-assets, dagster, icechunk, xarray and zarr, and exit",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    datasets = add_command(
        commands,
        "datasets",
        summary="list the datasets and any broken specs",
        description="List every dataset (packaged and yours): its provider, period, range and "
        "spec file.\n\nSpecs that fail to load are reported on stderr, and the exit status is 1.",
        examples=["ref-assets datasets", "ref-assets datasets --json"],
    )
    datasets.set_defaults(handler=_datasets)

    template = add_command(
        commands,
        "template",
        summary="list the packaged example specs, or print one to start a dataset from",
        description="Without NAME, list the example specs (one per provider); with NAME, print "
        "that spec to save into your datasets directory and edit.",
        examples=[
            "ref-assets template",
            "ref-assets template chirps3 > $REF_CONFIGURATION/datasets/my_chirps.yaml",
        ],
    )
    template.add_argument("name", nargs="?", help="a template (one per provider)")
    template.set_defaults(handler=_template)

    status = add_command(
        commands,
        "status",
        summary="list present and missing periods of a dataset",
        description="Read the dataset's store (not Dagster's event log) and list which periods "
        "of a range it holds, and whether the spec still fits the store (the fields that "
        "changed, and `ref-assets rebuild`; other chunks, and `ref-assets rechunk`).\n\nThe "
        "range defaults to the dataset's start and its last period.",
        examples=[
            "ref-assets status demo_air_temperature --start 2024-01-01 --end 2024-01-31",
            "ref-assets status era5_land_east_africa --start 2024-01-01T00:00 --json",
        ],
    )
    status.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    status.add_argument(
        "--start", metavar="PERIOD", help="first period (default: the dataset's start)"
    )
    status.add_argument(
        "--end", metavar="PERIOD", help="last period (default: the dataset's last period)"
    )
    status.set_defaults(handler=_status)

    materialize = add_command(
        commands,
        "materialize",
        summary="materialize a range of partitions in this process, recorded in the Dagster "
        "instance of DAGSTER_HOME",
        description="Run the dataset's asset for the periods --start..--end in this process, as "
        "one Dagster run (or runs of `runs.max_partitions_per_run` periods), recorded in the "
        "instance of DAGSTER_HOME.\n\nA progress line (periods done, periods/s, ETA) is printed "
        "on stderr after each commit; Dagster's own log shows warnings and errors only, unless "
        "--log-level says otherwise.",
        examples=[
            "ref-assets materialize demo_air_temperature --start 2024-01-01 --end 2024-03-31",
            "ref-assets materialize era5_land_east_africa --start 2024-01-01T00:00 "
            "--end 2024-01-01T23:00",
        ],
    )
    materialize.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    materialize.add_argument("--start", required=True, metavar="PERIOD", help="first period")
    materialize.add_argument("--end", metavar="PERIOD", help="last period (default: --start)")
    materialize.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="Dagster's console log level (default: WARNING; DEBUG shows every event)",
    )
    add_quiet(materialize)
    materialize.set_defaults(handler=_materialize)

    instance = add_command(
        commands,
        "instance",
        summary="the Dagster instance of DAGSTER_HOME (init: create it before runs)",
        description="Manage the Dagster instance that DAGSTER_HOME points to.",
        examples=["DAGSTER_HOME=$PWD/.dagster ref-assets instance init"],
        prints_data=False,
    )
    instance_commands = instance.add_subparsers(required=True, metavar="ACTION")
    init = add_command(
        instance_commands,
        "init",
        summary="create the instance (dagster.yaml and every storage) once, under a lock; safe "
        "to repeat",
        description="Create the instance once, under a file lock: write ref_assets' dagster.yaml "
        "for --mode if there is none, and create the run, event-log and schedule storage with "
        "every table, so that runs started at once on a new DAGSTER_HOME do not race creating "
        "them. Then give each dataset pool its limit (`runs.pool_limit`, else the provider's).\n\n"
        "Modes: local (SQLite in DAGSTER_HOME, runs as local subprocesses), production "
        "(PostgreSQL from DAGSTER_PG_HOST, _PORT, _USER, _PASSWORD, _DB; queued runs limited per "
        "dataset and provider), cluster (production, each run in its own Docker container).",
        examples=[
            "DAGSTER_HOME=/srv/dagster ref-assets instance init",
            "DAGSTER_HOME=/srv/dagster DAGSTER_PG_HOST=db ... ref-assets instance init --mode "
            "production",
        ],
    )
    init.add_argument(
        "--mode",
        choices=["local", "production", "cluster"],
        help="the deployment mode whose dagster.yaml to write when there is none (default: "
        "local); an existing one of another mode is an error, never replaced",
    )
    init.set_defaults(handler=_instance_init)
    show_config = add_command(
        instance_commands,
        "config",
        summary="print a mode's dagster.yaml (to write one elsewhere, e.g. into an image)",
        description="Print the dagster.yaml that `instance init --mode` writes, without touching "
        "any instance: for an image or a Helm value. No connection parameter is in it: each "
        "process reads them from its environment.",
        examples=["ref-assets instance config --mode cluster > $DAGSTER_HOME/dagster.yaml"],
    )
    show_config.add_argument(
        "--mode",
        choices=["local", "production", "cluster"],
        default="local",
        help="(default: local)",
    )
    show_config.set_defaults(handler=_instance_config)

    backfill = add_command(
        commands,
        "backfill",
        summary="queue a backfill of --start..--end for the Dagster daemon, tagged for the "
        "instance's run limits",
        description="Queue a backfill of the dataset's partitions --start..--end in the instance "
        "of DAGSTER_HOME; the daemon (`dagster-daemon run`, or `./dev ui`) cuts it into runs of "
        "`runs.max_partitions_per_run` periods and launches them as the run queue, the per-"
        "dataset and per-provider limits and the provider's pool allow. Prints the backfill id; "
        "the UI shows its progress.",
        examples=[
            "ref-assets backfill chirps3_east_africa --start 2024-01-01 --end 2024-12-31",
        ],
    )
    backfill.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    backfill.add_argument("--start", required=True, metavar="PERIOD", help="first period")
    backfill.add_argument("--end", metavar="PERIOD", help="last period (default: --start)")
    backfill.set_defaults(handler=_backfill)

    config_cli.add_commands(commands)
    provenance_cli.add_commands(commands)
    timeseries_cli.add_commands(commands)
    annotations_cli.add_commands(commands)
    rebuild_cli.add_commands(commands)
    maintain_cli.add_commands(commands)
    stac_cli.add_commands(commands)
    serve_cli.add_commands(commands)
    extract_cli.add_commands(commands)
    return parser


def _catalog() -> SpecCatalog:
    from ref_assets.catalog import load_catalog
    from ref_assets.config import load_settings

    return load_catalog(load_settings())


def _period_range(spec: DatasetSpec, start: str, end: str | None) -> list[Period]:
    from ref_assets.providers.protocol import periods_between

    first = spec.period_for_key(start)
    last = spec.period_for_key(end) if end else first
    if last < first:
        raise CommandError(f"{spec.id}: --end {last.key} is before --start {first.key}")
    return periods_between(first, last)


def _datasets(args: argparse.Namespace) -> int:
    catalog = _catalog()
    rows = [
        {
            "id": dataset_id,
            "provider": spec.provider,
            "period": spec.period.value,
            "start": spec.period.key(spec.start),
            "end": spec.period.key(spec.end) if spec.end else None,
            "spec_file": str(catalog.sources[dataset_id]),
        }
        for dataset_id, spec in sorted(catalog.specs.items())
    ]
    errors = [str(error) for error in catalog.errors]
    if args.json:
        print_json({"datasets": rows, "broken_specs": errors})
    else:
        for row in rows:
            print(
                f"{row['id']}\t{row['provider']}\t{row['period']}\t"
                f"{row['start']}..{row['end'] or 'ongoing'}\t{row['spec_file']}"
            )
    for error in errors:
        print(f"broken spec: {error}", file=sys.stderr)
    return 1 if errors else 0


def _template(args: argparse.Namespace) -> int:
    from importlib import resources

    from ref_assets.config import load_settings

    templates = resources.files("ref_assets").joinpath("data", "templates")
    names = sorted(
        p.name.removesuffix(".yaml") for p in templates.iterdir() if p.name.endswith(".yaml")
    )
    if args.name is None:
        if args.json:
            print_json({"templates": names})
        else:
            print("\n".join(names))
        return 0
    if args.name not in names:
        raise CommandError(f"no template {args.name!r} (templates: {', '.join(names)})")
    settings = load_settings()
    path = settings.resolve_path(f"packaged:ref_assets/data/templates/{args.name}.yaml")
    text = path.read_text(encoding="utf-8")
    save_as = f"{settings.user_spec_dir}/<id>.yaml"
    if args.json:
        print_json({"template": args.name, "spec": text, "save_as": save_as})
        return 0
    print(text, end="")
    print(f"# save as {save_as}, then edit id, title and params", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    from ref_assets.config import load_settings
    from ref_assets.reader import dataset_status
    from ref_assets.store.repository import DatasetStore

    settings = load_settings()
    spec = dataset_spec(args.dataset, settings, store_may_outlive_spec=True)
    if spec is None and (args.start or args.end):
        raise CommandError(
            f"{args.dataset}: no spec is loaded for this dataset, so --start/--end cannot be read; "
            "run without them to see the whole store"
        )
    start = spec.period_for_key(args.start).start if spec and args.start else None
    end = spec.period_for_key(args.end).start if spec and args.end else (spec.end if spec else None)
    status = dataset_status(args.dataset, start=start, end=end, settings=settings)
    location = DatasetStore(settings.storage_root, args.dataset).location
    stored = _stored_structure(args.dataset, settings) if spec is not None else None
    changed = _structure_changes(spec, stored) if stored else []
    if args.json:
        print_json(
            {
                "dataset": args.dataset,
                "store": location,
                "first": status.first.key if status.first else None,
                "last": status.last.key if status.last else None,
                "present": status.present.keys(),
                "missing": status.missing.keys(),
                "structure_changed": changed,
            }
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
    if changed:
        print(
            f"structure: the spec no longer fits the store ({', '.join(changed)} changed): "
            f"writes are refused; `ref-assets rebuild {spec.id}` rebuilds the store for it"
        )
    if stored and (note := _chunks_note(spec, stored)):
        print(note)
    return 0


def _stored_structure(dataset_id: str, settings) -> dict | None:
    """The structure the store was laid out with (None: no layout yet)."""
    from ref_assets.store import reader as store_reader
    from ref_assets.store.layout import open_laid_out_root
    from ref_assets.store.repository import DatasetStore

    store = DatasetStore(settings.storage_root, dataset_id)
    group = open_laid_out_root(store_reader.session_for(store).store)
    return None if group is None else group.attrs["ref_assets"]["structure"]


def _structure_changes(spec: DatasetSpec, stored: dict) -> list[str]:
    """The fields the spec alone decides (`layout.spec_structure`: no provider call, so status
    stays fast) in which it differs from the store; the grid, which only the provider knows, is
    not compared, and the chunks have their own line."""
    from ref_assets.store.layout import incompatible_changes, spec_structure

    expected = spec_structure(spec)
    changes = incompatible_changes({k: stored.get(k) for k in expected}, expected)
    return changes[0].split(", ") if changes else []


def _chunks_note(spec: DatasetSpec, structure: dict) -> str | None:
    """A line when the store's spatial chunks differ from the spec's (writes go into the
    store's; `ref-assets rechunk` changes them)."""
    from ref_assets.store.layout import spatial_chunks

    stored = tuple(structure["chunks"])
    wanted = spatial_chunks(spec.chunks.y, spec.chunks.x, structure["grid_shape"])
    if stored == wanted:
        return None
    return (
        f"chunks: the store's are y={stored[0]}, x={stored[1]}, the spec's y={wanted[0]}, "
        f"x={wanted[1]}; `ref-assets rechunk {spec.id}` gives the store the spec's"
    )


def _ranges(periods: PeriodRanges) -> str:
    """Consecutive periods folded into ``first..last`` runs."""
    runs = periods.run_keys()
    if not runs:
        return "none"
    return ", ".join(a if a == b else f"{a}..{b}" for a, b in runs)


def _init_instance(mode: str | None = None, with_pools: bool = False):
    """The instance of DAGSTER_HOME, created if need be (an `InstanceReport`); with
    ``with_pools``, every dataset pool gets its limit."""
    from ref_assets.config import load_settings
    from ref_assets.defs.instance_init import InstanceInitError, dagster_home, init_instance
    from ref_assets.pools import configured_pools

    pools = configured_pools(load_settings()) if with_pools else ()
    try:
        return init_instance(dagster_home(), mode, pools)
    except InstanceInitError as err:
        raise CommandError(str(err)) from None


def _instance_init(args: argparse.Namespace) -> int:
    report = _init_instance(args.mode, with_pools=True)
    config = f"written ({report.mode} mode)" if report.config_written else f"kept ({report.mode})"
    if args.json:
        print_json(
            {
                "home": str(report.home),
                "config_file": str(report.home / "dagster.yaml"),
                "config_written": report.config_written,
                "mode": report.mode,
                "storages": list(report.storages),
                "pools": [
                    {
                        "pool": pool.pool,
                        "limit": pool.limit,
                        "origin": pool.origin,
                        "datasets": list(pool.datasets),
                    }
                    for pool in report.pools
                ],
                "pools_changed": list(report.pools_changed),
            }
        )
        return 0
    print(f"Dagster instance ready in {report.home}")
    print(f"  {report.home / 'dagster.yaml'}: {config}")
    for storage in report.storages:
        print(f"  {storage}")
    for pool in report.pools:
        limit = "unlimited" if pool.limit is None else f"{pool.limit} at once ({pool.origin})"
        print(f"  pool {pool.pool}: {limit}; {', '.join(pool.datasets)}")
    return 0


def _instance_config(args: argparse.Namespace) -> int:
    from ref_assets.defs.instance_init import instance_config

    text = instance_config(args.mode)
    if args.json:
        print_json({"mode": args.mode, "config": text})
    else:
        sys.stdout.write(text)
    return 0


def _backfill(args: argparse.Namespace) -> int:
    import dagster as dg

    from ref_assets.defs.backfills import submit_backfill

    spec = _catalog().get(args.dataset)
    periods = _period_range(spec, args.start, args.end)
    _init_instance()
    with dg.DagsterInstance.get() as instance:
        backfill = submit_backfill(instance, spec, periods[0].key, periods[-1].key)
    if args.json:
        print_json(
            {"dataset": spec.id, "periods": len(periods), "backfill_id": backfill.backfill_id}
        )
    else:
        print(
            f"{spec.id} {periods[0].key}..{periods[-1].key} ({len(periods)} periods): backfill "
            f"{backfill.backfill_id} queued for the daemon (UI: /runs/b/{backfill.backfill_id})"
        )
    return 0


def _materialize(args: argparse.Namespace) -> int:
    import dagster as dg

    from ref_assets.cli.progress import Progress
    from ref_assets.config import load_settings
    from ref_assets.definitions import build_definitions
    from ref_assets.defs.assets import range_run_tags
    from ref_assets.store.writer import observing_commits

    spec = dataset_spec(args.dataset, load_settings())
    periods = _period_range(spec, args.start, args.end)
    if os.environ.get("DAGSTER_HOME"):
        _init_instance()  # other runs may be starting on a new instance too
        instance = dg.DagsterInstance.get()
    else:
        print("DAGSTER_HOME is not set: runs are recorded in a temporary instance", file=sys.stderr)
        instance = dg.DagsterInstance.ephemeral()
    job = build_definitions().resolve_implicit_job_def_def_for_assets([dg.AssetKey(spec.id)])
    size = spec.runs.max_partitions_per_run or len(periods)
    chunks = [periods[i : i + size] for i in range(0, len(periods), size)]
    runs = []
    progress = Progress(spec.id, len(periods), enabled=wants_progress(args))
    with instance, progress, observing_commits(lambda receipts: progress.advance(len(receipts))):
        for chunk in chunks:
            result = job.execute_in_process(
                asset_selection=[dg.AssetKey(spec.id)],
                instance=instance,
                raise_on_error=False,
                # One run for the whole chunk, as a UI backfill with this policy would launch.
                tags=range_run_tags(chunk[0].key, chunk[-1].key),
                # The instance records every event; the console shows what needs attention, so
                # that the progress line stays readable.
                run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
            )
            runs.append(
                {
                    "first": chunk[0].key,
                    "last": chunk[-1].key,
                    "periods": len(chunk),
                    "run_id": result.run_id,
                    "success": result.success,
                }
            )
    failed = [f"{run['first']}..{run['last']}" for run in runs if not run["success"]]
    if args.json:
        print_json(
            {"dataset": spec.id, "periods": len(periods), "runs": runs, "success": not failed}
        )
    else:
        for run in runs:
            state = "ok" if run["success"] else "FAILED"
            print(
                f"{spec.id} {run['first']}..{run['last']} ({run['periods']} periods): {state} "
                f"(run {run['run_id']})"
            )
    if failed:
        kept = (
            "only periods that passed their checks can have reached main (publish: validated)"
            if spec.checks.publish == "validated"
            else "periods committed before a failure are kept"
        )
        print(
            f"{spec.id}: runs failed for {', '.join(failed)}; {kept} (see `ref-assets status "
            f"{spec.id}`, and the run's step failure for why)",
            file=sys.stderr,
        )
        return 1
    return 0

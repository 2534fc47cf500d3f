"""``ref-assets tag | maintain``: releases people can cite, and the store's retention.

ref-assets tag DATASET NAME [--snapshot ID]      # release NAME: main's tip (or a snapshot of
                                                 # main's history; --force: any)
ref-assets tag DATASET --list                    # every release, its snapshot and time
ref-assets maintain DATASET [--keep-days N] [--keep-last N] [--dry-run]
"""

from __future__ import annotations

import argparse

from ref_assets.cli.common import CommandError, add_command, dataset_spec, print_json


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "tag",
        summary="name a snapshot of a dataset's store as a release (immutable), or list them",
        description="Tag main's tip (or --snapshot) as release NAME: `open_dataset(DATASET, "
        "tag=NAME)` and `ref-assets verify DATASET --tag NAME` read it whatever main holds "
        "later, and maintenance never expires it. A name is never reused nor moved. A "
        "--snapshot must be in main's history (or a release's): one only a work branch holds "
        "was never published and is refused unless --force. --list "
        "shows every release with its snapshot and when that snapshot was written.",
        examples=[
            "ref-assets tag demo_air_temperature v2024.1",
            "ref-assets tag demo_air_temperature --list --json",
        ],
    )
    parser.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    parser.add_argument("name", nargs="?", help="the release's name (letters, digits, . - _)")
    parser.add_argument("--snapshot", metavar="ID", help="tag this snapshot (default: main's tip)")
    parser.add_argument("--list", action="store_true", help="list the releases")
    parser.add_argument(
        "--force",
        action="store_true",
        help="tag --snapshot even if it was never published (not in main's history nor a "
        "release's: a work branch's)",
    )
    parser.set_defaults(handler=tag)

    parser = add_command(
        commands,
        "maintain",
        summary="expire old snapshots and delete what nothing uses (retention), or a dry run",
        description="Apply the dataset's retention policy (its spec's `retention` section; "
        "--keep-days and --keep-last replace its rules): discard work branches of runs that "
        "died, expire main's snapshots that neither rule keeps (tagged releases are always "
        "kept), then garbage-collect the snapshots, manifests and chunks nothing uses any "
        "more; the same for its time-series copy, if it has one. Prints what went, the bytes "
        "deleted and the store's size before and after.\n\n"
        "--dry-run does it on a copy of the store (chunks linked, not copied) and reports "
        "what would go; the store is not changed.",
        examples=[
            "ref-assets maintain demo_air_temperature --keep-last 100 --dry-run",
            "ref-assets maintain demo_air_temperature --keep-days 30 --json",
        ],
    )
    parser.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    parser.add_argument(
        "--keep-days", type=float, metavar="N", help="keep snapshots younger than N days"
    )
    parser.add_argument("--keep-last", type=int, metavar="N", help="keep main's N newest commits")
    parser.add_argument(
        "--grace-minutes",
        type=float,
        metavar="M",
        help="keep unreferenced objects younger than M minutes, a writer's commit in progress "
        "(default: the spec's, else 60); 0 only when nothing writes meanwhile",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="report what would go; change nothing"
    )
    parser.set_defaults(handler=maintain)


def tag(args: argparse.Namespace) -> int:
    from ref_assets.config import load_settings
    from ref_assets.store import releases
    from ref_assets.store.repository import DatasetStore

    settings = load_settings()
    dataset_spec(args.dataset, settings, store_may_outlive_spec=True)
    store = DatasetStore(settings.storage_root, args.dataset)
    if args.list:
        if args.name or args.snapshot:
            raise CommandError("--list takes no release name nor --snapshot")
        found = releases.releases(store)
        if args.json:
            print_json({"dataset": args.dataset, "releases": [_release(r) for r in found]})
        elif not found:
            print(f"{args.dataset}: no releases yet (`ref-assets tag {args.dataset} NAME`)")
        for release in found:
            print(f"{release.name}\t{release.snapshot}\t{release.written_at:%Y-%m-%d %H:%M:%S}Z")
        return 0
    if not args.name:
        raise CommandError("give the release's NAME, or --list")
    if args.force and not args.snapshot:
        raise CommandError("--force goes with --snapshot (main's tip is published already)")
    release = releases.tag(store, args.name, args.snapshot, force=args.force)
    if args.json:
        print_json({"dataset": args.dataset, **_release(release)})
    else:
        print(
            f"{args.dataset}: release {release.name} is snapshot {release.snapshot} "
            f"(written {release.written_at:%Y-%m-%d %H:%M:%S}Z: {release.message})"
        )
    return 0


def _release(release) -> dict:
    return {
        "name": release.name,
        "snapshot": release.snapshot,
        "written_at": release.written_at.isoformat(),
        "message": release.message,
    }


def maintain(args: argparse.Namespace) -> int:
    from ref_assets.config import load_settings
    from ref_assets.store.maintenance import RetentionPolicy, maintain_dataset
    from ref_assets.store.repository import DatasetStore

    settings = load_settings()
    spec = dataset_spec(args.dataset, settings)
    policy = RetentionPolicy.for_dataset(
        spec,
        keep_days=args.keep_days,
        keep_last=args.keep_last,
        grace_minutes=args.grace_minutes,
    )
    store = DatasetStore(settings.storage_root, args.dataset)
    reports = maintain_dataset(store, policy, dry_run=args.dry_run)
    if args.json:
        print_json(
            {
                "dataset": args.dataset,
                "store": reports[0].as_json(),
                "timeseries": reports[1].as_json() if len(reports) > 1 else None,
            }
        )
        return 0
    for report in reports:
        _print_report(report)
    return 0


def _print_report(report) -> None:
    would = "would " if report.dry_run else ""
    heading = " (dry run: nothing was changed)" if report.dry_run else ""
    print(f"{report.repository}: maintenance{heading}")
    for branch in report.discarded_branches:
        print(f"  {would}discard abandoned work branch {branch}")
    for branch in report.protected_branches:
        print(f"  kept main's history since the base of live work branch {branch}")
    cutoff = f"written before {report.cutoff:%Y-%m-%d %H:%M:%S}Z" if report.cutoff else "none"
    print(f"  {would}expire {len(report.expired_snapshots)} snapshots ({cutoff})")
    if report.releases_kept:
        print(f"  releases kept: {', '.join(report.releases_kept)}")
    print(
        f"  {would}delete {report.snapshots_deleted} snapshots, {report.manifests_deleted} "
        f"manifests, {report.chunks_deleted} chunks: {_size(report.bytes_deleted)}"
    )
    change = (
        f"{would}free {_size(report.freed_bytes)}"
        if report.freed_bytes >= 0
        # Nothing to delete: what remains is the repository object Icechunk rewrote and its
        # backup of the previous one.
        else f"{_size(-report.freed_bytes)} more: Icechunk's rewritten repository object"
    )
    print(
        f"  store: {_size(report.store_bytes_before)} -> {_size(report.store_bytes_after)} "
        f"({change}) in {report.seconds:.1f} s"
    )
    for note in report.notes:
        print(f"  note: {note}")


def _size(count: int) -> str:
    if abs(count) < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"

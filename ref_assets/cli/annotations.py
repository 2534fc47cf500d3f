"""``ref-assets annotate``: the operator's annotations of a dataset and its variables.

ref-assets annotate DATASET [VARIABLE] --label L --description D --attr K=V --remove K
ref-assets annotate DATASET [VARIABLE]             # show the annotations (--history: the log)
"""

from __future__ import annotations

import argparse
import dataclasses

from ref_assets.cli.common import CommandError, add_command, dataset_spec, print_json


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "annotate",
        summary="label, describe and annotate a dataset or a variable (committed and logged), "
        "or show its annotations",
        description="Set attributes of the dataset, or of one of its variables, in its store: "
        "--label (the dataset's title, a variable's long_name), --description (summary, "
        "description) and any --attr KEY=VALUE; --remove KEY takes an annotation back (the "
        "spec's value, if it had one, returns). Each change is one commit and one entry of the "
        "store's annotation log (who, when, what it replaced); period writes never touch "
        "them, and open_dataset shows them as attributes.\n\nWithout changes, show the "
        "annotations (--history: every change). --from-spec gives the store the attributes "
        "its spec gives now.",
        examples=[
            'ref-assets annotate demo_air_temperature t2m --label "Air temperature at 2 m" '
            "--attr method=synthetic",
            'ref-assets annotate demo_air_temperature --description "Demo data, not for use"',
            "ref-assets annotate demo_air_temperature --history --json",
            "ref-assets annotate demo_air_temperature --from-spec",
            "ref-assets annotate demo_air_temperature --stash save",
        ],
    )
    parser.add_argument("dataset", help="a dataset id (see `ref-assets datasets`)")
    parser.add_argument("variable", nargs="?", help="a variable (default: the dataset itself)")
    parser.add_argument("--label", help="a short name: the title (dataset), long_name (variable)")
    parser.add_argument("--description", help="a description: summary (dataset), description")
    parser.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set the attribute KEY to the text VALUE (repeat for several)",
    )
    parser.add_argument(
        "--remove", action="append", default=[], metavar="KEY", help="remove an annotation"
    )
    whole = parser.add_mutually_exclusive_group()
    whole.add_argument(
        "--from-spec",
        action="store_true",
        help="give the store the attributes its spec gives now (written once, when the store "
        "was laid out); the operator's annotations stay",
    )
    whole.add_argument(
        "--stash",
        choices=["save", "restore", "clear"],
        help="save: keep the annotations and their log on local disk (before moving a store "
        "aside to rebuild it); restore: give the store what was saved; clear: remove it",
    )
    parser.add_argument("--by", help="who makes the change (default: this user)")
    parser.add_argument("--history", action="store_true", help="show every recorded change")
    parser.set_defaults(handler=annotate)


def annotate(args: argparse.Namespace) -> int:
    from ref_assets import annotations
    from ref_assets.config import load_settings

    dataset_spec(args.dataset, load_settings(), store_may_outlive_spec=not args.from_spec)

    attributes = {}
    for item in args.attr:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise CommandError(f"--attr {item!r}: write KEY=VALUE")
        attributes[key] = value
    edits = args.label is not None or args.description is not None or attributes or args.remove
    if args.from_spec or args.stash:
        if edits or args.variable or args.history:
            option = "--from-spec" if args.from_spec else "--stash"
            raise CommandError(f"{option} takes the dataset alone (no variable, no changes)")
        return _from_spec(args) if args.from_spec else _stash(args)
    if not edits:
        return _show(args)
    if args.history:
        raise CommandError("--history shows the log; give it without changes")
    receipt = annotations.annotate(
        args.dataset,
        args.variable,
        label=args.label,
        description=args.description,
        attributes=attributes,
        remove=args.remove,
        by=args.by,
    )
    [change] = receipt.changes
    if args.json:
        print_json(
            {"dataset": args.dataset, "snapshot": receipt.snapshot_id, "change": _change(change)}
        )
        return 0
    done = [f"set {', '.join(change.set)}"] if change.set else []
    done += [f"removed {', '.join(change.removed)}"] if change.removed else []
    print(f"{args.dataset} {change.target_name}: {'; '.join(done)} (commit {receipt.snapshot_id})")
    return 0


def _from_spec(args: argparse.Namespace) -> int:
    from ref_assets.annotations import refresh_from_spec
    from ref_assets.config import load_settings

    settings = load_settings()
    spec = dataset_spec(args.dataset, settings)
    receipt = refresh_from_spec(spec, by=args.by, settings=settings)
    if args.json:
        print_json(
            {
                "dataset": spec.id,
                "snapshot": receipt.snapshot_id,
                "changes": [_change(change) for change in receipt.changes],
            }
        )
        return 0
    for change in receipt.changes:
        print(f"{spec.id} {change.target_name}: from the spec: {', '.join(change.set)}")
    if receipt.changes:
        print(f"{spec.id}: commit {receipt.snapshot_id}")
    else:
        print(f"{spec.id}: the store has the spec's attributes already")
    return 0


def _stash(args: argparse.Namespace) -> int:
    from ref_assets import annotations_stash

    dataset, document = args.dataset, {"dataset": args.dataset, "action": args.stash}
    try:
        path = annotations_stash.stash_path(dataset)
    except ValueError as err:  # an id that would name a file elsewhere
        raise CommandError(str(err)) from None
    if args.stash == "save":
        annotations_stash.stash(dataset)
        text = f"{dataset}: annotations and their log saved in {path}"
    elif args.stash == "restore":
        receipt = annotations_stash.restore(dataset, by=args.by)
        if receipt is None:
            raise CommandError(f"{dataset}: no readable annotation stash at {path}")
        document["snapshot"] = receipt.snapshot_id
        document["changes"] = len(receipt.changes)
        text = (
            f"{dataset}: restored from {path}: {len(receipt.changes)} log entries written "
            f"(commit {receipt.snapshot_id}); `--stash clear` once you are done"
            if receipt.changes
            else f"{dataset}: the store holds everything {path} holds already"
        )
    else:
        cleared = annotations_stash.clear(dataset)
        text = f"{dataset}: {path} {'removed' if cleared else 'did not exist'}"
        document["cleared"] = cleared
    if args.json:
        print_json({**document, "stash": str(path)})
    else:
        print(text)
    return 0


def _show(args: argparse.Namespace) -> int:
    from ref_assets.annotations import read_annotations

    stored = read_annotations(args.dataset)
    history = [c for c in stored.history if args.variable is None or c.target == args.variable]
    if args.variable is None:
        shown = stored.annotations.to_dict()
    else:
        shown = {"variables": {args.variable: stored.annotations.of(args.variable)}}
    if args.json:
        document = {"dataset": args.dataset, "snapshot": stored.snapshot_id, **shown}
        if args.history:
            document["history"] = [_change(change) for change in history]
        print_json(document)
        return 0
    if args.history:
        for change in history:
            what = [f"{k}={v!r}" for k, v in change.set.items()] + [f"-{k}" for k in change.removed]
            action = "" if change.action == "edit" else f" ({change.action})"
            print(
                f"{change.at} {change.by}@{change.host} {change.target_name}{action}: "
                f"{' '.join(what)}"
            )
        return 0
    targets = [(None, stored.annotations.dataset)] if args.variable is None else []
    targets += [(name, values) for name, values in shown["variables"].items()]
    for name, values in targets:
        where = "dataset" if name is None else f"variable {name}"
        print(
            f"{args.dataset} {where}: "
            + (", ".join(f"{k}={v!r}" for k, v in sorted(values.items())) or "no annotations")
        )
    return 0


def _change(change) -> dict:
    return dataclasses.asdict(change)

"""``ref-assets config ...`` and ``ref-assets providers ...``: inspect, check and edit ref.toml.

Every edit goes through `edit_ref_toml`: atomic, locked, comments kept, and refused if the result
would not load.
"""

from __future__ import annotations

import argparse
import logging
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ref_assets.cli.common import add_command, print_json

if TYPE_CHECKING:  # the rest is imported by the commands: `--help` stays fast
    from pathlib import Path

    from ref_assets.config import Settings
    from ref_assets.providers.registry import ProviderRegistry, ProviderSource
    from ref_assets.specs import DatasetSpec


def settable_keys() -> dict[str, str]:
    """``section.key`` -> the environment variable that overrides it."""
    from ref_assets.config import ENV_OVERRIDES

    return {f"{section}.{key}": variable for variable, (section, key) in ENV_OVERRIDES.items()}


def _settable_key(text: str) -> str:
    """argparse's check of `config set`'s KEY."""
    keys = settable_keys()
    if text not in keys:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a settable key (choose from {', '.join(sorted(keys))})"
        )
    return text


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The ``config`` and ``providers`` commands, added to ref-assets' subcommands."""
    config = add_command(
        commands,
        "config",
        summary="show, check or change ref.toml settings",
        description="Inspect, check and edit the settings of $REF_CONFIGURATION/ref.toml (edits "
        "keep its comments).",
        examples=["ref-assets config show", "ref-assets config validate"],
        prints_data=False,
    )
    actions = config.add_subparsers(required=True, metavar="ACTION")
    parser = add_command(
        actions,
        "show",
        summary="the effective settings (secrets masked)",
        description="Print the effective settings as TOML, each with where its value comes from "
        "(file, environment, default); secrets are masked.",
        examples=["ref-assets config show", "ref-assets config show --json"],
    )
    parser.set_defaults(handler=show)
    parser = add_command(
        actions,
        "validate",
        summary="check ref.toml, the vocabulary, providers and dataset specs",
        description="Check everything the code location loads, and build each dataset's provider "
        "from its params (offline); report every problem with its file and field. Exit status 1 "
        "on any error.",
        examples=["ref-assets config validate", "ref-assets config validate --json"],
    )
    parser.set_defaults(handler=validate)
    parser = add_command(
        actions,
        "set",
        summary="set one key in ref.toml, keeping its comments (paths become durable)",
        description="Set KEY in ref.toml atomically, keeping its comments; refused if the result "
        "would not load.\n\nA path to a file inside an installed package is stored as its "
        "durable packaged: reference.",
        examples=["ref-assets config set paths.variables_cv /srv/ref/vocabulary.toml"],
    )
    parser.add_argument(
        "key", type=_settable_key, help="section.key, such as storage.root or paths.variables_cv"
    )
    parser.add_argument("value")
    parser.set_defaults(handler=set_value)

    providers = add_command(
        commands,
        "providers",
        summary="list or prune declared providers",
        description="The providers installed as entry points or declared in ref.toml "
        "([[providers]]).",
        examples=["ref-assets providers list", "ref-assets providers prune --dry-run"],
        prints_data=False,
    )
    actions = providers.add_subparsers(required=True, metavar="ACTION")
    parser = add_command(
        actions,
        "list",
        summary="each provider, its origin and state",
        description="List each provider: name, state (ok, skipped, replaced), version, origin, "
        "reference and the datasets that use it, with the problem of any that does not load.",
        examples=["ref-assets providers list", "ref-assets providers list --json"],
    )
    parser.set_defaults(handler=list_providers)
    parser = add_command(
        actions,
        "prune",
        summary="remove [[providers]] entries of ref.toml that do not load",
        description="Remove the [[providers]] entries of ref.toml that do not load (module gone, "
        "attribute missing), keeping the file's comments; --dry-run only lists them.",
        examples=["ref-assets providers prune --dry-run", "ref-assets providers prune"],
    )
    parser.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    parser.set_defaults(handler=prune_providers)


@contextmanager
def _quiet_library_logs():
    """These commands print every problem themselves; the library's log lines would repeat them."""
    library = logging.getLogger("ref_assets")
    level = library.level
    library.setLevel(logging.ERROR)
    try:
        yield
    finally:
        library.setLevel(level)


def show(args: argparse.Namespace) -> int:
    import tomlkit

    from ref_assets.config import load_settings
    from ref_assets.secrets import redact

    with _quiet_library_logs():
        settings = load_settings(heal=False)
    cv_file = settings.resolve_path(settings.variables_cv)
    if args.json:
        print_json(_effective(settings, cv_file))
        return 0
    document = tomlkit.document()
    document.add(tomlkit.comment("ref_assets: effective configuration (secrets masked)"))
    document.add(tomlkit.comment(f"configuration directory: {settings.configuration_dir}"))
    present = "present" if settings.config_file.exists() else "absent, so defaults apply"
    document.add(tomlkit.comment(f"settings file: {settings.config_file} ({present})"))
    for warning in settings.warnings:
        document.add(tomlkit.comment(f"warning: {warning}"))
    for setting in settings.values:
        section, key = setting.key.split(".")
        if section not in document:
            document.add(section, tomlkit.table())
        document[section].add(key, redact(setting.value, key))
        note = f"from {setting.origin}"
        if setting.key == "paths.variables_cv":
            note += f"; read from {cv_file}"
        document[section][key].comment(note)
    if settings.providers:
        providers = tomlkit.aot()
        for entry in settings.providers:
            table = tomlkit.table()
            if entry.name:
                table.add("name", entry.name)
            table.add("provider", entry.reference)
            providers.append(table)
        document.add("providers", providers)
    print(document.as_string(), end="")
    return 0


def _effective(settings: Settings, cv_file: Path) -> dict:
    from ref_assets.secrets import redact

    return {
        "configuration_dir": str(settings.configuration_dir),
        "config_file": str(settings.config_file),
        "config_file_exists": settings.config_file.exists(),
        "settings": {
            s.key: {"value": redact(s.value, s.key), "from": s.origin} for s in settings.values
        },
        "variables_cv_file": str(cv_file),
        "providers": [
            {"position": e.position, "provider": e.reference, "name": e.name, "problem": e.problem}
            for e in settings.providers
        ],
        "warnings": list(settings.warnings),
    }


def validate(args: argparse.Namespace) -> int:
    """Check everything the code location loads and every check a run makes before it reads
    any data (each dataset's provider is built from its params, offline); report every problem,
    not just the first, and exit 1 if anything would be skipped or fail."""
    from ref_assets.catalog import load_catalog
    from ref_assets.config import ConfigError, load_settings, storage_root_problem
    from ref_assets.providers.registry import ProviderRegistry
    from ref_assets.store.s3 import S3Connection, S3Problem, is_s3
    from ref_assets.vocabulary import load_vocabulary

    report: dict = {"settings_file": None, "ok": [], "warnings": [], "errors": []}
    with _quiet_library_logs():
        try:
            settings = load_settings(heal=False)
        except ConfigError as err:
            report["errors"].append(str(err))
            return _validation_report(args, report)
        state = "present" if settings.config_file.exists() else "absent: defaults apply"
        report["settings_file"] = str(settings.config_file)
        _note(args, f"settings: {settings.config_file} ({state})")
        for warning in settings.warnings:
            report["warnings"].append(warning)
            _note(args, f"warning: {warning}")
        root = next(s for s in settings.values if s.key == "storage.root")
        problem = storage_root_problem(root.value)
        if not problem and is_s3(root.value):
            try:  # the S3 environment (endpoint, http) as the stores will read it
                S3Connection.from_environment()
            except S3Problem as err:
                problem = str(err)
        if problem:
            report["errors"].append(f"storage.root (from {root.origin}): {problem}")
        staging = next(s for s in settings.values if s.key == "extraction.staging")
        try:  # as `ref-assets extract` and the extract job will open it
            from ref_assets.extract.request import ExtractionError
            from ref_assets.extract.staging import StagingArea

            StagingArea(staging.value)
        except ExtractionError as err:
            report["errors"].append(f"extraction.staging (from {staging.origin}): {err}")
        try:
            vocabulary = load_vocabulary(settings.variables_cv, settings.resolve_path)
            _ok(
                args,
                report,
                f"variable vocabulary {settings.variables_cv} "
                f"({len(vocabulary.variables)} variables)",
            )
            catalog = load_catalog(settings)
        except ConfigError as err:
            report["errors"].append(str(err))
            catalog = None
        registry = ProviderRegistry.discover(settings.providers)
        for source in registry.sources:
            if source.problem:
                report["errors"].append(
                    f"provider {source.label} ({source.origin}): {source.problem}"
                )
            else:
                _ok(args, report, f"provider {source.name} {source.version} ({source.origin})")
        if catalog is not None:
            for spec in catalog.specs.values():
                path = catalog.sources[spec.id]
                problems = _provider_problems(spec, registry)
                if problems:
                    report["errors"].extend(f"dataset {spec.id} ({path}): {p}" for p in problems)
                else:
                    taken = f"provider {spec.provider} takes it"
                    _ok(args, report, f"dataset {spec.id} ({path}): {taken}")
            report["errors"].extend(f"dataset spec {error}" for error in catalog.errors)
    return _validation_report(args, report)


def _note(args: argparse.Namespace, line: str) -> None:
    if not args.json:
        print(line)


def _ok(args: argparse.Namespace, report: dict, what: str) -> None:
    report["ok"].append(what)
    _note(args, f"ok: {what}")


def _validation_report(args: argparse.Namespace, report: dict) -> int:
    """Print the errors (or the whole report as JSON); exit status 1 on any error."""
    if args.json:
        print_json(report)
    else:
        for error in report["errors"]:
            print(f"error: {error}")
        print(f"{len(report['errors'])} error(s), {len(report['warnings'])} warning(s)")
    return 1 if report["errors"] else 0


def _provider_problems(spec: DatasetSpec, registry: ProviderRegistry) -> list[str]:
    """What stops ``spec``'s provider from being built, one problem per line, each naming the
    field (the provider's own messages start with the dataset id, shown once by the caller)."""
    from ref_assets.providers.protocol import ProviderError, ProviderParamsError

    if spec.provider not in registry.classes:
        return [registry.unavailable_reason(spec).removeprefix(f"{spec.id}: ")]
    try:
        registry.create(spec)
    except ProviderParamsError as err:
        return [f"{where}: {problem}" for where, problem in err.problems]
    except ProviderError as err:
        return [str(err).removeprefix(f"{spec.id}: ")]
    return []


def set_value(args: argparse.Namespace) -> int:
    from pathlib import Path

    import tomlkit

    from ref_assets.config import CONFIG_FILE_NAME, configuration_dir_from, edit_ref_toml
    from ref_assets.packaged import PackagedFiles

    # Not load_settings(): this is how an operator repairs a file that does not load.
    configuration_dir = configuration_dir_from(os.environ)
    section, key = args.key.split(".")
    value = args.value
    notes = []
    if section == "paths" and not value.startswith("packaged:"):
        # A file inside a Python environment is stored as its durable packaged reference.
        path = (configuration_dir / Path(value).expanduser()).absolute()
        ref = PackagedFiles(configuration_dir / "cache").packaged_ref_for(path)
        if ref is not None:
            notes.append(f"{value} is the packaged file {ref}; storing the durable reference")
            value = str(ref)

    def assign(document) -> None:
        if section not in document:
            document.add(section, tomlkit.table())
        document[section][key] = value

    edit_ref_toml(configuration_dir, assign)
    variable = settable_keys()[args.key]
    if os.environ.get(variable):
        notes.append(f"{variable} is set in the environment and overrides this value")
    config_file = configuration_dir / CONFIG_FILE_NAME
    if args.json:
        print_json(
            {"config_file": str(config_file), "key": args.key, "value": value, "notes": notes}
        )
        return 0
    print(f"{config_file}: {args.key} = {value!r}")
    for note in notes:
        print(f"note: {note}")
    return 0


def list_providers(args: argparse.Namespace) -> int:
    from ref_assets.catalog import load_catalog
    from ref_assets.config import ConfigError, load_settings
    from ref_assets.providers.registry import ProviderRegistry

    with _quiet_library_logs():
        settings = load_settings()
        registry = ProviderRegistry.discover(settings.providers)
        try:
            specs = load_catalog(settings).specs.values()
        except ConfigError:
            specs = []
    rows = []
    for source in registry.sources:
        datasets = sorted(s.id for s in specs if s.provider == source.name)
        rows.append(
            {
                "name": source.label,
                "state": _state(source, registry),
                "version": source.version,
                "origin": source.origin,
                "reference": source.reference,
                "datasets": datasets,
                "problem": source.problem,
            }
        )
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        line = (
            f"{row['name']}\t{row['state']}\t{row['version'] or '-'}\t{row['origin']}\t"
            f"{row['reference']}\tdatasets: {', '.join(row['datasets']) or 'none'}"
        )
        print(line + (f"\t{row['problem']}" if row["problem"] else ""))
    return 0


def _state(source: ProviderSource, registry: ProviderRegistry) -> str:
    if source.problem:
        return "skipped"
    winner = [s for s in registry.sources if s.name == source.name and s.loaded][-1]
    return "ok" if winner is source else f"replaced by {winner.origin}"


def prune_providers(args: argparse.Namespace) -> int:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    from ref_assets.config import (
        CONFIG_FILE_NAME,
        ConfigError,
        configuration_dir_from,
        provider_entries,
        remove_provider_tables,
        rewrite_ref_toml,
    )
    from ref_assets.providers.registry import ProviderRegistry

    path = configuration_dir_from(os.environ) / CONFIG_FILE_NAME

    def prune(text: str) -> tuple[str, list[ProviderSource]]:
        # Decided on the text read under the edit lock, so positions cannot shift under us.
        try:
            raw = tomlkit.parse(text).unwrap().get("providers", [])
        except TOMLKitError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
        entries = provider_entries(raw if isinstance(raw, list) else [], [])
        broken = [
            source
            for source in ProviderRegistry.discover(entries).sources
            if source.entry is not None and source.problem
        ]
        if args.dry_run or not broken:
            return text, broken
        return remove_provider_tables(text, {s.entry.position for s in broken}), broken

    with _quiet_library_logs():
        broken = rewrite_ref_toml(path.parent, prune)
    if args.json:
        entries = [
            {"origin": s.origin, "reference": s.reference, "problem": s.problem} for s in broken
        ]
        print_json({"config_file": str(path), "dry_run": args.dry_run, "removed": entries})
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for source in broken:
        print(f"{verb} {source.origin}: {source.reference} ({source.problem})")
    if not broken:
        print(f"nothing to prune: every [[providers]] entry of {path} loads")
    return 0

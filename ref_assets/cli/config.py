"""``ref-assets config ...`` and ``ref-assets providers ...``: inspect, check and edit ref.toml.

Every edit goes through `edit_ref_toml`: atomic, locked, comments kept, and refused if the result
would not load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.toml_document import TOMLDocument

from ref_assets.catalog import load_catalog
from ref_assets.config import (
    CONFIG_FILE_NAME,
    ENV_OVERRIDES,
    ConfigError,
    Settings,
    configuration_dir_from,
    edit_ref_toml,
    load_settings,
    provider_entries,
    remove_provider_tables,
    rewrite_ref_toml,
    storage_root_problem,
)
from ref_assets.packaged import PackagedFiles
from ref_assets.providers.protocol import ProviderError, ProviderParamsError
from ref_assets.providers.registry import ProviderRegistry, ProviderSource
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec
from ref_assets.vocabulary import load_vocabulary

SETTABLE_KEYS = {f"{section}.{key}": variable for variable, (section, key) in ENV_OVERRIDES.items()}


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The ``config`` and ``providers`` commands, added to ref-assets' subcommands."""
    config = commands.add_parser("config", help="show, check or change ref.toml settings")
    actions = config.add_subparsers(required=True, metavar="ACTION")
    parser = actions.add_parser("show", help="the effective settings (secrets masked)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=show)
    parser = actions.add_parser(
        "validate", help="check ref.toml, the vocabulary, providers and dataset specs"
    )
    parser.set_defaults(handler=validate)
    parser = actions.add_parser(
        "set", help="set one key in ref.toml, keeping its comments (paths become durable)"
    )
    parser.add_argument("key", choices=sorted(SETTABLE_KEYS))
    parser.add_argument("value")
    parser.set_defaults(handler=set_value)

    providers = commands.add_parser("providers", help="list or prune declared providers")
    actions = providers.add_subparsers(required=True, metavar="ACTION")
    parser = actions.add_parser("list", help="each provider, its origin and state")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=list_providers)
    parser = actions.add_parser(
        "prune", help="remove [[providers]] entries of ref.toml that do not load"
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
    with _quiet_library_logs():
        settings = load_settings(heal=False)
    cv_file = settings.resolve_path(settings.variables_cv)
    if args.json:
        print(json.dumps(_effective(settings, cv_file), indent=2))
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
    errors: list[str] = []
    with _quiet_library_logs():
        try:
            settings = load_settings(heal=False)
        except ConfigError as err:
            print(f"error: {err}")
            return 1
        state = "present" if settings.config_file.exists() else "absent: defaults apply"
        print(f"settings: {settings.config_file} ({state})")
        for warning in settings.warnings:
            print(f"warning: {warning}")
        root = next(s for s in settings.values if s.key == "storage.root")
        problem = storage_root_problem(root.value)
        if problem:
            errors.append(f"storage.root (from {root.origin}): {problem}")
        try:
            vocabulary = load_vocabulary(settings.variables_cv, settings.resolve_path)
            print(
                f"ok: variable vocabulary {settings.variables_cv} "
                f"({len(vocabulary.variables)} variables)"
            )
            catalog = load_catalog(settings)
        except ConfigError as err:
            errors.append(str(err))
            catalog = None
        registry = ProviderRegistry.discover(settings.providers)
        for source in registry.sources:
            if source.problem:
                errors.append(f"provider {source.label} ({source.origin}): {source.problem}")
            else:
                print(f"ok: provider {source.name} {source.version} ({source.origin})")
        if catalog is not None:
            for spec in catalog.specs.values():
                path = catalog.sources[spec.id]
                problems = _provider_problems(spec, registry)
                if problems:
                    errors.extend(f"dataset {spec.id} ({path}): {p}" for p in problems)
                else:
                    print(f"ok: dataset {spec.id} ({path}): provider {spec.provider} takes it")
            errors.extend(f"dataset spec {error}" for error in catalog.errors)
    for error in errors:
        print(f"error: {error}")
    print(f"{len(errors)} error(s), {len(settings.warnings)} warning(s)")
    return 1 if errors else 0


def _provider_problems(spec: DatasetSpec, registry: ProviderRegistry) -> list[str]:
    """What stops ``spec``'s provider from being built, one problem per line, each naming the
    field (the provider's own messages start with the dataset id, shown once by the caller)."""
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
    # Not load_settings(): this is how an operator repairs a file that does not load.
    configuration_dir = configuration_dir_from(os.environ)
    section, key = args.key.split(".")
    value = args.value
    if section == "paths" and not value.startswith("packaged:"):
        # A file inside a Python environment is stored as its durable packaged reference.
        path = (configuration_dir / Path(value).expanduser()).absolute()
        ref = PackagedFiles(configuration_dir / "cache").packaged_ref_for(path)
        if ref is not None:
            print(f"{value} is the packaged file {ref}; storing the durable reference")
            value = str(ref)

    def assign(document: TOMLDocument) -> None:
        if section not in document:
            document.add(section, tomlkit.table())
        document[section][key] = value

    edit_ref_toml(configuration_dir, assign)
    print(f"{configuration_dir / CONFIG_FILE_NAME}: {args.key} = {value!r}")
    variable = SETTABLE_KEYS[args.key]
    if os.environ.get(variable):
        print(f"note: {variable} is set in the environment and overrides this value")
    return 0


def list_providers(args: argparse.Namespace) -> int:
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
        print(json.dumps(rows, indent=2))
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
    verb = "would remove" if args.dry_run else "removed"
    for source in broken:
        print(f"{verb} {source.origin}: {source.reference} ({source.problem})")
    if not broken:
        print(f"nothing to prune: every [[providers]] entry of {path} loads")
    return 0

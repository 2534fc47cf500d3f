"""``ref.toml``: the settings every process reads (code location, daemon, run workers, CLI).

``REF_CONFIGURATION`` names the configuration directory (default: the platform's user config
directory, ``~/.config/ref_assets`` on Linux). It holds ``ref.toml``, the operator's dataset specs
in ``datasets/``, the packaged-file cache in ``cache/`` and, unless configured otherwise, the
Icechunk stores in ``stores/``. A missing ``ref.toml`` means defaults, and nothing is written::

    [storage]
    root = "/data/ref-stores"     # relative paths are taken from the configuration directory

    [paths]
    variables_cv = "packaged:ref_assets/data/variables_cv.toml"   # or a file of your own

    [stac]
    root = "/srv/stac"            # where Dagster writes the STAC catalogue (default: stac/)

    [[providers]]                 # providers beyond those installed as entry points
    provider = "my_package.providers:MyProvider"
    # name = "my_provider"        # default: the class's `name`

Every scalar key can be overridden by ``REF_<SECTION>_<KEY>`` (``REF_STORAGE_ROOT``,
``REF_PATHS_VARIABLES_CV``). Unknown keys are warned about and ignored; a value of the wrong type
is an error naming the file, the key and the expected type. The file is read and written with
tomlkit, so the operator's comments and order survive every write, and writes are atomic.

A ``[paths]`` value that points into a Python environment (``.../site-packages/ref_assets/...``,
saved by another interpreter or venv layout) is healed to its durable ``packaged:`` reference with
a warning, in memory and in the file.

>>> import tempfile
>>> settings = load_settings({"REF_CONFIGURATION": tempfile.mkdtemp()})
>>> settings.variables_cv
'packaged:ref_assets/data/variables_cv.toml'
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from ref_assets.files import atomic_write_bytes
from ref_assets.packaged import PackagedFileError, PackagedFiles, PackagedRef
from ref_assets.secrets import redact

if TYPE_CHECKING:  # tomlkit, filelock and platformdirs are imported where used: every command
    # reads settings, and `status` should not pay for editing machinery (measured: 0.1 s)
    from tomlkit.toml_document import TOMLDocument

logger = logging.getLogger(__name__)

CONFIG_FILE_NAME = "ref.toml"
DEFAULT_VARIABLES_CV = "packaged:ref_assets/data/variables_cv.toml"
PROVIDER_REFERENCE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_]\w*)*$"
)
PROVIDER_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ConfigError(ValueError):
    """A configuration file or variable that cannot be used; the message says which and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class StorageSection(_Section):
    root: str | None = None


class StacSection(_Section):
    """Where the Dagster asset `stac/catalog` writes the STAC catalogue."""

    root: str | None = None


class PathsSection(_Section):
    """Files the configuration points at: a ``packaged:`` reference or a path."""

    variables_cv: str | None = None


class ExtractionSection(_Section):
    """Extraction to a staging area (`ref_assets.extraction`)."""

    staging: str | None = None  # a local directory (relative: to the configuration dir) or s3://
    max_mib: float | None = None  # the largest request served, in MiB of values
    ttl_hours: float | None = None  # how long a staged output lives


class _RefToml(_Section):
    storage: StorageSection = StorageSection()
    paths: PathsSection = PathsSection()
    stac: StacSection = StacSection()
    extraction: ExtractionSection = ExtractionSection()
    providers: list[Any] = []  # checked entry by entry: a bad entry must not break the file


_SECTIONS: dict[str, type[_Section]] = {
    "storage": StorageSection,
    "paths": PathsSection,
    "stac": StacSection,
    "extraction": ExtractionSection,
}
# REF_<SECTION>_<KEY> for every scalar key.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    f"REF_{section}_{key}".upper(): (section, key)
    for section, model in _SECTIONS.items()
    for key in model.model_fields
}
ENV_VARIABLES = {setting: variable for variable, setting in ENV_OVERRIDES.items()}


@dataclass(frozen=True)
class ProviderEntry:
    """One ``[[providers]]`` table: a provider class named by ``package.module:attribute``."""

    position: int  # 1-based, among the [[providers]] tables
    reference: str
    name: str | None = None
    problem: str | None = None  # why the table itself cannot be used

    @property
    def origin(self) -> str:
        return f"{CONFIG_FILE_NAME} [[providers]] #{self.position}"


@dataclass(frozen=True)
class Setting:
    """One effective value and where it came from (a variable, the file or the default)."""

    key: str
    value: str
    origin: str


# Extraction defaults: a request of more than 2 GiB of values is refused, an output lives a day.
DEFAULT_EXTRACTION_MAX_MIB = 2048.0
DEFAULT_EXTRACTION_TTL_HOURS = 24.0


@dataclass(frozen=True)
class ExtractionSettings:
    """Where extractions are staged (a local directory or ``s3://bucket/prefix``), the largest
    request served (MiB of values) and how long an output lives."""

    staging: str
    max_mib: float = DEFAULT_EXTRACTION_MAX_MIB
    ttl_hours: float = DEFAULT_EXTRACTION_TTL_HOURS


@dataclass(frozen=True)
class Settings:
    """The effective settings: file values overridden by ``REF_*`` environment variables."""

    configuration_dir: Path
    storage_root: str
    variables_cv: str = DEFAULT_VARIABLES_CV  # a packaged reference or an absolute path
    stac_root: str | None = None  # where the STAC catalogue goes: a directory or s3://
    extraction: ExtractionSettings | None = None  # None: the defaults (`extraction_settings`)
    providers: tuple[ProviderEntry, ...] = ()
    values: tuple[Setting, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def user_spec_dir(self) -> Path:
        return self.configuration_dir / "datasets"

    @property
    def config_file(self) -> Path:
        return self.configuration_dir / CONFIG_FILE_NAME

    @property
    def cache_dir(self) -> Path:
        return self.configuration_dir / "cache"

    def packaged_files(self) -> PackagedFiles:
        return PackagedFiles(self.cache_dir)

    @property
    def extraction_settings(self) -> ExtractionSettings:
        """The ``[extraction]`` settings (defaults: ``$REF_CONFIGURATION/staging``, 2 GiB, a
        day)."""
        return self.extraction or ExtractionSettings(
            staging=str(self.configuration_dir / "staging")
        )

    def resolve_path(self, reference: str) -> Path:
        """A readable file for a ``packaged:`` reference (through the cache) or a path
        (relative to the configuration directory). A path into a Python environment that names
        a packaged file (say, in a vocabulary's ``extends``) is read through the cache too."""
        files = self.packaged_files()
        try:
            if reference.startswith("packaged:"):
                return files.path(reference)
            path = _local_path(self.configuration_dir, reference)
            ref = files.packaged_ref_for(path)
            if ref is None:
                return path
            if not path.is_relative_to(self.cache_dir):
                _warn_once(
                    f"{reference} names the packaged file {ref}, which is read instead; write "
                    f"{ref} where this path is written, so it survives upgrades"
                )
            return files.path(ref)
        except PackagedFileError as err:
            raise ConfigError(str(err)) from None


def storage_root_problem(root: str) -> str | None:
    """Why ``root`` cannot be used as the storage root, and what to do; None if it can (a local
    directory, or ``s3://bucket/prefix``). The root is shown masked: a URL's credentials would
    otherwise reach every error naming it."""
    if "://" not in root:
        return None
    supported = (
        "storage roots are local directories or s3://bucket/prefix (the endpoint, region and "
        "credentials from the environment: AWS_ENDPOINT_URL, AWS_REGION, the AWS credential "
        "chain): set [storage] root in ref.toml or REF_STORAGE_ROOT to one of those"
    )
    shown = redact(root)
    if shown != root:
        return (
            f"storage root {shown} holds credentials, which never belong in ref.toml or "
            "REF_STORAGE_ROOT: give them through the environment (for S3, the AWS credential "
            "chain: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance "
            f"role) and name the root without them. Besides, {supported}"
        )
    parts = urlsplit(root)
    if parts.scheme != "s3":
        return f"storage root {shown} is neither a local directory nor on S3; {supported}"
    if not parts.netloc or parts.query or parts.fragment:
        return f"storage root {shown} is not of the form s3://bucket/prefix; {supported}"
    return None


def default_configuration_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("ref_assets", appauthor=False))


def configuration_dir_from(environ: Mapping[str, str]) -> Path:
    return (
        Path(environ.get("REF_CONFIGURATION") or default_configuration_dir())
        .expanduser()
        .absolute()
    )


def load_settings(environ: Mapping[str, str] | None = None, *, heal: bool = True) -> Settings:
    """Read ``$REF_CONFIGURATION/ref.toml`` (if present) and apply environment overrides.

    With ``heal`` (the default), ``[paths]`` values healed to ``packaged:`` references are also
    saved back into the file, keeping its comments.
    """
    env = os.environ if environ is None else environ
    configuration_dir = configuration_dir_from(env)
    path = configuration_dir / CONFIG_FILE_NAME
    settings, healed = _settings_from(_read_document(path), configuration_dir, env)
    for message in settings.warnings:
        _warn_once(message)
    if heal and healed:
        _save_healed(path, healed)
    return settings


def _read_document(path: Path) -> TOMLDocument | None:
    text = _read_text(path)
    return None if text is None else _parse(text, path)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8-sig")  # a BOM (some Windows editors) is not TOML
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err


def _parse(text: str, path: Path) -> TOMLDocument:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        return tomlkit.parse(text)
    except TOMLKitError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


def _settings_from(
    document: TOMLDocument | None, configuration_dir: Path, env: Mapping[str, str]
) -> tuple[Settings, dict[tuple[str, str], tuple[str, str]]]:
    """The settings, and the file values healed to durable references (key -> (old, new))."""
    path = configuration_dir / CONFIG_FILE_NAME
    raw = document.unwrap() if document is not None else {}
    try:
        parsed = _RefToml.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_type_error(path, err)) from None
    warnings = _unknown_keys(path, parsed)
    providers = provider_entries(parsed.providers, warnings)

    def effective(section: str, key: str, default: str) -> Setting:
        variable = ENV_VARIABLES[(section, key)]
        if env.get(variable):
            return Setting(f"{section}.{key}", env[variable], variable)
        value = getattr(getattr(parsed, section), key)
        if value is not None:
            return Setting(f"{section}.{key}", str(value), CONFIG_FILE_NAME)
        return Setting(f"{section}.{key}", default, "default")

    def located(setting: Setting) -> str:  # a URL, or a path from the configuration directory
        if "://" in setting.value:
            return setting.value
        return str((configuration_dir / Path(setting.value).expanduser()).absolute())

    root = effective("storage", "root", "stores")
    storage_root = located(root)
    stac = effective("stac", "root", "stac")

    packaged = PackagedFiles(configuration_dir / "cache")
    healed: dict[tuple[str, str], tuple[str, str]] = {}
    variables_cv = effective("paths", "variables_cv", DEFAULT_VARIABLES_CV)
    durable, note = _durable_reference(variables_cv, configuration_dir, packaged)
    if note:
        warnings.append(note)
        if variables_cv.origin == CONFIG_FILE_NAME:
            healed[("paths", "variables_cv")] = (variables_cv.value, durable)
    extraction, extraction_values = _extraction_settings(effective, configuration_dir)
    values = (
        Setting(root.key, storage_root, root.origin),
        Setting(variables_cv.key, durable, variables_cv.origin),
        Setting(stac.key, located(stac), stac.origin),
        *extraction_values,
    )
    settings = Settings(
        configuration_dir=configuration_dir,
        storage_root=storage_root,
        variables_cv=durable,
        stac_root=located(stac),
        extraction=extraction,
        providers=providers,
        values=values,
        warnings=tuple(warnings),
    )
    return settings, healed


def _extraction_settings(
    effective: Callable[[str, str, str], Setting], configuration_dir: Path
) -> tuple[ExtractionSettings, tuple[Setting, ...]]:
    """The ``[extraction]`` settings, numbers checked (an environment value is text)."""
    staging = effective("extraction", "staging", "staging")
    root = staging.value
    if "://" not in root:
        root = str((configuration_dir / Path(root).expanduser()).absolute())
    numbers = {}
    settings = [Setting(staging.key, root, staging.origin)]
    for key, default in (
        ("max_mib", DEFAULT_EXTRACTION_MAX_MIB),
        ("ttl_hours", DEFAULT_EXTRACTION_TTL_HOURS),
    ):
        setting = effective("extraction", key, repr(default))
        try:
            numbers[key] = float(setting.value)
        except ValueError:
            numbers[key] = -1.0
        if not numbers[key] > 0:
            raise ConfigError(
                f"{setting.origin}: extraction.{key} = {setting.value!r}: must be a positive number"
            )
        settings.append(setting)
    return ExtractionSettings(root, **numbers), tuple(settings)


def _durable_reference(
    setting: Setting, configuration_dir: Path, packaged: PackagedFiles
) -> tuple[str, str | None]:
    """The durable form of a ``[paths]`` value, and a warning if it had to be healed."""
    origin = configuration_dir / CONFIG_FILE_NAME if setting.origin == CONFIG_FILE_NAME else None
    where = f"{origin or setting.origin} ({setting.key})"
    path = _local_path(configuration_dir, setting.value)
    try:
        if setting.value.startswith("packaged:"):
            ref = PackagedRef.parse(setting.value)
        else:
            ref = packaged.packaged_ref_for(path)
        if ref is not None:
            packaged.packaged_bytes(ref)  # the installed package must have it
    except PackagedFileError as err:
        raise ConfigError(f"{where}: {err}") from None
    if ref is not None:
        if setting.value.startswith("packaged:") or path.is_relative_to(packaged.cache_dir):
            return str(ref), None  # our own cache is rebuilt from the package whenever needed
        state = "no longer exists" if not path.exists() else "lies inside a Python environment"
        return str(ref), (
            f"{where}: {setting.value} {state}; it names the packaged file {ref}, used instead "
            f"(a path into site-packages breaks on every Python or image upgrade)"
        )
    if not path.is_file():
        default = DEFAULT_VARIABLES_CV if setting.key == "paths.variables_cv" else None
        fallback = f", or remove the key to use the packaged default ({default})" if default else ""
        raise ConfigError(
            f"{where}: {path} does not exist. Restore the file, or point the setting at an "
            f"existing file or a packaged reference (packaged:<package>/<file>){fallback}."
        )
    return str(path), None


def _local_path(configuration_dir: Path, value: str) -> Path:
    """A path setting as an absolute, normalized path (relative to the configuration dir)."""
    return Path(os.path.normpath(configuration_dir / Path(value).expanduser()))


def _type_error(path: Path, err: ValidationError) -> str:
    lines = []
    for error in err.errors():
        key = ".".join(str(part) for part in error["loc"])
        shown = redact(error["input"], key.rsplit(".", 1)[-1])
        lines.append(f"{path}: {key} = {shown!r}: {error['msg']}")
    return "; ".join(lines)


def _unknown_keys(path: Path, parsed: _RefToml) -> list[str]:
    found = []
    known_top = set(_RefToml.model_fields)
    for key in parsed.model_extra or {}:
        found.append(_unknown(path, key, known_top))
    for section, model in _SECTIONS.items():
        for key in getattr(parsed, section).model_extra or {}:
            found.append(_unknown(path, f"{section}.{key}", set(model.model_fields), key))
    return found


def _unknown(path: Path, key: str, known: set[str], short: str | None = None) -> str:
    close = difflib.get_close_matches(short or key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"
    return f"{path}: unknown key {key!r} ignored{hint}"


def provider_entries(tables: list[Any], warnings: list[str]) -> tuple[ProviderEntry, ...]:
    """The ``[[providers]]`` tables, each checked on its own; unknown keys go to ``warnings``."""
    return tuple(
        _provider_entry(position, table, warnings) for position, table in enumerate(tables, 1)
    )


def _provider_entry(position: int, table: Any, warnings: list[str]) -> ProviderEntry:
    if not isinstance(table, dict):
        return ProviderEntry(position, repr(table), problem="not a table; write [[providers]]")
    reference, name = table.get("provider"), table.get("name")
    for key in set(table) - {"provider", "name"}:
        warnings.append(
            f"{CONFIG_FILE_NAME} [[providers]] #{position}: unknown key {key!r} ignored "
            "(known: name, provider)"
        )
    if not isinstance(reference, str) or not PROVIDER_REFERENCE.match(reference):
        return ProviderEntry(
            position,
            repr(reference),
            problem="provider must be a string of the form 'package.module:attribute'",
        )
    if name is not None and (not isinstance(name, str) or not PROVIDER_NAME.match(name)):
        return ProviderEntry(position, reference, problem=f"name {name!r} is not a valid name")
    return ProviderEntry(position, reference, name)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Every process loads the settings many times; each warning is worth one log line."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _save_healed(path: Path, healed: dict[tuple[str, str], tuple[str, str]]) -> None:
    def replace(document: TOMLDocument) -> None:
        for (section, key), (old, new) in healed.items():
            table = document.get(section)
            if table is not None and table.get(key) == old:  # unless changed meanwhile
                table[key] = new

    try:
        edit_ref_toml(path.parent, replace)
    except (OSError, ConfigError) as err:
        _warn_once(f"{path}: healed values could not be saved ({err}); healed in memory instead")
    else:
        logger.info("%s: saved healed values for %s", path, ", ".join(".".join(k) for k in healed))


def edit_ref_toml[T](configuration_dir: Path, edit: Callable[[TOMLDocument], T]) -> T:
    """Apply ``edit`` to ``ref.toml`` (an empty document if there is none) and save the result
    atomically, keeping comments and order (see `rewrite_ref_toml`)."""
    path = configuration_dir / CONFIG_FILE_NAME

    def rewrite(text: str) -> tuple[str, T]:
        document = _parse(text, path)
        result = edit(document)
        return document.as_string(), result

    return rewrite_ref_toml(configuration_dir, rewrite)


def rewrite_ref_toml[T](configuration_dir: Path, rewrite: Callable[[str], tuple[str, T]]) -> T:
    """Replace the text of ``ref.toml`` by ``rewrite(text)`` and save it atomically. Edits from
    several processes are serialized by a lock, and a result that would not load is refused
    before anything is written."""
    from filelock import FileLock

    path = configuration_dir / CONFIG_FILE_NAME
    configuration_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(configuration_dir / f".{CONFIG_FILE_NAME}.lock", timeout=60):
        before = _read_text(path) or ""
        text, result = rewrite(before)
        if text != before:
            _settings_from(_parse(text, path), configuration_dir, {})  # refuse a broken result
            atomic_write_bytes(path, text.encode("utf-8"))
    return result


_TABLE_HEADER = re.compile(r"^\s*\[")
_COMMENT = re.compile(r"^\s*#")


def remove_provider_tables(text: str, positions: set[int]) -> str:
    """``text`` without the ``[[providers]]`` tables (or inline-array entries) at these 1-based
    positions, every comment of what remains kept in place.

    A removed table takes its lines and the comment block directly above its header (no blank
    line between); the comment block above the next header stays with that header. The result
    is checked to hold exactly the same values less the removed entries; if the text is unusual
    (say, a multi-line string that looks like a header), tomlkit removes the entries instead.
    """
    import tomlkit
    from tomlkit.items import AoT

    document = tomlkit.parse(text)
    providers = document.get("providers")
    if not positions or providers is None:
        return text
    expected = document.unwrap()
    expected["providers"] = [
        entry for i, entry in enumerate(expected["providers"], 1) if i not in positions
    ]
    if not expected["providers"]:
        del expected["providers"]
    if isinstance(providers, AoT):
        edited = _remove_table_lines(text, positions)
        if tomlkit.parse(edited).unwrap() == expected:
            return edited
    for index in sorted((p - 1 for p in positions), reverse=True):
        del providers[index]
    if not providers:
        del document["providers"]
    return document.as_string()


def _remove_table_lines(text: str, positions: set[int]) -> str:
    lines = text.splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if _TABLE_HEADER.match(line)]
    provider_headers = [i for i in headers if re.match(r"^\s*\[\[\s*providers\s*\]\]", lines[i])]
    removed: set[int] = set()
    for position in positions:
        header = provider_headers[position - 1]
        following = [i for i in headers if i > header]
        end = following[0] if following else len(lines)
        # The comment block right above the next header belongs to it.
        while end > header + 1 and _COMMENT.match(lines[end - 1]):
            end -= 1
        start = header
        while start > 0 and _COMMENT.match(lines[start - 1]):
            start -= 1
        removed.update(range(start, end))
    return "".join(line for i, line in enumerate(lines) if i not in removed)

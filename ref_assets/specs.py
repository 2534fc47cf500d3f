"""Dataset specs: a dataset is declared as data (a YAML file) and validated into `DatasetSpec`.

Packaged specs live in ``ref_assets/datasets/*.yaml``; an operator's own specs live in
``$REF_CONFIGURATION/datasets/*.yaml`` and replace a packaged spec of the same id. A spec that fails
validation is reported with its file and field and skipped: the other datasets still load.

>>> spec = DatasetSpec.model_validate({
...     "id": "demo", "title": "Demo", "provider": "synthetic", "period": "daily",
...     "start": "2024-01-01", "variables": [{"name": "t2m", "units": "degC"}],
... })
>>> spec.period.key(spec.start)
'2024-01-01'
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ref_assets.periods import Period, PeriodError, PeriodType
from ref_assets.secrets import redact

logger = logging.getLogger(__name__)

# Ids become asset keys and directory names: keep them to a safe, portable alphabet.
DATASET_ID_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
DatasetId = Annotated[str, Field(pattern=DATASET_ID_PATTERN)]
VariableName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$")]
AttributeValue = str | int | float | bool | list[str] | list[int] | list[float]

# Names the store layout itself uses: a variable may not shadow them.
RESERVED_NAMES = frozenset({"time", "y", "x", "spatial_ref", "ref"})

# Every period start on a store's time axis lies in this range (the end excluded): xarray and
# pandas decode the axis to numpy datetime64[ns] (1677-09-21..2262-04-11); outside it the whole
# axis reads as cftime objects and selecting by date stops working.
TIME_AXIS_RANGE = (datetime(1678, 1, 1), datetime(2262, 1, 1))
# The time axis is pre-sized a block at a time, its time values built in memory: 100,000 periods
# (11 years of hours, 273 years of days) is more than any store needs at once.
MAX_TIME_BLOCK = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VariableSpec(_Strict):
    """One data variable: its name in the store, its units and its CF attributes."""

    name: VariableName
    units: str = Field(min_length=1)
    dtype: Literal["float32", "float64"] = "float32"
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved by the store layout; choose another name")
        return name


class ChunkSpec(_Strict):
    """Spatial chunk sizes (None: the whole axis). Along time a chunk is always one period, so
    that writers of distinct periods never rewrite a shared chunk."""

    y: int | None = Field(default=None, gt=0)
    x: int | None = Field(default=None, gt=0)


class StorageSpec(_Strict):
    """How the time axis is laid out in the store."""

    time_block: int | None = Field(
        default=None,
        gt=0,
        description="periods added each time the pre-sized time axis grows (default by period)",
    )
    manifest_split: int | None = Field(
        default=None,
        gt=0,
        description="periods per manifest shard along time (default: the time block)",
    )

    @field_validator("time_block", "manifest_split")
    @classmethod
    def _bounded(cls, value: int | None) -> int | None:
        if value is not None and value > MAX_TIME_BLOCK:
            raise ValueError(
                f"{value} periods is more than the {MAX_TIME_BLOCK} allowed: the time axis is "
                "pre-sized a block at a time, with its time values built in memory; choose "
                f"{MAX_TIME_BLOCK} or fewer (the default fits the period type)"
            )
        return value


class RunSpec(_Strict):
    """How runs covering many partitions behave (none of it changes stored values)."""

    max_partitions_per_run: int | None = Field(
        default=None,
        gt=0,
        description="split backfills into runs of at most this many partitions; unset: a "
        "backfill is one run (which `dagster asset materialize --partition-range` requires)",
    )
    fetch_workers: int = Field(
        default=2, gt=0, le=32, description="periods fetched at once within a run"
    )
    commit_every: int = Field(default=32, gt=0, description="periods per commit within a run")
    commit_seconds: float = Field(
        default=30.0, gt=0, description="commit at least this often within a run"
    )


class DatasetSpec(_Strict):
    """A dataset: what it is, where its periods come from and how the store lays it out."""

    id: DatasetId
    title: str = Field(min_length=1)
    description: str = ""
    provider: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    params: dict[str, Any] = Field(default_factory=dict)
    period: PeriodType
    start: datetime
    end: datetime | None = Field(default=None, description="last period included (inclusive)")
    variables: list[VariableSpec] = Field(min_length=1)
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    chunks: ChunkSpec = Field(default_factory=ChunkSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    runs: RunSpec = Field(default_factory=RunSpec)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _dates_are_midnight(cls, value: Any) -> Any:
        # YAML reads 2024-01-01 as a date; a period start is a datetime.
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        for name, value in (("start", self.start), ("end", self.end)):
            if value is None:
                continue
            try:
                self.period.check_boundary(value)
            except PeriodError as err:
                raise ValueError(f"{name}: {err}") from None
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end:%Y-%m-%d %H:%M} is before start")
        names = [v.name for v in self.variables]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"variables: duplicated names {duplicated}")
        return self

    @property
    def variables_by_name(self) -> dict[str, VariableSpec]:
        return {v.name: v for v in self.variables}

    @property
    def time_block(self) -> int:
        return self.storage.time_block or _DEFAULT_TIME_BLOCKS[self.period]

    @property
    def manifest_split(self) -> int:
        return self.storage.manifest_split or self.time_block

    def period_for_key(self, key: str) -> Period:
        """The period named by a partition key, checked to lie within the dataset's range."""
        period = Period.from_key(self.period, key)
        if period.start < self.start or (self.end is not None and period.start > self.end):
            raise PeriodError(f"{self.id}: period {key} is outside the dataset's range")
        return period

    def time_index(self, period: Period) -> int:
        """Position of ``period`` on this dataset's time axis."""
        return self.period.index(period.start, origin=self.start)

    def fingerprint(self) -> str:
        """A short digest of the resolved spec: changes whenever any field does (secret values
        are masked first, so rotating a credential changes nothing)."""
        return _digest(self.public_dump())

    def values_fingerprint(self) -> str:
        """A short digest of the fields that shape stored values (not the title, description,
        global attributes or run settings): the basis of the asset's code version."""
        return values_fingerprint_of(self.public_dump())

    def public_dump(self) -> dict[str, Any]:
        """The resolved spec as JSON-ready data, with secret values masked."""
        return redact(self.model_dump(mode="json"))

    @field_validator("start", "end")
    @classmethod
    def _on_a_decodable_time_axis(cls, value: datetime | None) -> datetime | None:
        earliest, latest = TIME_AXIS_RANGE
        if value is not None and not earliest <= value.replace(tzinfo=None) < latest:
            raise ValueError(
                f"{value:%Y-%m-%d} is outside {earliest:%Y-%m-%d}..{latest:%Y-%m-%d} (excluded), "
                "the range of times xarray and pandas can decode the store's time axis to "
                "(numpy datetime64[ns]); choose a date within it"
            )
        return value


# Fields that never change a stored value.
_NOT_SHAPING_VALUES = frozenset({"title", "description", "attributes", "runs"})


def values_fingerprint_of(public_dump: dict[str, Any]) -> str:
    """`DatasetSpec.values_fingerprint` of a spec's `public_dump` (as a record stores it)."""
    return _digest({k: v for k, v in public_dump.items() if k not in _NOT_SHAPING_VALUES})


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


_DEFAULT_TIME_BLOCKS = {
    PeriodType.HOURLY: 24 * 31,
    PeriodType.DAILY: 366,
    PeriodType.MONTHLY: 120,
    PeriodType.YEARLY: 50,
}


@dataclass(frozen=True)
class SpecError:
    """A spec file that could not be loaded, with the field at fault."""

    path: Path
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: {self.field}" if self.field else str(self.path)
        return f"{where}: {self.message}"


class UnknownDatasetError(LookupError):
    """No loaded spec has this id."""


class SpecFileError(ValueError):
    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def load_spec_file(path: Path) -> DatasetSpec:
    """Read and validate one spec file; raise SpecFileError naming the file and each bad field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise SpecFileError([SpecError(path, None, f"cannot read YAML: {err}")]) from err
    if not isinstance(raw, dict):
        raise SpecFileError([SpecError(path, None, "expected a mapping of spec fields")])
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecFileError(
            [
                SpecError(path, ".".join(str(p) for p in e["loc"]) or None, e["msg"])
                for e in err.errors()
            ]
        ) from None


@dataclass
class SpecCatalog:
    """The specs that loaded, by id, and the errors of those that did not."""

    specs: dict[str, DatasetSpec] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    errors: list[SpecError] = field(default_factory=list)

    def get(self, dataset_id: str) -> DatasetSpec:
        try:
            return self.specs[dataset_id]
        except KeyError:
            known = ", ".join(sorted(self.specs)) or "none"
            raise UnknownDatasetError(f"no dataset {dataset_id!r} (known: {known})") from None


def packaged_spec_dir() -> Path:
    return Path(str(resources.files("ref_assets") / "datasets"))


def load_specs(
    directories: Iterable[Path],
    check: Callable[[DatasetSpec], list[tuple[str, str]]] | None = None,
) -> SpecCatalog:
    """Load every ``*.yaml`` spec in ``directories``, later directories replacing earlier ones.

    ``check`` returns ``(field, message)`` for each problem a valid spec still has (for example
    against the variable vocabulary); a spec with any is rejected like a malformed one.
    Broken files are logged and listed in ``SpecCatalog.errors``; they never stop the others.
    Two files with the same id in one directory are both rejected (which one is meant is unclear).
    """
    catalog = SpecCatalog()
    for directory in directories:
        if not directory.is_dir():
            continue
        loaded: dict[str, tuple[DatasetSpec, Path]] = {}
        clashing: set[str] = set()
        for path in sorted(directory.glob("*.y*ml")):
            try:
                spec = load_spec_file(path)
            except SpecFileError as err:
                catalog.errors.extend(err.errors)
                continue
            problems = check(spec) if check else []
            if problems:
                catalog.errors.extend(SpecError(path, key, message) for key, message in problems)
                continue
            if spec.id in loaded:
                clashing.add(spec.id)
                catalog.errors.append(
                    SpecError(path, "id", f"{spec.id!r} is also declared in {loaded[spec.id][1]}")
                )
                continue
            loaded[spec.id] = (spec, path)
        for dataset_id, (spec, path) in loaded.items():
            if dataset_id in clashing:
                continue
            if dataset_id in catalog.specs:
                logger.info("%s: %s replaces %s", dataset_id, path, catalog.sources[dataset_id])
            catalog.specs[dataset_id] = spec
            catalog.sources[dataset_id] = path
    for error in catalog.errors:
        logger.warning("skipping dataset spec %s", error)
    return catalog

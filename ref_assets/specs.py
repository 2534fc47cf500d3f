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

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ref_assets.periods import Period, PeriodError, PeriodType, last_complete_period
from ref_assets.secrets import redact

logger = logging.getLogger(__name__)

# Ids become asset keys and directory names: keep them to a safe, portable alphabet.
DATASET_ID_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
DatasetId = Annotated[str, Field(pattern=DATASET_ID_PATTERN)]
VariableName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$")]
AttributeValue = str | int | float | bool | list[str] | list[int] | list[float]

_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")

# Names the store layout itself uses: a variable may not shadow them.
RESERVED_NAMES = frozenset({"time", "y", "x", "spatial_ref", "ref"})

# Every period start on a store's time axis lies in this range (the end excluded): xarray and
# pandas decode the axis to numpy datetime64[ns] (1677-09-21..2262-04-11); outside it the whole
# axis reads as cftime objects and selecting by date stops working.
TIME_AXIS_RANGE = (datetime(1678, 1, 1), datetime(2262, 1, 1))
# The time axis is pre-sized a block at a time, its time values built in memory: 100,000 periods
# (11 years of hours, 273 years of days) is more than any store needs at once.
MAX_TIME_BLOCK = 100_000


# Owners, tags and groups as Dagster accepts them (dagster/_core/definitions/utils.py and
# dagster/_utils/tags.py; a test holds these to Dagster's own checks).
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,7}")
_TAG_PART = r"[A-Za-z0-9_.-]{1,63}"
_TAG_KEY = re.compile(rf"({_TAG_PART}/)?{_TAG_PART}")
_TAG_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,63}")
_GROUP = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*")


def _owner(owner: str) -> str:
    if _EMAIL.fullmatch(owner) or (owner.startswith("team:") and len(owner) > len("team:")):
        return owner
    raise ValueError(
        f"owner {owner!r} is neither an e-mail address nor a team written team:<name> "
        "(such as team:climate-data)"
    )


def _tag_key(key: str) -> str:
    if key.startswith("dagster/"):
        raise ValueError(f"tag {key!r}: keys under dagster/ are Dagster's own")
    if not _TAG_KEY.fullmatch(key):
        raise ValueError(
            f"tag key {key!r} must be at most 63 letters, digits, '_', '-' or '.', optionally "
            "after one namespace of the same and a '/' (such as domain/climate)"
        )
    return key


def _tag_value(value: str) -> str:
    if not _TAG_VALUE.fullmatch(value):
        raise ValueError(f"tag value {value!r} must be at most 63 letters, digits, '_', '-' or '.'")
    return value


def _group(name: str) -> str:
    if not _GROUP.fullmatch(name):
        raise ValueError(
            f"group {name!r} must be letters, digits and '_', in segments separated by '/' "
            "(such as datasets or datasets/precipitation)"
        )
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_reserved(name: str) -> str:
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved by the store layout; choose another name")
    return name


class DimensionSpec(_Strict):
    """A dimension besides time, y and x (pressure level, ensemble member, age class), with the
    coordinate values the store keeps, in order. A provider whose source holds more values
    delivers exactly these (`local_files` selects them by value).

    >>> DimensionSpec(name="level", values=[1000, 850, 500], units="hPa").size
    3
    """

    name: Annotated[VariableName, AfterValidator(_not_reserved)]
    values: list[int] | list[float] | list[str] = Field(min_length=1)
    units: str | None = Field(default=None, min_length=1)
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list) -> list:
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"coordinate values repeat: {repeated}")
        return values

    @property
    def size(self) -> int:
        return len(self.values)

    def coordinate(self) -> np.ndarray:
        """The values as the store keeps them: float64, int64 or strings."""
        if all(isinstance(v, str) for v in self.values):
            return np.asarray(self.values, dtype=str)
        kind = "int64" if all(isinstance(v, int) for v in self.values) else "float64"
        return np.asarray(self.values, dtype=kind)


class VariableSpec(_Strict):
    """One data variable: its name in the store, its units, its CF attributes and the extra
    dimensions it has (stored as ``(time, *dimensions, y, x)``)."""

    name: Annotated[VariableName, AfterValidator(_not_reserved)]
    units: str = Field(min_length=1)
    dtype: Literal["float32", "float64"] = "float32"
    dimensions: list[VariableName] = Field(
        default_factory=list,
        description="names of the spec's `dimensions` this variable has, outermost first",
    )
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)


class ChunkSpec(_Strict):
    """Spatial chunk sizes (None: the whole axis). Along time a chunk is always one period, so
    that writers of distinct periods never rewrite a shared chunk."""

    y: int | None = Field(default=None, gt=0)
    x: int | None = Field(default=None, gt=0)


class TimeseriesSpec(_Strict):
    """The analysis-ready time-series copy (`ref_assets.store.timeseries`): a second store of the
    same values chunked along time, kept current from the per-period store. Its chunking never
    changes the per-period store (nor its structure or code version)."""

    time_chunk: int | None = Field(
        default=None,
        gt=0,
        le=MAX_TIME_BLOCK,
        description="periods per chunk along time (default by period: 365 days, 744 hours, "
        "120 months, 50 years)",
    )
    y: int = Field(default=50, gt=0, description="rows per stored object (a Zarr shard)")
    x: int = Field(default=50, gt=0, description="columns per stored object (a Zarr shard)")
    tile: int = Field(
        default=10,
        gt=0,
        description="cells a side of the chunks inside each shard: a point series reads one "
        "such chunk (and the shard's index) per time chunk; must divide y and x",
    )

    @model_validator(mode="after")
    def _tiles_fill_shards(self) -> TimeseriesSpec:
        if self.y % self.tile or self.x % self.tile:
            raise ValueError(
                f"tile {self.tile} must divide y ({self.y}) and x ({self.x}): a shard holds "
                "whole tiles"
            )
        return self


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
    pool: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="the Dagster pool of the dataset's fetch steps: datasets sharing a pool "
        "share its limit (default: the provider's name, one pool per upstream)",
    )
    pool_limit: int | None = Field(
        default=None,
        gt=0,
        description="at most this many fetch steps of the pool at once, each fetching "
        "`fetch_workers` periods (default: the provider's `pool_limit`; none: unlimited)",
    )
    commit_every: int = Field(default=32, gt=0, description="periods per commit within a run")
    commit_seconds: float = Field(
        default=30.0, gt=0, description="commit at least this often within a run"
    )


NanFraction = Annotated[float, Field(ge=0.0, le=1.0)]


class VariableChecksSpec(_Strict):
    """Per-variable overrides of the dataset's check bounds."""

    max_nan_fraction: NanFraction


class ChecksSpec(_Strict):
    """Bounds of the partitioned asset checks every stored period gets (none changes stored
    values). The default allows any NaN fraction: a land-only product over a box that is mostly
    sea is NaN almost everywhere, so only the operator knows the bound."""

    max_nan_fraction: NanFraction = Field(
        default=1.0, description="the largest NaN fraction a variable may have in one period"
    )
    variables: dict[VariableName, VariableChecksSpec] = Field(
        default_factory=dict, description="per-variable overrides, by variable name"
    )
    publish: Literal["direct", "validated"] = Field(
        default="direct",
        description="`direct`: each commit lands on main, then its periods are checked; "
        "`validated`: a run writes on its own branch, checks its periods there and publishes "
        "only those that pass, so readers of main never see a period that failed its checks "
        "(`ref_assets.publishing`)",
    )

    def max_nan_fraction_of(self, variable: str) -> float:
        override = self.variables.get(variable)
        return override.max_nan_fraction if override else self.max_nan_fraction


class UpdatesSpec(_Strict):
    """How the dataset's availability sensor keeps it current (`ref_assets.updates`)."""

    default_status: Literal["running", "stopped"] = Field(
        default="stopped",
        description="whether the sensor runs as soon as the code location loads; `stopped`: "
        "an operator turns it on in the UI (or `dagster sensor start`)",
    )
    min_interval: int = Field(
        default=3600,
        ge=1,
        description="seconds between two evaluations of the sensor (Dagster's "
        "minimum_interval_seconds)",
    )
    revision_window: int = Field(
        default=0,
        ge=0,
        le=MAX_TIME_BLOCK,
        description="how many of the newest stored periods have their source fingerprint "
        "compared with their record on each evaluation (one cheap request each); 0: off",
    )
    max_periods_per_tick: int = Field(
        default=1000,
        gt=0,
        description="at most this many periods requested by one evaluation; the rest follow "
        "in the next ones",
    )
    retry_after: int = Field(
        default=600,
        gt=0,
        description="seconds to wait after a provider error before asking again (doubled on "
        "each further error, up to a day)",
    )


class RetentionSpec(_Strict):
    """How long the store keeps its history (`ref_assets.store.maintenance`): a snapshot of
    ``main`` is kept if newer than ``keep_days`` or among its ``keep_last`` newest commits, and
    every tagged release is kept. Changes no stored value."""

    keep_days: float | None = Field(
        default=None, ge=0, description="keep snapshots of main younger than this many days"
    )
    keep_last: int | None = Field(
        default=None, gt=0, description="keep main's newest commits, this many of them"
    )
    grace_minutes: float = Field(
        default=60,
        ge=0,
        description="unreferenced objects younger than this are kept: a writer's commit in "
        "progress (0 only when nothing writes while maintenance runs)",
    )
    abandoned_days: float = Field(
        default=7,
        gt=0,
        description="work branches (rebuild, rechunk, publish) with no commit, creation or "
        "reset for this many days are runs that died: maintenance discards them",
    )
    schedule: str = Field(
        default="0 3 * * 0",
        pattern=r"^\s*[0-9*/,A-Za-z-]+(\s+[0-9*/,A-Za-z-]+){4}\s*$",
        description="when Dagster's maintain_<dataset> schedule runs (a 5-field cron "
        "expression, UTC; default Sundays 03:00)",
    )
    default_status: Literal["running", "stopped"] = Field(
        default="stopped",
        description="whether that schedule runs as soon as the code location loads",
    )

    @model_validator(mode="after")
    def _keeps_something(self) -> RetentionSpec:
        if self.keep_days is None and self.keep_last is None:
            raise ValueError("give keep_days, keep_last or both: what maintenance keeps")
        return self


class DatasetSpec(_Strict):
    """A dataset: what it is, where its periods come from and how the store lays it out."""

    id: DatasetId
    title: str = Field(min_length=1)
    description: str = ""
    provider: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    params: dict[str, Any] = Field(default_factory=dict)
    period: PeriodType
    start: datetime
    end: datetime | None = Field(
        default=None,
        description="the last period (inclusive), given as any instant inside it; for hourly "
        "data a date without a time means that whole day. Unset: up to the newest complete "
        "period. May lie in the future (projections, data published ahead of time).",
    )
    dimensions: list[DimensionSpec] = Field(
        default_factory=list, description="dimensions besides time, y and x"
    )
    variables: list[VariableSpec] = Field(min_length=1)
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    chunks: ChunkSpec = Field(default_factory=ChunkSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    runs: RunSpec = Field(default_factory=RunSpec)
    # How the Dagster UI files the dataset (and its source): owners, tags, group.
    owners: list[Annotated[str, AfterValidator(_owner)]] = Field(
        default_factory=list, description="e-mail addresses or team:<name>"
    )
    tags: dict[
        Annotated[str, AfterValidator(_tag_key)], Annotated[str, AfterValidator(_tag_value)]
    ] = Field(default_factory=dict)
    group: Annotated[str, AfterValidator(_group)] = "datasets"
    checks: ChecksSpec = Field(default_factory=ChecksSpec)
    updates: UpdatesSpec = Field(default_factory=UpdatesSpec)
    timeseries: TimeseriesSpec | None = Field(
        default=None,
        description="keep a time-chunked copy of the dataset beside the per-period store; "
        "unset: none (the copy doubles the storage a dataset takes)",
    )
    retention: RetentionSpec | None = Field(
        default=None,
        description="expire old snapshots and collect garbage (`ref-assets maintain`, and a "
        "Dagster schedule); unset: every commit is kept",
    )

    @field_validator("start", "end", mode="before")
    @classmethod
    def _dates_are_midnight(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML reads 2024-01-01 as a date; a period start is a datetime. An hourly dataset's
        # `end: 2024-12-31` means the whole day, so its last period is the day's last hour.
        if isinstance(value, str) and _DATE_ONLY.fullmatch(value):
            value = date.fromisoformat(value)
        if isinstance(value, date) and not isinstance(value, datetime):
            hour = 23 if info.field_name == "end" and info.data.get("period") == "hourly" else 0
            return datetime(value.year, value.month, value.day, hour)
        return value

    @field_validator("end")
    @classmethod
    def _end_is_its_period(cls, end: datetime | None, info: ValidationInfo) -> datetime | None:
        # Stored as the start of the last period, which is what every reader of `end` compares.
        period = info.data.get("period")
        return PeriodType(period).floor(end) if end is not None and period else end

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        try:
            self.period.check_boundary(self.start)
        except PeriodError as err:
            raise ValueError(f"start: {err}") from None
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end:%Y-%m-%d %H:%M} is before start")
        names = [v.name for v in self.variables]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"variables: duplicated names {duplicated}")
        self._check_dimensions(names)
        unknown = sorted(set(self.checks.variables) - set(names))
        if unknown:
            raise ValueError(f"checks.variables: {unknown} are not variables of this dataset")
        return self

    def _check_dimensions(self, variable_names: list[str]) -> None:
        declared = [d.name for d in self.dimensions]
        for problem in (
            sorted({n for n in declared if declared.count(n) > 1}),
            sorted(set(declared) & set(variable_names)),
        ):
            if problem:
                raise ValueError(f"dimensions: {problem} named twice (dimensions and variables)")
        used = set()
        for position, variable in enumerate(self.variables):
            unknown = [d for d in variable.dimensions if d not in declared]
            if unknown or len(set(variable.dimensions)) < len(variable.dimensions):
                raise ValueError(
                    f"variables.{position}.dimensions: {variable.dimensions} must name distinct "
                    f"entries of `dimensions` (declared: {declared})"
                )
            used.update(variable.dimensions)
        unused = [d for d in declared if d not in used]
        if unused:
            raise ValueError(
                f"dimensions: {unused} are used by no variable; list them under a variable's "
                "`dimensions` or remove them"
            )

    @property
    def variables_by_name(self) -> dict[str, VariableSpec]:
        return {v.name: v for v in self.variables}

    @property
    def dimensions_by_name(self) -> dict[str, DimensionSpec]:
        return {d.name: d for d in self.dimensions}

    @property
    def time_block(self) -> int:
        return self.storage.time_block or _DEFAULT_TIME_BLOCKS[self.period]

    @property
    def manifest_split(self) -> int:
        return self.storage.manifest_split or self.time_block

    @property
    def timeseries_time_chunk(self) -> int | None:
        """Periods per time chunk of the time-series copy; None when the spec asks for none."""
        if self.timeseries is None:
            return None
        return self.timeseries.time_chunk or _DEFAULT_TIMESERIES_CHUNKS[self.period]

    def last_period(self, now: datetime | None = None) -> Period | None:
        """The dataset's last period: the one holding `end` (which may lie in the future), or
        without an end the newest period complete at ``now``; None when that is before `start`.
        Partitions, `ref-assets status` and `ref-assets materialize` all stop here.

        >>> spec = DatasetSpec.model_validate({
        ...     "id": "pop", "title": "Population", "provider": "worldpop", "period": "yearly",
        ...     "start": "2015-01-01", "end": "2030-06-30", "variables": [
        ...         {"name": "pop_total", "units": "people"}]})
        >>> spec.last_period().key
        '2030'
        """
        if self.end is not None:
            return Period(self.period, self.end)
        last = last_complete_period(self.period, now)
        return last if last.start >= self.start else None

    def period_for_key(self, key: str, now: datetime | None = None) -> Period:
        """The period named by a partition key (or its start in ISO form, `Period.from_text`),
        checked to lie within the dataset's range; a PeriodError otherwise, saying which bound it
        crosses and what to do."""
        period = Period.from_text(self.period, key, dataset=self.id)
        first = Period(self.period, self.start)
        if period < first:
            raise PeriodError(
                f"{self.id}: period {period.key} is before the dataset's first period {first.key} "
                "(its `start`); to ingest it, move `start` back in the spec"
            )
        last = self.last_period(now)
        if self.end is not None and last is not None and period > last:
            raise PeriodError(
                f"{self.id}: period {period.key} is after the dataset's last period {last.key} "
                "(its `end`); to ingest it, move `end` forward in the spec"
            )
        if last is None or period > last:
            newest = last_complete_period(self.period, now).key
            raise PeriodError(
                f"{self.id}: period {period.key} has not ended yet (the newest complete "
                f"{self.period.value} period is {newest}); if the source publishes periods ahead "
                "of time (projections, forecasts), set `end` in the spec to include them"
            )
        return period

    def time_index(self, period: Period) -> int:
        """Position of ``period`` on this dataset's time axis."""
        return self.period.index(period.start, origin=self.start)

    def fingerprint(self) -> str:
        """A short digest of the resolved spec: changes whenever any field does (secret values
        are masked first, so rotating a credential changes nothing)."""
        return self._digests[0]

    def values_fingerprint(self) -> str:
        """A short digest of the fields that shape stored values (not the title, description,
        global attributes or run settings): the basis of the asset's code version."""
        return self._digests[1]

    def public_dump(self) -> dict[str, Any]:
        """The resolved spec as JSON-ready data, with secret values masked.

        One object shared by every caller (each period's record carries it; a deep copy cost
        2 ms a record): read it, never change it."""
        return self._public

    # Computed once: the spec is frozen, and every period's record carries the dump and both
    # digests (dumping and masking took milliseconds a period in a range run).
    @functools.cached_property
    def _public(self) -> dict[str, Any]:
        # Without a `timeseries` or `retention` section the dump (and fingerprint) is what it
        # was before the section existed.
        # Likewise `checks.publish` left at its default.
        unset: dict[str, Any] = {
            name: True for name in ("timeseries", "retention") if getattr(self, name) is None
        }
        if self.checks.publish == "direct":
            unset["checks"] = {"publish"}
        return redact(self.model_dump(mode="json", exclude=unset or None))

    @functools.cached_property
    def _digests(self) -> tuple[str, str]:
        return _digest(self._public), values_fingerprint_of(self._public)

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
# `timeseries` shapes only the copy: adding it leaves the per-period store's code version alone.
_NOT_SHAPING_VALUES = frozenset(
    {
        "title",
        "description",
        "attributes",
        "runs",
        "owners",
        "tags",
        "group",
        "checks",
        "updates",
        "timeseries",
        "retention",
    }
)


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


# A year of days, a month of hours (744), ten years of months, fifty years: each chunk a few MB
# at 50 x 50 cells, and a point series over decades a handful of chunks.
_DEFAULT_TIMESERIES_CHUNKS = {
    PeriodType.HOURLY: 24 * 31,
    PeriodType.DAILY: 365,
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


# A spec is a page of YAML; a file many times that size is not a spec.
MAX_SPEC_BYTES = 1 << 20


class _AliasRefused(yaml.YAMLError):
    pass


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML without aliases: 664 bytes of nested aliases expand to gigabytes once walked
    (fingerprints, masking), which would hang every process that loads the specs."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise _AliasRefused(
                f"line {mark.line + 1}, column {mark.column + 1}: YAML aliases/anchors are not "
                f"allowed in specs (*{event.anchor}); write the repeated values out in full"
            )
        return super().compose_node(parent, index)


def load_spec_file(path: Path) -> DatasetSpec:
    """Read and validate one spec file; raise SpecFileError naming the file and each bad field."""
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecFileError(
                [
                    SpecError(
                        path,
                        None,
                        f"the file is {size:,} bytes; a spec may be at most {MAX_SPEC_BYTES:,} "
                        "bytes (is it really a dataset spec?)",
                    )
                ]
            )
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)
    except _AliasRefused as err:
        raise SpecFileError([SpecError(path, None, str(err))]) from None
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

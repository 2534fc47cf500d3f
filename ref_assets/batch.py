"""From what a provider fetched to what the store writes: normalize, validate, checksum.

`prepare_batch` is the one place where a fetched period is checked against the dataset's
description (variables, grid, time) and cast to its storage form. Anything that does not fit is a
`PeriodDataError` naming the dataset, the period and the source files, raised before any write.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import xarray as xr

from ref_assets.checksum import period_checksum
from ref_assets.periods import Period
from ref_assets.preview import Preview, PreviewStyle, render_preview
from ref_assets.providers.normalize import GridShapeError, select_dimension
from ref_assets.providers.protocol import (
    Description,
    FetchedPeriod,
    Grid,
    Provider,
    SourceFingerprint,
    SourceItem,
)
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec
from ref_assets.store.layout import check_period_fits


class PeriodDataError(ValueError):
    """A fetched period that does not match its dataset; nothing of it was written."""


@dataclass(frozen=True)
class VariableStats:
    minimum: float | None
    mean: float | None
    maximum: float | None
    nan_fraction: float

    @classmethod
    def of(cls, values: np.ndarray) -> VariableStats:
        finite = values[~np.isnan(values)]
        if finite.size == 0:
            return cls(None, None, None, 1.0)
        return cls(
            minimum=float(finite.min()),
            mean=float(finite.mean(dtype="float64")),
            maximum=float(finite.max()),
            nan_fraction=1.0 - finite.size / values.size,
        )


@dataclass(frozen=True)
class PeriodBatch:
    """One period ready to store: variables on ``(*extra dimensions, y, x)`` in their storage
    dtype."""

    spec: DatasetSpec
    description: Description
    period: Period
    variables: dict[str, np.ndarray]
    sources: tuple[SourceItem, ...]
    provider: str
    provider_version: str
    checksum: str
    stats: dict[str, VariableStats]
    fetched_at: datetime  # UTC, when the provider's data was in hand
    flags: dict[str, str] = field(default_factory=dict)  # per-step source flags (ERA5 expver)
    # A map of the main variable, drawn while the values are in memory; or why there is none.
    preview: Preview | None = None
    preview_problem: str | None = None
    fingerprint: SourceFingerprint | None = None  # the source version read (revisions)

    @property
    def time_index(self) -> int:
        return self.spec.time_index(self.period)


def prepare_batch(
    spec: DatasetSpec,
    description: Description,
    period: Period,
    fetched: FetchedPeriod,
    *,
    provider: str,
    provider_version: str,
    fetched_at: datetime,
    preview_style: PreviewStyle | None = None,
) -> PeriodBatch:
    """Check ``fetched`` against ``description`` and cast it for storage; with
    ``preview_style``, also draw its map preview (see `ref_assets.preview`).

    Raises PeriodDataError (naming dataset, period and sources) when variables are missing, the
    grid or time does not match, or values are infinite.
    """
    sources = ", ".join(s.uri for s in fetched.sources) or "no source items"

    def fail(problem: str) -> PeriodDataError:
        return PeriodDataError(f"{spec.id} period {period.key}: {problem} (sources: {sources})")

    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in fetched.flags.items()):
        raise fail(f"the provider's flags must map names to text, got {fetched.flags!r}")
    data = _single_time_step(fetched.data, period, fail)
    _check_grid(data, description, fail)
    variables: dict[str, np.ndarray] = {}
    for variable in spec.variables:
        if variable.name not in data.data_vars:
            raise fail(
                f"the provider returned no variable {variable.name!r} "
                f"(it returned {sorted(map(str, data.data_vars))})"
            )
        array = data[variable.name]
        dims = (*variable.dimensions, "y", "x")
        if set(array.dims) != set(dims):
            raise fail(f"variable {variable.name!r} has dims {array.dims}, expected {dims}")
        for name in variable.dimensions:
            try:
                array = select_dimension(array, spec.dimensions_by_name[name])
            except GridShapeError as err:
                raise fail(f"variable {variable.name!r}: {err}") from None
        units = array.attrs.get("units")
        if units is not None and units != variable.units:
            raise fail(
                f"variable {variable.name!r} is in {units!r} but the spec stores {variable.units!r}"
            )
        source_values = array.transpose(*dims).values
        if np.isinf(source_values).any():
            raise fail(f"variable {variable.name!r} has infinite values")
        with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
            values = np.ascontiguousarray(source_values, dtype=variable.dtype)
        if np.isinf(values).any():
            raise fail(
                f"variable {variable.name!r} has values beyond the range of {variable.dtype}"
            )
        variables[variable.name] = values
    grid = description.grid
    preview, preview_problem = None, None
    if preview_style is not None:
        try:
            preview = _preview(spec, grid, variables, preview_style)
        except ValueError as err:  # a bad colour map must not cost the period its data
            preview_problem = f"{spec.id} period {period.key}: no map preview: {err}"
    return PeriodBatch(
        spec=spec,
        description=description,
        period=period,
        variables=variables,
        sources=tuple(fetched.sources),
        provider=provider,
        provider_version=provider_version,
        checksum=period_checksum(
            period.start,
            grid.y,
            grid.x,
            variables,
            {d.name: d.coordinate() for d in spec.dimensions},
        ),
        stats={name: VariableStats.of(values) for name, values in variables.items()},
        fetched_at=fetched_at,
        flags=dict(fetched.flags),
        preview=preview,
        preview_problem=preview_problem,
        fingerprint=fetched.fingerprint,
    )


def _preview(
    spec: DatasetSpec, grid: Grid, variables: dict[str, np.ndarray], style: PreviewStyle
) -> Preview:
    """The preview of ``style.variable``, at the first value of each extra dimension."""
    variable = spec.variables_by_name[style.variable]
    selection = " ".join(
        f"{name}={spec.dimensions_by_name[name].values[0]}" for name in variable.dimensions
    )
    field_2d = variables[style.variable][(0,) * len(variable.dimensions)]
    return render_preview(field_2d, grid.y, grid.x, style, selection=selection)


def fetch_batch(
    spec: DatasetSpec,
    provider: Provider,
    period: Period,
    preview_style: PreviewStyle | None = None,
) -> PeriodBatch:
    """Fetch ``period`` from ``provider`` and prepare it for the store (see `prepare_batch`)."""
    description = provider.describe()
    check_period_fits(spec, description)
    fetched = provider.fetch(period)
    return prepare_batch(
        spec,
        description,
        period,
        fetched,
        provider=provider.name,
        provider_version=provider.version,
        fetched_at=datetime.now(UTC),
        preview_style=preview_style,
    )


# The most bytes of fetched periods a range run holds ahead of the one being written.
AHEAD_BYTES = 256 * 2**20


@dataclass(frozen=True)
class PeriodFailure:
    """A period of a range that could not be fetched or did not validate."""

    period: Period
    error: str


@dataclass(frozen=True)
class PeriodStream:
    """The periods of a multi-partition run, fetched in order by ``workers`` threads, ahead of
    the consumer by at most a commit's worth of periods (`periods_ahead`), so memory does not
    grow with the number of periods.

    Iterating yields a `PeriodBatch`, or a `PeriodFailure` for a period that failed (the others
    go on). Providers must allow ``fetch`` from several threads when ``workers`` > 1.
    """

    spec: DatasetSpec
    provider: Provider
    periods: tuple[Period, ...]
    workers: int = 1
    preview_style: PreviewStyle | None = None

    def __iter__(self) -> Iterator[PeriodBatch | PeriodFailure]:
        periods = iter(self.periods)
        in_flight: deque[tuple[Period, Future[PeriodBatch]]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix=f"fetch-{self.spec.id}") as pool:

            def submit_next() -> bool:
                period = next(periods, None)
                if period is None:
                    return False
                future = pool.submit(
                    fetch_batch, self.spec, self.provider, period, self.preview_style
                )
                in_flight.append((period, future))
                return True

            ahead = self.workers  # until a period's size is known
            for _ in range(ahead):
                submit_next()
            try:
                while in_flight:
                    period, future = in_flight.popleft()
                    try:
                        batch = future.result()
                    except Exception as err:  # any provider failure is this period's alone
                        submit_next()
                        yield PeriodFailure(period, redact(f"{type(err).__name__}: {err}"))
                        continue
                    ahead = max(ahead, self.periods_ahead(batch))
                    while len(in_flight) < ahead and submit_next():
                        pass
                    yield batch
            finally:
                for _, future in in_flight:
                    future.cancel()

    def periods_ahead(self, batch: PeriodBatch) -> int:
        """How many periods to fetch ahead of the consumer once a period's size is known: a
        commit's worth (`runs.commit_every`), at most `AHEAD_BYTES`, at least ``workers``. With
        only ``workers`` ahead, the fetch threads sat idle while the consumer wrote, committed
        and reported each commit."""
        period_bytes = max(1, sum(values.nbytes for values in batch.variables.values()))
        fitting = min(self.spec.runs.commit_every, AHEAD_BYTES // period_bytes)
        return max(self.workers, fitting)


def _single_time_step(data: xr.Dataset, period: Period, fail) -> xr.Dataset:
    """Drop the time (a length-one dimension or a scalar coordinate) after checking that it lies
    within the period. Data without any time is taken to be the period's."""
    if "time" in data.dims:
        if data.sizes["time"] != 1:
            raise fail(f"expected one time step, got {data.sizes['time']}")
        if "time" not in data.coords:
            raise fail("a time dimension without a time coordinate")
        data = data.isel(time=0)
    if "time" in data.coords:
        try:
            stamp = np.datetime64(data["time"].values.item(), "s").astype(object)
        except (TypeError, ValueError):
            raise fail(
                f"time {data['time'].values!r} is not a standard-calendar timestamp"
            ) from None
        if not (period.start <= stamp < period.end):
            raise fail(f"time {stamp} lies outside the period [{period.start}, {period.end})")
    return data.drop_vars("time", errors="ignore")


def _check_grid(data: xr.Dataset, description: Description, fail) -> None:
    for axis, expected in (("y", description.grid.y), ("x", description.grid.x)):
        if axis not in data.coords:
            raise fail(f"no {axis!r} coordinate")
        actual = np.asarray(data[axis].values, dtype="float64")
        if actual.shape != expected.shape:
            raise fail(f"grid mismatch: {axis} has {actual.size} cells, expected {expected.size}")
        spacing = np.abs(np.diff(expected)).min() if expected.size > 1 else 1.0
        worst = float(np.abs(actual - expected).max()) if actual.size else 0.0
        if worst > 1e-3 * spacing:
            raise fail(
                f"grid mismatch: {axis} differs from the dataset grid by up to {worst:g} "
                f"(first cells {actual[:2].tolist()} vs {expected[:2].tolist()})"
            )

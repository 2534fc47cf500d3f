"""Checks of one stored period: what landed in the store, against the spec, the vocabulary and
the period's provenance record.

Each check returns a `CheckOutcome` (passed, a description naming what is wrong, and numbers to
show); `check_period` runs all four on a `StoredPeriod`, `check_stored_periods` on periods read
from a store session. The Dagster face turns them into partitioned asset check evaluations.

- `grid_matches_spec`: the store's variables, dimensions, units and dtypes are the spec's, the
  period's arrays have the grid's shape, the coordinates form the regular grid the store was laid
  out with, and the stored time is the period's start.
- `nan_fraction_within_bound`: each variable's NaN fraction is at most ``checks.max_nan_fraction``
  of the spec (or the variable's own bound under ``checks.variables``).
- `values_within_valid_range`: every finite value lies within the vocabulary's ``valid_range``
  for the variable's units.
- `checksum_matches_record`: the values re-checksummed equal the record's checksum (an edit
  that bypassed ref_assets, or damaged storage, fails it).

>>> [quality] = check_stored_periods(spec, vocabulary, session, ["2024-01-02"])  # doctest: +SKIP
>>> quality.passed, quality.description  # doctest: +SKIP
(True, 'all 4 checks passed')
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import icechunk as ic
import numpy as np

from ref_assets.periods import IndexRanges, Period
from ref_assets.specs import DatasetSpec
from ref_assets.store.layout import open_laid_out_root, spec_structure
from ref_assets.store.reader import PeriodReader, StoredPeriod, written_index_array
from ref_assets.verification import check_against_record
from ref_assets.vocabulary import VariableVocabulary

# Coordinates are float64 cell centres; spacing may differ by float rounding, not by a cell.
_GRID_TOLERANCE = 1e-6


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one check of one period."""

    name: str
    passed: bool
    description: str
    numbers: dict[str, float | int] = field(default_factory=dict)


@dataclass(frozen=True)
class PeriodQuality:
    """Every check of one period."""

    period: str
    outcomes: tuple[CheckOutcome, ...]

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self.outcomes)

    @property
    def description(self) -> str:
        failed = [o for o in self.outcomes if not o.passed]
        if not failed:
            return f"all {len(self.outcomes)} checks passed"
        return "; ".join(f"{o.name} failed: {o.description}" for o in failed)


def grid_matches_spec(spec: DatasetSpec, key: str, stored: StoredPeriod) -> CheckOutcome:
    problems: list[str] = []
    expected = spec_structure(spec)
    laid_out = {k: stored.structure.get(k) for k in expected}
    changed = sorted(k for k in expected if laid_out[k] != _jsonable(expected[k]))
    if changed:
        problems.append(
            f"the store was laid out with other {', '.join(changed)} than the spec gives "
            f"(store: { {k: laid_out[k] for k in changed} })"
        )
    ny, nx = stored.structure["grid_shape"]
    first_last = stored.structure["grid_first_last"]
    for axis, values, size, (first, last) in (
        ("y", stored.y, ny, first_last[0:2]),
        ("x", stored.x, nx, first_last[2:4]),
    ):
        problems += _axis_problems(axis, values, size, first, last)
    for name, values in stored.dimensions.items():
        wanted = spec.dimensions_by_name.get(name)
        if wanted is not None and list(values.tolist()) != list(wanted.coordinate().tolist()):
            problems.append(f"dimension {name} holds {values.tolist()}, the spec {wanted.values}")
    sizes = {name: len(values) for name, values in stored.dimensions.items()}
    for variable in spec.variables:
        values = stored.variables.get(variable.name)
        if values is None:
            problems.append(f"variable {variable.name} is not in the store")
            continue
        dims = ("time", *variable.dimensions, "y", "x")
        if stored.variable_dims[variable.name] != dims:
            problems.append(
                f"{variable.name} is stored on {stored.variable_dims[variable.name]}, not {dims}"
            )
        shape = (*(sizes.get(d, -1) for d in variable.dimensions), ny, nx)
        if values.shape != shape:
            problems.append(f"{variable.name} has shape {values.shape}, not {shape}")
        if values.dtype != np.dtype(variable.dtype):
            problems.append(f"{variable.name} is {values.dtype}, not {variable.dtype}")
        if stored.variable_units[variable.name] != variable.units:
            problems.append(
                f"{variable.name} is in {stored.variable_units[variable.name]!r}, "
                f"not {variable.units!r}"
            )
    period = Period.from_key(spec.period, key)
    if stored.start != period.start:
        problems.append(f"the stored time is {stored.start:%Y-%m-%d %H:%M}, not the period's start")
    return CheckOutcome(
        "grid_matches_spec",
        not problems,
        "; ".join(problems) or f"{ny} x {nx} grid, variables and time as the spec gives",
        {"grid_y": int(ny), "grid_x": int(nx)},
    )


def _axis_problems(axis: str, values: np.ndarray, size: int, first: float, last: float) -> list:
    if values.shape != (size,):
        return [f"{axis} has {values.size} cells, the store's grid {size}"]
    problems = []
    ends = np.array([values[0], values[-1]])
    spacing = np.diff(values)
    step = abs(float(spacing[0])) if size > 1 else 1.0
    if not np.allclose(ends, [first, last], rtol=0, atol=_GRID_TOLERANCE * max(step, 1e-12)):
        problems.append(f"{axis} runs {ends.tolist()}, the store's grid {[first, last]}")
    if size > 1 and not (
        np.all(np.sign(spacing) == np.sign(spacing[0]))
        and np.allclose(spacing, spacing[0], rtol=0, atol=_GRID_TOLERANCE * step)
    ):
        problems.append(f"{axis} is not evenly spaced (steps {spacing.min():g}..{spacing.max():g})")
    return problems


def _jsonable(value):
    """``value`` as it reads back from the store's JSON attributes (tuples become lists)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def nan_fraction_within_bound(spec: DatasetSpec, stored: StoredPeriod) -> CheckOutcome:
    numbers: dict[str, float | int] = {}
    problems = []
    for name, values in stored.variables.items():
        bound = spec.checks.max_nan_fraction_of(name)
        fraction = float(np.isnan(values).mean()) if values.size else 1.0
        numbers[f"{name} nan_fraction"] = round(fraction, 6)
        numbers[f"{name} max_nan_fraction"] = bound
        if fraction > bound:
            problems.append(f"{name} is {fraction:.1%} NaN, above the bound of {bound:.1%}")
    return CheckOutcome(
        "nan_fraction_within_bound",
        not problems,
        "; ".join(problems) or "every variable within its NaN bound",
        numbers,
    )


def values_within_valid_range(
    spec: DatasetSpec, vocabulary: VariableVocabulary, stored: StoredPeriod
) -> CheckOutcome:
    numbers: dict[str, float | int] = {}
    problems, unbounded = [], []
    for variable in spec.variables:
        values = stored.variables.get(variable.name)
        entry = vocabulary.variables.get(variable.name)
        bounds = entry.valid_range.get(variable.units) if entry else None
        if values is None:
            continue
        if bounds is None:
            unbounded.append(variable.name)
            continue
        low, high = bounds
        finite = values[np.isfinite(values)]
        outside = int(np.count_nonzero((finite < low) | (finite > high)))
        numbers[f"{variable.name} values_outside_valid_range"] = outside
        if outside:
            problems.append(
                f"{variable.name}: {outside} values outside the valid range [{low:g}, {high:g}] "
                f"{variable.units} (min {finite.min():g}, max {finite.max():g})"
            )
    note = f" (no valid_range in the vocabulary for {', '.join(unbounded)})" if unbounded else ""
    return CheckOutcome(
        "values_within_valid_range",
        not problems,
        ("; ".join(problems) or "every value within the vocabulary's valid range") + note,
        numbers,
    )


def checksum_matches_record(spec: DatasetSpec, key: str, stored: StoredPeriod) -> CheckOutcome:
    check = check_against_record(spec.id, key, stored.record, stored.checksum())
    return CheckOutcome(
        "checksum_matches_record",
        check.ok,
        check.problem
        or f"stored values match the record's checksum {(check.recorded or '')[:19]}...",
    )


def check_period(
    spec: DatasetSpec, vocabulary: VariableVocabulary, key: str, stored: StoredPeriod
) -> PeriodQuality:
    return PeriodQuality(
        key,
        (
            grid_matches_spec(spec, key, stored),
            nan_fraction_within_bound(spec, stored),
            values_within_valid_range(spec, vocabulary, stored),
            checksum_matches_record(spec, key, stored),
        ),
    )


def check_stored_periods(
    spec: DatasetSpec, vocabulary: VariableVocabulary, session: ic.Session, keys: Iterable[str]
) -> Iterator[PeriodQuality]:
    """Check each period ``keys`` names, as ``session`` holds it, one period in memory at a
    time; a period the store does not hold fails (there is nothing to check)."""
    laid_out = open_laid_out_root(session.store) is not None
    reader = PeriodReader(session) if laid_out else None
    written = IndexRanges.of(written_index_array(session))  # empty without a layout
    for key in keys:
        index = spec.time_index(Period.from_key(spec.period, key))
        if reader is None or not written.contains(np.array([index]))[0]:
            absent = CheckOutcome("stored", False, "the store holds no such period")
            yield PeriodQuality(key, (absent,))
            continue
        yield check_period(spec, vocabulary, key, reader.read(index))

"""``aggregate``: a derived product's periods, computed from another dataset's store.

A derived product is declared in a spec file of its own, as any dataset, with ``provider:
aggregate`` and the input dataset in its params; each period is a statistic over the input's
periods inside it (see `ref_assets.derived`). It reads the input's store (read-only, at one
snapshot per run) and never writes it: the derived product is written, checked and recorded by the
same machinery as every dataset.

Example spec (see ``ref_assets/data/templates/aggregate.yaml``)::

    id: era5_land_east_africa_daily
    title: ERA5-Land daily mean 2 m temperature and total precipitation, East Africa
    provider: aggregate
    params:
      input: era5_land_east_africa   # the dataset aggregated (hourly)
      statistic: mean                # default for every variable: mean | sum | min | max
      min_coverage: 1.0              # fraction of the input periods that must be stored
      variables:
        tp: {statistic: sum, deaccumulate: true}   # ERA5-Land's accumulation since 00 UTC
    period: daily
    start: 2024-01-01
    variables:
      - {name: t2m, units: degC}
      - {name: tp, units: mm}

The source items of a period are its input periods: ``ref-assets:<input>/<period key>``, with
the input record's output checksum (``sha256`` without its prefix) and the decoded bytes read.
"""

from __future__ import annotations

import threading
from typing import ClassVar, Literal

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from ref_assets.config import load_settings
from ref_assets.derived import InputStore, VariableAggregate
from ref_assets.periods import Period, PeriodType
from ref_assets.providers.protocol import (
    Description,
    FetchedPeriod,
    ProviderError,
    SourceItem,
    VariableDescription,
    parse_params,
    periods_between,
)
from ref_assets.specs import DATASET_ID_PATTERN, DatasetSpec
from ref_assets.store.repository import DatasetStore

NAME = "aggregate"
Statistic = Literal["mean", "sum", "min", "max"]  # ref_assets.derived.STATISTICS
# CF cell_methods of each statistic.
_CELL_METHODS = {"mean": "mean", "sum": "sum", "min": "minimum", "max": "maximum"}
# Period types from finest to coarsest: a product's period must be coarser than its input's.
_ORDER = list(PeriodType)
# Statistics whose result is in the input's units (a sum of a rate is in other units: declared).
_SAME_UNITS = frozenset({"mean", "min", "max"})


class VariableParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | None = Field(default=None, description="the input's variable (default: same)")
    statistic: Statistic | None = Field(default=None, description="default: params.statistic")
    deaccumulate: bool = Field(
        default=False,
        description="the input is accumulated since 00 UTC (ERA5-Land tp, radiation): "
        "aggregate its hourly amounts",
    )


class AggregateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(pattern=DATASET_ID_PATTERN, description="the dataset aggregated")
    statistic: Statistic | None = None
    min_coverage: float = Field(default=1.0, gt=0.0, le=1.0)
    variables: dict[str, VariableParams] = Field(default_factory=dict)


class AggregateProvider:
    """A derived product's periods from its input dataset's store; see the module docstring."""

    name: ClassVar[str] = NAME
    version: ClassVar[str] = "1"

    def __init__(self, spec: DatasetSpec) -> None:
        self.params = parse_params(AggregateParams, spec)
        self.spec = spec
        unknown = sorted(set(self.params.variables) - set(spec.variables_by_name))
        if unknown:
            raise ProviderError(
                f"{spec.id}: params.variables: {unknown} are not variables of this dataset "
                f"({sorted(spec.variables_by_name)})"
            )
        if self.params.input == spec.id:
            raise ProviderError(f"{spec.id}: params.input: a product cannot aggregate itself")
        self.variables: dict[str, VariableAggregate] = {}
        for variable in spec.variables:
            declared = self.params.variables.get(variable.name, VariableParams())
            statistic = declared.statistic or self.params.statistic
            if statistic is None:
                raise ProviderError(
                    f"{spec.id}: variable {variable.name!r} has no statistic: set "
                    "params.statistic (mean, sum, min or max), or "
                    f"params.variables.{variable.name}.statistic"
                )
            self.variables[variable.name] = VariableAggregate(
                declared.input or variable.name, statistic, declared.deaccumulate
            )
        if spec.period is PeriodType.HOURLY:
            raise ProviderError(
                f"{spec.id}: period: an aggregate is daily, monthly or yearly (of a finer input)"
            )
        self._lock = threading.Lock()
        self._opened: InputStore | None = None

    @property
    def input_id(self) -> str:
        return self.params.input

    def describe(self) -> Description:
        source = self._input()
        return Description(
            grid=source.grid,
            variables={
                name: VariableDescription(
                    units=self.spec.variables_by_name[name].units,
                    attributes=self._attributes(source, how),
                )
                for name, how in self.variables.items()
            },
        )

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        """The periods in ``[first, last]`` whose inputs are stored (to ``min_coverage``)."""
        source = self._input()
        return source.complete(
            periods_between(first, last), self.variables, self.params.min_coverage
        )

    def latest_available(self) -> Period | None:
        """The newest period whose inputs are stored (to ``min_coverage``): the one holding the
        newest stored input is usually still filling, so earlier ones are tried in turn."""
        source = self._input()
        if not source.written:
            return None
        newest = source.axis.period_at(int(source.written.stops[-1]) - 1)
        first = Period(self.spec.period, self.spec.start)
        last = Period(self.spec.period, self.spec.period.floor(newest.start))
        if self.spec.end is not None:
            last = min(last, Period(self.spec.period, self.spec.end))
        for candidate in reversed(periods_between(first, last)):
            if source.complete([candidate], self.variables, self.params.min_coverage):
                return candidate
        return None

    def fetch(self, period: Period) -> FetchedPeriod:
        source = self._input()
        result = source.compute(self.spec.id, period, self.variables, self.params.min_coverage)
        data = xr.Dataset(
            {
                name: (("y", "x"), values, {"units": self.spec.variables_by_name[name].units})
                for name, values in result.variables.items()
            },
            coords={"time": np.datetime64(period.start, "s"), **source.grid.coords()},
        )
        sources = tuple(
            SourceItem(
                uri=f"ref-assets:{source.dataset_id}/{item.key}",
                size=item.nbytes,
                sha256=item.checksum.removeprefix("sha256:"),
            )
            for item in result.inputs
        )
        flags = {
            "input": source.dataset_id,
            "input_snapshot": result.input_snapshot,
            "coverage": f"{len(result.inputs)}/{result.expected}",
        }
        if result.missing:
            flags["missing_inputs"] = ", ".join(
                a if a == b else f"{a}..{b}" for a, b in result.missing.run_keys()
            )
        return FetchedPeriod(data, sources, flags=flags)

    def _input(self) -> InputStore:
        """The input's store at its tip when first asked (so every period of a run is computed
        from one snapshot), checked against the product's declaration."""
        with self._lock:  # fetch threads share it
            if self._opened is None:
                store = DatasetStore(load_settings().storage_root, self.input_id)
                source = InputStore.open(store, product=self.spec.id)
                self._check_against(source)
                self._opened = source
            return self._opened

    def _check_against(self, source: InputStore) -> None:
        spec, input_type = self.spec, source.axis.period
        if _ORDER.index(input_type) >= _ORDER.index(spec.period):
            raise ProviderError(
                f"{spec.id}: a {spec.period.value} product cannot aggregate {source.dataset_id}, "
                f"whose periods are {input_type.value}: its period must be coarser"
            )
        for name, how in self.variables.items():
            if how.input not in source.units:
                raise ProviderError(
                    f"{spec.id}: variable {name!r}: {source.dataset_id} has no variable "
                    f"{how.input!r} (it has {sorted(source.units)}); set "
                    f"params.variables.{name}.input"
                )
            if how.input in source.extra_dimensions:
                raise ProviderError(
                    f"{spec.id}: variable {name!r}: {source.dataset_id}'s {how.input!r} has extra "
                    f"dimensions {source.extra_dimensions[how.input]}, which aggregates do not "
                    "cover yet; aggregate a dataset without them"
                )
            units, declared = source.units[how.input], spec.variables_by_name[name].units
            if how.statistic in _SAME_UNITS and units != declared:
                raise ProviderError(
                    f"{spec.id}: variable {name!r}: the {how.statistic} of {source.dataset_id}'s "
                    f"{how.input!r} is in {units!r}, but the spec declares {declared!r}"
                )
            if how.deaccumulate and input_type is not PeriodType.HOURLY:
                raise ProviderError(
                    f"{spec.id}: variable {name!r}: deaccumulate needs hourly input "
                    f"(accumulations since 00 UTC); {source.dataset_id} is {input_type.value}"
                )

    @staticmethod
    def _attributes(source: InputStore, how: VariableAggregate) -> dict[str, object]:
        """CF's ``cell_methods`` and the input's ``standard_name`` (the spec's attributes
        override both)."""
        attributes: dict[str, object] = {"cell_methods": f"time: {_CELL_METHODS[how.statistic]}"}
        standard_name = source.variable_attributes.get(how.input, {}).get("standard_name")
        if standard_name:
            attributes["standard_name"] = standard_name
        return attributes

"""Derived products in Dagster: one partitioned asset per ``aggregate`` spec, downstream of its
input dataset's asset, kept current by an automation condition.

The asset is built as every dataset's is (`build_dataset_asset`: the same writer, records,
checks and range runs); what differs is its upstream and its automation:

- **Partition mapping.** A `TimeWindowPartitionMapping` maps each period of the product to the
  input periods inside it (a month to its days, a day to its hours). De-accumulated variables
  also need the first input period after it (a day's last hour of ERA5-Land precipitation is
  stamped 00 UTC of the next day); Dagster shifts a window only by whole periods of the
  product, so such a product depends on the next period's inputs as well (``end_offset=1``)
  and waits for them; the run itself reads only the one extra hour.
- **Automation** (`derived_condition`): a period is requested when its inputs are all
  present and have passed their blocking `period_quality` check, and any of them was updated
  (landed or revised) since the period was last requested, or when it goes missing; never
  while an input is missing or in progress. Unlike Dagster's ``eager()``, it is not limited to
  the latest time window: a revised day of last year recomputes its month, and a backfill of
  the input fills the product's history. An incomplete period is not requested early; the
  input update that completes it makes it due, since the earlier updates stay unhandled until
  then. (Input partitions that do not exist yet are left out of the mapping, so a period
  reaching past the input's newest partition can be requested early, and is refused.) On the
  condition's first evaluation, every missing period whose inputs are present is requested
  once (a product declared over a stored history). A product may not start before its input
  (it is skipped, with a warning).
- Each product has its own automation sensor, ``<product>_automation`` (on or off as the
  spec's ``updates.default_status``), so it can be stopped on its own.
"""

from __future__ import annotations

import logging
import warnings

import dagster as dg

from ref_assets.defs.assets import build_dataset_asset
from ref_assets.defs.sensors import default_sensor_status
from ref_assets.preview import PreviewStyle
from ref_assets.providers.aggregate import NAME as AGGREGATE
from ref_assets.providers.registry import ProviderRegistry
from ref_assets.specs import DatasetSpec

logger = logging.getLogger(__name__)


def is_derived(spec: DatasetSpec) -> bool:
    return spec.provider == AGGREGATE


def input_of(spec: DatasetSpec) -> str | None:
    """The dataset a derived product aggregates (None for any other spec)."""
    value = spec.params.get("input") if is_derived(spec) else None
    return value if isinstance(value, str) else None


def derived_condition() -> dg.AutomationCondition:
    """Requested when every input is present and any of them updated since the period was last
    handled (or the period went missing); over the whole partition range. On its first
    evaluation (a new product, or a changed condition) every missing period whose inputs are
    all present is requested once: a product declared over a stored history fills it."""
    updated = (
        (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated())
        .since_last_handled()
        .with_label("inputs updated since last requested")
    )
    first = (
        dg.AutomationCondition.initial_evaluation() & dg.AutomationCondition.missing()
    ).with_label("missing at the first evaluation")
    return (
        (updated | first)
        & ~dg.AutomationCondition.any_deps_missing()
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("derived: all inputs present, any updated")


def _deaccumulates(spec: DatasetSpec) -> bool:
    variables = spec.params.get("variables") or {}
    return any(isinstance(v, dict) and v.get("deaccumulate") for v in variables.values())


def build_derived_asset(
    spec: DatasetSpec,
    registry: ProviderRegistry,
    preview_style: PreviewStyle | None = None,
) -> dg.AssetsDefinition:
    """The product's asset, downstream of its input's with a time-window partition mapping."""
    with warnings.catch_warnings():  # allow_nonexistent_upstream_partitions is beta
        warnings.simplefilter("ignore", dg.BetaWarning)
        mapping = dg.TimeWindowPartitionMapping(
            end_offset=1 if _deaccumulates(spec) else 0,
            # The input's partitions end where it ends (or at the newest complete period):
            # a product's last periods map partly beyond them, and are refused as incomplete
            # when run, rather than failing the asset graph.
            allow_nonexistent_upstream_partitions=True,
        )
    return build_dataset_asset(
        spec,
        registry,
        preview_style,
        deps=[dg.AssetDep(dg.AssetKey(input_of(spec)), partition_mapping=mapping)],
        automation_condition=derived_condition(),
    )


def build_automation_sensor(spec: DatasetSpec) -> dg.AutomationConditionSensorDefinition:
    """``<product>_automation``: evaluates the product's automation condition."""
    return dg.AutomationConditionSensorDefinition(
        f"{spec.id}_automation",
        target=dg.AssetSelection.assets(spec.id),
        default_status=default_sensor_status(spec),
        description=f"Keeps {spec.id} current: requests its periods whose inputs "
        f"({input_of(spec)}) landed or were revised.",
    )


def derived_specs(specs: dict[str, DatasetSpec]) -> list[DatasetSpec]:
    """The derived products whose input is a loaded dataset, inputs before the products that
    read them; the others are logged and skipped (their asset would have no upstream)."""
    kept, pending = [], [spec for spec in specs.values() if is_derived(spec)]
    known = {spec.id for spec in specs.values() if not is_derived(spec)}
    while pending:
        ready = [spec for spec in pending if input_of(spec) in known]
        if not ready:
            break
        for spec in ready:
            pending.remove(spec)
            if problem := _start_problem(spec, specs[input_of(spec)]):
                logger.warning("skipping derived product %s: %s", spec.id, problem)
                continue
            kept.append(spec)
            known.add(spec.id)
    for spec in pending:
        logger.warning("skipping derived product %s: %s", spec.id, _missing_input(spec, specs))
    return kept


def _missing_input(spec: DatasetSpec, specs: dict[str, DatasetSpec]) -> str:
    """Why ``spec``'s input has no asset, and what to do."""
    name = input_of(spec)
    if name not in specs:
        return (
            f"its input {name!r} is not a loaded dataset (see `ref-assets datasets`); fix "
            "params.input or the input's spec"
        )
    return (
        f"its input is the derived product {name!r}, which was skipped (see its warning) or "
        "reads this product, directly or through others (a cycle); fix that product's "
        "params.input or start"
    )


def _start_problem(spec: DatasetSpec, input_spec: DatasetSpec) -> str | None:
    """A product may not start before its input: its first periods could never be complete,
    and automation would request them again after each refusal."""
    if spec.start < input_spec.start:
        return (
            f"it starts {spec.period.key(spec.start)}, before its input {input_spec.id} "
            f"({input_spec.period.key(input_spec.start)}); move `start` to "
            f"{input_spec.start:%Y-%m-%d} or later"
        )
    return None

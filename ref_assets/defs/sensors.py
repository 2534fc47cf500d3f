"""One availability sensor per dataset (``<dataset>_updates``): a thin Dagster adapter over
`ref_assets.updates.plan_updates`.

Each tick asks the provider what is published, compares it with the store (the truth, not the
event log), and requests runs for exactly the missing periods, in ranges of at most the spec's
``runs.max_partitions_per_run``, and a revision run for each range of stored periods whose
source fingerprint changed (tagged ``ref_assets/revision=true``). Its cursor is the plan's
`UpdateState` plus the back-off after provider errors. Run keys name the dataset, the range and
the store's tip (revisions: the new fingerprints), so a tick repeated on an unchanged store asks
for nothing new: Dagster launches one run per run key. Periods already being written by a run
in progress (the sensor's, a backfill's, a manual one) are left out.

A provider that fails is a skip naming the dataset and the reason (credentials masked), never a
failed tick; the sensor then waits ``updates.retry_after`` seconds, doubled on each further
error up to a day, before asking again.
"""

from __future__ import annotations

import json
import time

import dagster as dg

from ref_assets.defs.assets import range_run_tags
from ref_assets.defs.resources import IcechunkStorage, ProviderRegistryResource
from ref_assets.periods import Period
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec
from ref_assets.updates import (
    IndexRanges,
    UpdatePlan,
    UpdateState,
    fingerprint_token,
    plan_updates,
)

DATASET_TAG = "ref_assets/dataset"
PROVIDER_TAG = "ref_assets/provider"  # counted by the production instance's run limits
REVISION_TAG = "ref_assets/revision"
# Dagster's own tags naming what a run materializes.
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
MAX_BACKOFF_SECONDS = 24 * 3600


def sensor_name(dataset_id: str) -> str:
    return f"{dataset_id}_updates"


def default_sensor_status(spec: DatasetSpec) -> dg.DefaultSensorStatus:
    """The status a dataset's sensors start in: the spec's `updates.default_status`."""
    if spec.updates.default_status == "running":
        return dg.DefaultSensorStatus.RUNNING
    return dg.DefaultSensorStatus.STOPPED


def build_updates_sensor(spec: DatasetSpec) -> dg.SensorDefinition:
    """The availability sensor of ``spec``'s asset (see the module docstring)."""
    asset_key = dg.AssetKey(spec.id)

    @dg.sensor(
        name=sensor_name(spec.id),
        target=[asset_key],
        minimum_interval_seconds=spec.updates.min_interval,
        default_status=default_sensor_status(spec),
        description=f"Requests runs for new and revised periods of {spec.id} (every "
        f"{spec.updates.min_interval} s at most).",
    )
    def updates(
        context: dg.SensorEvaluationContext,
        providers: ProviderRegistryResource,
        icechunk_storage: IcechunkStorage,
    ) -> dg.SensorResult:
        cursor = _Cursor.parse(context.cursor)
        now = time.time()
        if cursor.backoff_until > now:
            return dg.SensorResult(
                skip_reason=f"{spec.id}: backing off after a provider error until "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(cursor.backoff_until))}",
                cursor=cursor.dump(),
            )
        try:
            provider = providers.create(spec)
            plan = plan_updates(
                spec,
                provider,
                icechunk_storage.store(spec.id),
                cursor.state,
                in_flight=_in_flight(context.instance, spec, asset_key),
            )
        except Exception as err:  # any provider or store failure is this dataset's alone
            delay = min(cursor.backoff_delay * 2 or spec.updates.retry_after, MAX_BACKOFF_SECONDS)
            reason = redact(f"{spec.id}: skipped, {type(err).__name__}: {err}")
            context.log.warning(f"{reason} (asking again in {delay} s)")
            return dg.SensorResult(
                skip_reason=f"{reason}; asking again in {delay} s",
                cursor=cursor.backing_off(now + delay, delay).dump(),
            )
        requests = _run_requests(spec, asset_key, plan)
        next_cursor = _Cursor(plan.state).dump()
        if not requests:
            return dg.SensorResult(
                skip_reason=_nothing_to_do(spec, plan), cursor=next_cursor, run_requests=[]
            )
        context.log.info(
            f"{spec.id}: requesting {sum(r.count for r in plan.missing)} missing periods in "
            f"{len(plan.missing)} runs ({plan.missing_total} missing in all) and "
            f"{len(plan.revisions)} revised periods"
        )
        return dg.SensorResult(run_requests=requests, cursor=next_cursor)

    return updates


def _run_requests(spec: DatasetSpec, asset_key: dg.AssetKey, plan: UpdatePlan) -> list:
    requests = [
        _request(
            spec,
            asset_key,
            period_range.first,
            period_range.last,
            run_key=f"{spec.id}:{period_range.first.key}..{period_range.last.key}"
            f"@{plan.snapshot or 'new-store'}",
            tags={},
        )
        for period_range in plan.missing
    ]
    by_index = {spec.time_index(r.period): r for r in plan.revisions}
    for first, last in IndexRanges.of(list(by_index)).chunks(spec.runs.max_partitions_per_run):
        revised = [by_index[i] for i in range(first, last + 1)]
        requests.append(
            _request(
                spec,
                asset_key,
                revised[0].period,
                revised[-1].period,
                run_key=f"{spec.id}:revision:{revised[0].period.key}..{revised[-1].period.key}"
                f":{fingerprint_token(r.current for r in revised)}",
                tags={REVISION_TAG: "true"},
            )
        )
    return requests


def _request(
    spec: DatasetSpec,
    asset_key: dg.AssetKey,
    first: Period,
    last: Period,
    *,
    run_key: str,
    tags: dict[str, str],
) -> dg.RunRequest:
    """One run of ``first..last``: a single-partition run for one period (so its data version
    is its checksum), else a range run, as ``--partition-range`` starts one."""
    tags = {DATASET_TAG: spec.id, PROVIDER_TAG: spec.provider, **tags}
    if first == last:
        return dg.RunRequest(
            run_key=run_key, asset_selection=[asset_key], partition_key=first.key, tags=tags
        )
    return dg.RunRequest(
        run_key=run_key,
        asset_selection=[asset_key],
        tags={**tags, **range_run_tags(first.key, last.key)},
    )


def _nothing_to_do(spec: DatasetSpec, plan: UpdatePlan) -> str:
    latest = plan.latest.key if plan.latest else "none"
    return (
        f"{spec.id}: no missing or revised periods (provider's latest: {latest}; "
        f"{len(plan.state.written)} periods stored)"
    )


def _in_flight(
    instance: dg.DagsterInstance, spec: DatasetSpec, asset_key: dg.AssetKey
) -> IndexRanges:
    """The periods of ``spec`` that runs not yet finished are writing (whoever started them)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
            ]
        )
    )
    spans = []
    for run in runs:
        if run.asset_selection is not None and asset_key not in run.asset_selection:
            continue
        first = run.tags.get(RANGE_START_TAG) or run.tags.get(PARTITION_TAG)
        last = run.tags.get(RANGE_END_TAG) or run.tags.get(PARTITION_TAG)
        if first is None or last is None:
            continue
        try:
            start = spec.time_index(Period.from_key(spec.period, first))
            stop = spec.time_index(Period.from_key(spec.period, last)) + 1
        except ValueError:  # a run of another asset sharing the tags' format, or a bad key
            continue
        spans.append((start, stop))
    return IndexRanges.from_pairs(spans)


class _Cursor:
    """The sensor's cursor: the plan's state and the back-off after provider errors."""

    def __init__(
        self, state: UpdateState | None, backoff_until: float = 0.0, backoff_delay: int = 0
    ) -> None:
        self.state, self.backoff_until, self.backoff_delay = state, backoff_until, backoff_delay

    @classmethod
    def parse(cls, text: str | None) -> _Cursor:
        try:
            stored = json.loads(text) if text else {}
        except json.JSONDecodeError:  # a cursor of an older sensor: start afresh
            stored = {}
        backoff = stored.get("backoff") or {}
        return cls(
            UpdateState.from_json(stored.get("state")),
            float(backoff.get("until", 0.0)),
            int(backoff.get("delay", 0)),
        )

    def backing_off(self, until: float, delay: int) -> _Cursor:
        return _Cursor(self.state, until, delay)

    def dump(self) -> str:
        stored: dict = {"state": self.state.to_json() if self.state else None}
        if self.backoff_delay:
            stored["backoff"] = {"until": self.backoff_until, "delay": self.backoff_delay}
        return json.dumps(stored, separators=(",", ":"))

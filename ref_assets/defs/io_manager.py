"""The Icechunk IO manager: a thin Dagster adapter over `ref_assets.store`.

``handle_output`` writes the period of a single-partition run into the dataset's store;
`IcechunkIOManager.write_range` (called by the asset in a range run) streams many periods into it,
committing in batches and yielding each partition's materialization as its commit lands;
`IcechunkIOManager.write_validated` does the runs of a ``checks.publish: validated`` dataset
(`ref_assets.publishing`: the run's branch, checked, then published);
``load_input`` returns the requested periods of an upstream dataset, lazily.
"""

import time
from collections.abc import Iterable, Iterator

import dagster as dg
import numpy as np
import xarray as xr

from ref_assets.batch import PeriodBatch, PeriodFailure, PeriodStream
from ref_assets.defs.metadata import data_version_tags, materialization_metadata
from ref_assets.defs.resources import IcechunkStorage
from ref_assets.periods import IndexRanges, Period
from ref_assets.publishing import ValidatedRun, ValidatedWriter, discard_leftovers
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.writer import CommitPolicy, PeriodWriter, WriteReceipt, write_period
from ref_assets.vocabulary import VariableVocabulary


class IcechunkIOManager(dg.ConfigurableIOManager):
    """Stores each partition of a dataset asset in the dataset's Icechunk repository: one
    partition through ``handle_output``, the partitions of a range run through `write_range`."""

    storage: IcechunkStorage

    def handle_output(self, context: dg.OutputContext, obj: PeriodBatch) -> None:
        if not isinstance(obj, PeriodBatch):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: the Icechunk IO manager stores a "
                f"PeriodBatch output (ranges go through write_range), got {type(obj).__name__}"
            )
        partition_keys = list(context.asset_partition_keys)
        if partition_keys != [obj.period.key]:
            # A guard, not a path: the asset builds its period from this very partition key.
            raise ValueError(
                f"{obj.spec.id}: the asset produced period {obj.period.key} for partitions "
                f"{partition_keys[:5]}; nothing was written. Report this with the run id "
                f"{context.run_id}: it is a bug"
            )
        store = self.storage.store(obj.spec.id)
        try:
            receipt = write_period(store, obj, run_id=context.run_id)
        except Exception as err:
            raise _writing_stopped(obj.spec.id, 0, 1, err, []) from None
        context.step_context.add_asset_metadata(
            {**materialization_metadata(receipt), "store": dg.MetadataValue.path(store.location)},
            partition_key=obj.period.key,
        )

    def write_range(
        self, context: dg.AssetExecutionContext, stream: PeriodStream
    ) -> Iterator[list[dg.AssetMaterialization]]:
        """Write the periods of a range run, committing in batches, and yield each commit's
        materializations (one per period, with its metadata and its checksum as data version)
        as soon as the commit lands, for the asset to hand to Dagster.

        A period that failed to fetch or validate is logged and left out; after the last commit
        the run fails naming every failed period with its error (``failed_periods``). If writing
        itself fails, the periods committed before were already yielded; the run fails saying
        how many were not written.
        """
        spec = stream.spec
        store = self.storage.store(spec.id)
        progress = _Progress(context.log, spec.id, len(stream.periods))
        writer = PeriodWriter(
            store,
            run_id=context.run.run_id,
            policy=CommitPolicy(spec.runs.commit_every, spec.runs.commit_seconds),
        )
        failures: list[PeriodFailure] = []

        def landed(receipts: list[WriteReceipt]) -> list[dg.AssetMaterialization]:
            progress.committed(receipts)
            return [materialization(context, store, receipt) for receipt in receipts]

        try:
            for item in stream:
                if isinstance(item, PeriodFailure):
                    context.log.error(f"{spec.id} {item.period.key}: {item.error}")
                    failures.append(item)
                elif receipts := writer.add(item):
                    yield landed(receipts)
            if receipts := writer.flush():
                yield landed(receipts)
        except Exception as err:
            # Disk full, a lock timeout: the periods committed before it were yielded already.
            raise _writing_stopped(
                spec.id, progress.done, len(stream.periods), err, failures
            ) from None
        if failures:
            raise dg.Failure(
                description=(
                    f"{spec.id}: {len(failures)} of {len(stream.periods)} periods failed "
                    f"({_named(f.period.key for f in failures)}); the "
                    f"{progress.done} others were committed and kept"
                ),
                metadata={"failed_periods": {f.period.key: f.error for f in failures}},
            )

    def write_validated(
        self,
        context: dg.AssetExecutionContext,
        stream: PeriodStream,
        vocabulary: VariableVocabulary,
    ) -> tuple[ValidatedRun, list[PeriodFailure]]:
        """Write the periods of a run of a ``checks.publish: validated`` dataset on the run's
        branch, check each commit's periods there, and publish those that pass
        (`ref_assets.publishing`); return what was published and refused, and the periods that
        failed to fetch. Branches of earlier runs that died unpublished are discarded first,
        once Dagster's instance says their run is over. If writing fails, nothing is
        published and the branch is discarded."""
        spec = stream.spec
        store = self.storage.store(spec.id)
        for branch in discard_leftovers(store, lambda run_id: _run_is_over(context, run_id)):
            context.log.info(f"{spec.id}: discarded {branch}, left by a run that ended unpublished")
        total = len(stream.periods)
        progress = _Progress(context.log, spec.id, total, where=" on the run's branch")
        writer = ValidatedWriter(
            store,
            spec,
            vocabulary,
            run_id=context.run.run_id,
            policy=CommitPolicy(spec.runs.commit_every, spec.runs.commit_seconds),
        )
        failures: list[PeriodFailure] = []
        try:
            for item in stream:
                if isinstance(item, PeriodFailure):
                    context.log.error(f"{spec.id} {item.period.key}: {item.error}")
                    failures.append(item)
                elif checked := writer.add(item):
                    progress.committed([c.receipt for c in checked])
            if checked := writer.flush():
                progress.committed([c.receipt for c in checked])
            outcome = writer.publish()
        except Exception as err:
            writer.abandon()
            raise _writing_stopped(
                spec.id, 0, len(stream.periods), err, failures, published=False
            ) from None
        for refused in outcome.refused:
            context.log.error(
                f"{spec.id} {refused.key}: not published: {refused.quality.description}"
            )
        if outcome.snapshot:
            context.log.info(
                f"{spec.id}: published {len(outcome.published)} periods to main at snapshot "
                f"{outcome.snapshot} ({len(outcome.refused)} refused, "
                f"{sum(len(m.periods) for m in outcome.replayed)} written on main meanwhile "
                "replayed)"
            )
        return outcome, failures

    def load_input(self, context: dg.InputContext) -> xr.Dataset:
        dataset_id = context.asset_key.path[-1]
        session = store_reader.session_for(self.storage.store(dataset_id))
        data = store_reader.open_store_dataset(session)
        if not context.has_asset_partitions:
            return data
        axis = store_reader.store_axis(session)
        if axis is None:
            raise StoreError(
                f"{dataset_id}: the store holds no periods yet; materialize some first"
            )
        keys = context.asset_partition_keys
        wanted = [axis.index_of(Period.from_key(axis.period, key)) for key in keys]
        written = IndexRanges.of(store_reader.written_index_array(session))
        held = written.contains(np.asarray(wanted, dtype="int64"))
        absent = [key for key, present in zip(keys, held, strict=True) if not present]
        if absent:
            raise StoreError(
                f"{dataset_id}: periods {absent[:5]}{'...' if len(absent) > 5 else ''} are not in "
                "the store; materialize them first"
            )
        return data.isel(time=sorted(wanted))


def materialization(
    context: dg.AssetExecutionContext, store: DatasetStore, receipt: WriteReceipt
) -> dg.AssetMaterialization:
    """A period's materialization in a range run: its metadata, its checksum as data version."""
    return dg.AssetMaterialization(
        context.asset_key,
        partition=receipt.period_key,
        metadata={
            **materialization_metadata(receipt),
            "store": dg.MetadataValue.path(store.location),
        },
        tags=data_version_tags(receipt.record),
    )


def not_published(
    spec: DatasetSpec, total: int, outcome: ValidatedRun, failures: list[PeriodFailure]
) -> dg.Failure:
    """The step failure of a validated run some of whose periods did not reach ``main``."""
    parts = []
    if outcome.refused:
        parts.append(
            f"{len(outcome.refused)} refused by their checks "
            f"({_named(c.key for c in outcome.refused)})"
        )
    if failures:
        parts.append(f"{len(failures)} failed ({_named(f.period.key for f in failures)})")
    return dg.Failure(
        description=(
            f"{spec.id}: {total - len(outcome.published)} of {total} periods were not "
            f"published: {'; '.join(parts)}. The {len(outcome.published)} others were "
            "published to main. Fix the source or the spec's checks, then run the range again."
        ),
        metadata={
            "refused_periods": {c.key: c.quality.description for c in outcome.refused},
            "failed_periods": {f.period.key: f.error for f in failures},
            "published_snapshot": outcome.snapshot or "none: main is unchanged",
        },
    )


def _named(keys: Iterable[str]) -> str:
    keys = list(keys)
    return ", ".join(keys[:10]) + ("..." if len(keys) > 10 else "")


def _run_is_over(context: dg.AssetExecutionContext, run_id: str) -> bool:
    """Whether Dagster's instance knows run ``run_id`` ended (or knows no such run)."""
    run = context.instance.get_run_by_id(run_id)
    return run is None or run.is_finished


def _writing_stopped(
    dataset_id: str,
    committed: int,
    total: int,
    err: Exception,
    failures: list[PeriodFailure],
    *,
    published: bool = True,
) -> dg.Failure:
    """The step failure for a write that failed after ``committed`` of ``total`` periods (with
    ``published`` False: a validated run, of which nothing reached ``main``)."""
    if published:
        outcome = (
            f"writing stopped after {committed} of {total} periods were committed "
            f"({total - committed} not written)"
        )
        kept = "The committed periods are kept and recorded"
    else:
        outcome = f"writing or publishing stopped; none of the {total} periods was published"
        kept = "main is unchanged and the run's branch was discarded"
    return dg.Failure(
        description=redact(
            f"{dataset_id}: {outcome}: {type(err).__name__}: {str(err).rstrip('.')}. {kept}; "
            "once the cause is fixed, run the range again to write the others."
        ),
        metadata={
            "committed_periods": committed,
            "unwritten_periods": total - committed,
            "failed_periods": {f.period.key: f.error for f in failures},
        },
    )


class _Progress:
    """A progress line after each commit of a range run."""

    def __init__(
        self, log: dg.DagsterLogManager, dataset_id: str, total: int, where: str = ""
    ) -> None:
        self.log, self.dataset_id, self.total, self.where = log, dataset_id, total, where
        self.started = time.monotonic()
        self.done = 0

    def committed(self, receipts: list[WriteReceipt]) -> None:
        self.done += len(receipts)
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        eta = (self.total - self.done) / rate
        self.log.info(
            f"{self.dataset_id}: {self.done}/{self.total} periods committed{self.where} "
            f"(snapshot {receipts[-1].snapshot_id}, {rate:.1f} periods/s, ETA {eta:.0f} s)"
        )

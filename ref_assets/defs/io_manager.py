"""The Icechunk IO manager: a thin Dagster adapter over `ref_assets.store`.

``handle_output`` writes the period of a single-partition run into the dataset's store;
`IcechunkIOManager.write_range` (called by the asset in a range run) streams many periods into it,
committing in batches and yielding each partition's materialization as its commit lands;
``load_input`` returns the requested periods of an upstream dataset, lazily.
"""

import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
import xarray as xr

from ref_assets.batch import PeriodBatch, PeriodFailure, PeriodStream
from ref_assets.defs.metadata import data_version_tags, materialization_metadata
from ref_assets.defs.resources import IcechunkStorage
from ref_assets.periods import IndexRanges, Period
from ref_assets.secrets import redact
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import StoreError
from ref_assets.store.writer import CommitPolicy, PeriodWriter, WriteReceipt, write_period


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
            return [
                dg.AssetMaterialization(
                    context.asset_key,
                    partition=receipt.period_key,
                    metadata={
                        **materialization_metadata(receipt),
                        "store": dg.MetadataValue.path(store.location),
                    },
                    tags=data_version_tags(receipt.record),
                )
                for receipt in receipts
            ]

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
                    f"({', '.join(f.period.key for f in failures[:10])}"
                    f"{'...' if len(failures) > 10 else ''}); the "
                    f"{progress.done} others were committed and kept"
                ),
                metadata={"failed_periods": {f.period.key: f.error for f in failures}},
            )

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


def _writing_stopped(
    dataset_id: str, committed: int, total: int, err: Exception, failures: list[PeriodFailure]
) -> dg.Failure:
    """The step failure for a write that failed after ``committed`` of ``total`` periods."""
    return dg.Failure(
        description=redact(
            f"{dataset_id}: writing stopped after {committed} of {total} periods were committed "
            f"({total - committed} not written): {type(err).__name__}: {str(err).rstrip('.')}. "
            "The committed periods are kept and recorded; once the cause is fixed, run the range "
            "again to write the others."
        ),
        metadata={
            "committed_periods": committed,
            "unwritten_periods": total - committed,
            "failed_periods": {f.period.key: f.error for f in failures},
        },
    )


class _Progress:
    """A progress line after each commit of a range run."""

    def __init__(self, log: dg.DagsterLogManager, dataset_id: str, total: int) -> None:
        self.log, self.dataset_id, self.total = log, dataset_id, total
        self.started = time.monotonic()
        self.done = 0

    def committed(self, receipts: list[WriteReceipt]) -> None:
        self.done += len(receipts)
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        eta = (self.total - self.done) / rate
        self.log.info(
            f"{self.dataset_id}: {self.done}/{self.total} periods committed "
            f"(snapshot {receipts[-1].snapshot_id}, {rate:.1f} periods/s, ETA {eta:.0f} s)"
        )

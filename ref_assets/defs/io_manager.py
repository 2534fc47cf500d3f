"""The Icechunk IO manager: a thin Dagster adapter over `ref_assets.store`.

``handle_output`` writes the period (or the stream of periods of a multi-partition run) into the
dataset's store, committing in batches, and gives every partition its own metadata;
``load_input`` returns the requested periods of an upstream dataset, lazily.
"""

import time

import dagster as dg
import xarray as xr

from ref_assets.batch import PeriodBatch, PeriodFailure, PeriodStream
from ref_assets.defs.metadata import data_version_tags, materialization_metadata
from ref_assets.defs.resources import IcechunkStorage
from ref_assets.periods import Period
from ref_assets.provenance import ProvenanceRecord
from ref_assets.secrets import redact
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import StoreError
from ref_assets.store.writer import CommitPolicy, PeriodWriter, WriteReceipt


class IcechunkIOManager(dg.ConfigurableIOManager):
    """Stores each partition of a dataset asset in the dataset's Icechunk repository."""

    storage: IcechunkStorage

    def handle_output(self, context: dg.OutputContext, obj: PeriodBatch | PeriodStream) -> None:
        if isinstance(obj, PeriodBatch):
            spec, periods, items = obj.spec, (obj.period,), [obj]
        elif isinstance(obj, PeriodStream):
            spec, periods, items = obj.spec, obj.periods, obj
        else:
            raise TypeError(
                f"{context.asset_key.to_user_string()}: the Icechunk IO manager stores PeriodBatch "
                f"or PeriodStream outputs, got {type(obj).__name__}"
            )
        keys = [period.key for period in periods]
        partition_keys = list(context.asset_partition_keys)
        if keys != partition_keys:
            # A guard, not a path: the asset builds its periods from these very partition keys.
            unasked = sorted(set(keys) - set(partition_keys))
            unmade = sorted(set(partition_keys) - set(keys))
            raise ValueError(
                f"{spec.id}: the asset produced {len(keys)} periods for {len(partition_keys)} "
                f"partitions (produced but not asked: {unasked[:5]}; asked but not produced: "
                f"{unmade[:5]}); nothing was written. Report this with the run id "
                f"{context.run_id}: it is a bug"
            )
        store = self.storage.store(spec.id)
        progress = _Progress(context, spec.id, len(periods))
        writer = PeriodWriter(
            store,
            run_id=context.run_id,
            policy=CommitPolicy(spec.runs.commit_every, spec.runs.commit_seconds),
            on_commit=progress.committed,
        )
        failures: list[PeriodFailure] = []
        try:
            for item in items:
                if isinstance(item, PeriodFailure):
                    context.log.error(f"{spec.id} {item.period.key}: {item.error}")
                    failures.append(item)
                else:
                    writer.add(item)
            writer.flush()
        except BaseException as err:
            # Disk full, a lock timeout, an interruption: the periods committed before it are in
            # the store, so Dagster must hear of them although the step fails.
            progress.report_committed()
            if not isinstance(err, Exception):
                raise
            committed = len(progress.metadata_by_partition)
            raise dg.Failure(
                description=redact(
                    f"{spec.id}: writing stopped after {committed} of {len(periods)} periods "
                    f"were committed ({len(periods) - committed} not written): "
                    f"{type(err).__name__}: {str(err).rstrip('.')}. The committed periods are "
                    "kept and recorded; once the cause is fixed, run the range again to write "
                    "the others."
                ),
                metadata={
                    "committed_periods": committed,
                    "unwritten_periods": len(periods) - committed,
                    "failed_periods": {f.period.key: f.error for f in failures},
                },
            ) from None
        for key, metadata in progress.metadata_by_partition.items():
            context.step_context.add_asset_metadata(
                {**metadata, "store": dg.MetadataValue.path(store.location)}, partition_key=key
            )
        if failures:
            # The step fails, so Dagster records none of this run's partitions.
            progress.report_committed()
            raise dg.Failure(
                description=(
                    f"{spec.id}: {len(failures)} of {len(periods)} periods failed "
                    f"({', '.join(f.period.key for f in failures[:10])}"
                    f"{'...' if len(failures) > 10 else ''}); the "
                    f"{len(progress.metadata_by_partition)} others were committed and kept"
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
        written = set(store_reader.written_indices(session))
        absent = [key for key, index in zip(keys, wanted, strict=True) if index not in written]
        if absent:
            raise StoreError(
                f"{dataset_id}: periods {absent[:5]}{'...' if len(absent) > 5 else ''} are not in "
                "the store; materialize them first"
            )
        return data.isel(time=sorted(wanted))


class _Progress:
    """Per-partition metadata and a progress line for each commit of a run."""

    def __init__(self, context: dg.OutputContext, dataset_id: str, total: int) -> None:
        self.context, self.dataset_id, self.total = context, dataset_id, total
        self.started = time.monotonic()
        self.metadata_by_partition: dict[str, dict[str, dg.MetadataValue]] = {}
        self.records: dict[str, ProvenanceRecord] = {}

    def report_committed(self) -> None:
        """Report the periods committed so far as runless materializations: a failing step has
        Dagster record none of its partitions, and the UI must agree with the store."""
        for key, metadata in self.metadata_by_partition.items():
            self.context.step_context.instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    self.context.asset_key,
                    partition=key,
                    metadata=metadata,
                    tags=data_version_tags(self.records[key]),
                )
            )

    def committed(self, receipts: list[WriteReceipt]) -> None:
        for receipt in receipts:
            self.metadata_by_partition[receipt.period_key] = materialization_metadata(receipt)
            self.records[receipt.period_key] = receipt.record
        done = len(self.metadata_by_partition)
        rate = done / max(time.monotonic() - self.started, 1e-9)
        eta = (self.total - done) / rate
        self.context.log.info(
            f"{self.dataset_id}: {done}/{self.total} periods committed "
            f"(snapshot {receipts[-1].snapshot_id}, {rate:.1f} periods/s, ETA {eta:.0f} s)"
        )

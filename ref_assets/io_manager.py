"""The Icechunk IO manager: a thin Dagster adapter over `ref_assets.store`.
``handle_output`` writes a `PeriodBatch` at its period's index (one commit per period) and reports
what was written; ``load_input`` returns the requested periods of an upstream dataset, lazily.
"""

import dagster as dg
import xarray as xr

from ref_assets.batch import PeriodBatch
from ref_assets.periods import Period
from ref_assets.resources import IcechunkStorage
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import StoreError
from ref_assets.store.writer import WriteReceipt, write_period


class IcechunkIOManager(dg.ConfigurableIOManager):
    """Stores each partition of a dataset asset in the dataset's Icechunk repository."""

    storage: IcechunkStorage

    def handle_output(self, context: dg.OutputContext, obj: PeriodBatch) -> None:
        if not isinstance(obj, PeriodBatch):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: the Icechunk IO manager stores PeriodBatch "
                f"outputs, got {type(obj).__name__}"
            )
        if context.has_partition_key and context.partition_key != obj.period.key:
            raise ValueError(
                f"{obj.spec.id}: the asset produced period {obj.period.key} for partition "
                f"{context.partition_key}; refusing to write it at the wrong place"
            )
        store = self.storage.store(obj.spec.id)
        receipt = write_period(store, obj, run_id=context.run_id)
        context.log.info(
            f"{obj.spec.id} {obj.period.key}: committed snapshot {receipt.snapshot_id} "
            f"at time index {receipt.time_index} ({receipt.bytes_written} bytes)"
        )
        context.add_output_metadata(materialization_metadata(obj, receipt, store.location))

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
        written = set(store_reader.written_indices(session))
        wanted = [
            axis.index_of(Period.from_key(axis.period, key)) for key in context.asset_partition_keys
        ]
        absent = [
            key
            for key, i in zip(context.asset_partition_keys, wanted, strict=True)
            if i not in written
        ]
        if absent:
            raise StoreError(
                f"{dataset_id}: periods {absent[:5]}{'...' if len(absent) > 5 else ''} are not in "
                "the store; materialize them first"
            )
        return data.isel(time=sorted(wanted))


def materialization_metadata(
    batch: PeriodBatch, receipt: WriteReceipt, location: str
) -> dict[str, dg.MetadataValue]:
    """What Dagster shows for one written period."""
    columns = ["variable", "units", "shape", "min", "mean", "max", "nan_fraction"]
    rows = [
        dg.TableRecord(
            {
                "variable": name,
                "units": batch.spec.variables_by_name[name].units,
                "shape": "x".join(map(str, values.shape)),
                "min": stats.minimum,
                "mean": stats.mean,
                "max": stats.maximum,
                "nan_fraction": stats.nan_fraction,
            }
        )
        for name, values in batch.variables.items()
        for stats in [batch.stats[name]]
    ]
    return {
        "period": dg.MetadataValue.text(batch.period.key),
        "time_index": dg.MetadataValue.int(receipt.time_index),
        "snapshot_id": dg.MetadataValue.text(receipt.snapshot_id),
        "checksum": dg.MetadataValue.text(batch.checksum),
        "bytes_written": dg.MetadataValue.int(receipt.bytes_written),
        "variables": dg.MetadataValue.table(
            rows,
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn(c, "string" if c in ("variable", "units", "shape") else "float")
                    for c in columns
                ]
            ),
        ),
        "sources": dg.MetadataValue.int(len(batch.sources)),
        "commit_attempts": dg.MetadataValue.int(receipt.attempts),
        "store": dg.MetadataValue.path(location),
        "record": dg.MetadataValue.json(receipt.record),
    }

"""What Dagster shows of a dataset and of each partition.

Definition metadata (the dataset: provider, period, range, variables) lives under ``dataset/``
keys, which no partition's materialization uses: the UI's overview lists definition and latest
materialization metadata in one table and, on equal keys, hides the definition's. Each
partition shows its map preview (markdown with an inline PNG), its statistics as top-level floats
(``t2m/mean``: Dagster plots only top-level numbers, per partition, on the Plots view of the
asset's metadata), and its provenance record.
"""

from __future__ import annotations

import base64
import math

import dagster as dg

from ref_assets.preview import Preview
from ref_assets.provenance import ProvenanceRecord
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec
from ref_assets.store.writer import WriteReceipt

DATASET_PREFIX = "dataset/"
PREVIEW_KEY = "preview"
SIGNIFICANT_DIGITS = 4
STATISTICS = ("min", "mean", "max", "nan_fraction")


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (statistics to read and plot, not to
    compute with: the record keeps them whole)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def statistics_metadata(record: ProvenanceRecord) -> dict[str, dg.FloatMetadataValue]:
    """``<variable>/min``, ``/mean``, ``/max`` and ``/nan_fraction`` as floats; a period with no
    finite value has only its NaN fraction (1.0)."""
    metadata = {}
    for name, info in record.variables.items():
        values = (info.minimum, info.mean, info.maximum, info.nan_fraction)
        for statistic, value in zip(STATISTICS, values, strict=True):
            if value is not None:
                metadata[f"{name}/{statistic}"] = dg.MetadataValue.float(round_significant(value))
    return metadata


def preview_metadata(preview: Preview | None, problem: str | None) -> dict[str, dg.MetadataValue]:
    """The map preview as markdown with an inline PNG (Dagster's UI allows ``data:`` images), or
    the reason there is none."""
    if preview is not None:
        data = base64.b64encode(preview.png).decode("ascii")
        return {
            PREVIEW_KEY: dg.MetadataValue.md(f"![{preview.caption}](data:image/png;base64,{data})")
        }
    if problem is not None:
        return {PREVIEW_KEY: dg.MetadataValue.text(problem)}
    return {}


def materialization_metadata(receipt: WriteReceipt) -> dict[str, dg.MetadataValue]:
    """What Dagster shows for one period this run wrote."""
    return {
        **preview_metadata(receipt.preview, receipt.preview_problem),
        **record_metadata(receipt.record),
        "snapshot_id": dg.MetadataValue.text(receipt.snapshot_id),
        "bytes_written": dg.MetadataValue.int(receipt.bytes_written),
        "commit_attempts": dg.MetadataValue.int(receipt.attempts),
    }


def record_metadata(record: ProvenanceRecord) -> dict[str, dg.MetadataValue]:
    """A period's provenance record as Dagster metadata: its statistics as plottable floats, the
    whole record as JSON, and its checksums, versions and sources as readable fields."""
    numeric = ("min", "mean", "max", "nan_fraction")
    variables = [
        dg.TableRecord(
            {
                "variable": name,
                "units": info.units,
                "shape": "x".join(map(str, info.shape)),
                "min": info.minimum,
                "mean": info.mean,
                "max": info.maximum,
                "nan_fraction": info.nan_fraction,
            }
        )
        for name, info in record.variables.items()
    ]
    sources = [
        dg.TableRecord({"uri": s.uri, "size": s.size, "sha256": s.sha256}) for s in record.sources
    ]
    return {
        **statistics_metadata(record),
        "period": dg.MetadataValue.text(record.period),
        "time_index": dg.MetadataValue.int(record.time_index),
        "checksum": dg.MetadataValue.text(record.checksum),
        "provider": dg.MetadataValue.text(f"{record.provider} {record.provider_version}"),
        "code_version": dg.MetadataValue.text(record.code_version or "unknown"),
        "spec_fingerprint": dg.MetadataValue.text(record.spec_fingerprint),
        "variables": dg.MetadataValue.table(
            variables,
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn(c, "float" if c in numeric else "string")
                    for c in ("variable", "units", "shape", *numeric)
                ]
            ),
        ),
        "sources": dg.MetadataValue.table(
            sources,
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("uri", "string"),
                    dg.TableColumn("size", "int"),
                    dg.TableColumn("sha256", "string"),
                ]
            ),
        ),
        "record": dg.MetadataValue.json(record.model_dump(mode="json", exclude_none=True)),
    }


def dataset_metadata(spec: DatasetSpec) -> dict[str, dg.MetadataValue]:
    """The asset definition's metadata: the dataset as a whole, under ``dataset/`` keys."""
    last = spec.last_period()
    return {
        f"{DATASET_PREFIX}title": dg.MetadataValue.text(redact(spec.title)),
        f"{DATASET_PREFIX}provider": dg.MetadataValue.text(spec.provider),
        f"{DATASET_PREFIX}period": dg.MetadataValue.text(spec.period.value),
        f"{DATASET_PREFIX}start": dg.MetadataValue.text(spec.period.key(spec.start)),
        f"{DATASET_PREFIX}end": dg.MetadataValue.text(
            spec.period.key(spec.end) if spec.end else "open: the newest complete period"
        ),
        f"{DATASET_PREFIX}last_period": dg.MetadataValue.text(last.key if last else "none yet"),
        f"{DATASET_PREFIX}variables": dg.MetadataValue.json(
            redact([v.model_dump(mode="json") for v in spec.variables])
        ),
        f"{DATASET_PREFIX}source": dg.MetadataValue.text(source_location(spec)),
    }


# Params naming where a provider reads from, in order of preference (`input`: the dataset a
# derived product aggregates).
_LOCATION_PARAMS = ("url", "base_url", "path", "input")


def source_location(spec: DatasetSpec) -> str:
    """Where the dataset's periods come from, credentials masked: the spec's ``url``,
    ``base_url`` or ``path`` parameter, else the provider's own default."""
    for name in _LOCATION_PARAMS:
        if spec.params.get(name):
            return redact(str(spec.params[name]))
    return f"provider {spec.provider}'s default source"


SOURCE_PREFIX = "source"


def source_asset_key(spec: DatasetSpec) -> dg.AssetKey:
    return dg.AssetKey([SOURCE_PREFIX, spec.id])


def source_asset(spec: DatasetSpec, provider_version: str | None) -> dg.AssetSpec:
    """The external asset a dataset is read from, upstream of it in the lineage graph: Dagster
    does not materialize it; it says where the data comes from."""
    provider = f"{spec.provider} {provider_version}" if provider_version else spec.provider
    return dg.AssetSpec(
        key=source_asset_key(spec),
        description=(
            f"Where {spec.id} ({redact(spec.title)}) comes from: read by the provider "
            f"{provider} from {source_location(spec)}."
        ),
        group_name=spec.group,
        kinds={"source", spec.provider},
        owners=spec.owners,
        metadata={
            f"{DATASET_PREFIX}provider": dg.MetadataValue.text(provider),
            f"{DATASET_PREFIX}source": dg.MetadataValue.text(source_location(spec)),
        },
    )


# Dagster's tags for a materialization's data version (dagster/_core/definitions/data_version.py
# has no public constants for them; a test pins these against it).
DATA_VERSION_TAG = "dagster/data_version"
DATA_VERSION_IS_USER_PROVIDED_TAG = "dagster/data_version_is_user_provided"
CODE_VERSION_TAG = "dagster/code_version"


def data_version_tags(record: ProvenanceRecord) -> dict[str, str]:
    """Tags that give a materialization the record's checksum as data version, as a run's
    output of one partition has: for the partitions of a range run (`write_range`) and those
    reported outside a run (``report_runless_asset_event``, `instance_sync`)."""
    tags = {DATA_VERSION_TAG: record.checksum, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}
    if record.code_version:
        tags[CODE_VERSION_TAG] = record.code_version
    return tags

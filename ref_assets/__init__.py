"""ref_assets: analysis-ready climate datasets as time-partitioned Dagster assets on Icechunk.

>>> import ref_assets
>>> ds = ref_assets.open_dataset("demo_air_temperature")  # doctest: +SKIP
>>> ds.t2m.sel(time="2024-01-03").mean().item()  # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ref-assets")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from ref_assets.periods import Period, PeriodType
from ref_assets.provenance import ProvenanceRecord, read_provenance
from ref_assets.reader import dataset_status, open_dataset
from ref_assets.specs import DatasetSpec

__all__ = [
    "DatasetSpec",
    "Period",
    "PeriodType",
    "ProvenanceRecord",
    "__version__",
    "dataset_status",
    "open_dataset",
    "read_provenance",
]

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

# Imported on first use (PEP 562): the library pulls in xarray, zarr and icechunk, seconds that
# `ref-assets --help`, `--version` and every submodule import would otherwise pay.
_LAZY = {
    "DatasetSpec": "ref_assets.specs",
    "Period": "ref_assets.periods",
    "PeriodType": "ref_assets.periods",
    "ProvenanceRecord": "ref_assets.provenance",
    "annotate": "ref_assets.annotations",
    "dataset_status": "ref_assets.reader",
    "open_dataset": "ref_assets.reader",
    "read_annotations": "ref_assets.annotations",
    "read_provenance": "ref_assets.provenance",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'ref_assets' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DatasetSpec",
    "Period",
    "PeriodType",
    "ProvenanceRecord",
    "__version__",
    "annotate",
    "dataset_status",
    "open_dataset",
    "read_annotations",
    "read_provenance",
]

"""The Dagster code location: ``dagster dev -w workspace.yaml`` or ``-m ref_assets.definitions``."""

from __future__ import annotations

import dagster as dg

from ref_assets.catalog import configured_vocabulary, load_catalog
from ref_assets.config import Settings, load_settings
from ref_assets.defs.assets import IO_MANAGER_KEY, build_dataset_asset
from ref_assets.defs.checks import build_check_job, build_quality_check
from ref_assets.defs.derived import (
    build_automation_sensor,
    build_derived_asset,
    derived_specs,
    is_derived,
)
from ref_assets.defs.extraction import clean_job, clean_schedule, extract_job
from ref_assets.defs.io_manager import IcechunkIOManager
from ref_assets.defs.maintenance import (
    build_maintenance_job,
    build_maintenance_schedule,
    maintenance_asset,
)
from ref_assets.defs.metadata import source_asset
from ref_assets.defs.resources import (
    IcechunkStorage,
    PackagedFilesResource,
    ProviderRegistryResource,
)
from ref_assets.defs.sensors import build_updates_sensor
from ref_assets.defs.stac import StacDestination, build_catalog_asset, stac_sensor
from ref_assets.defs.timeseries import build_timeseries_asset, timeseries_sensor
from ref_assets.preview import PreviewStyle
from ref_assets.providers.registry import installed_providers


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Assets for every dataset spec that loads (broken specs are logged and skipped), each
    downstream of an external asset for its source; a dataset whose provider did not load is
    still an asset, which fails clearly when run."""
    settings = settings or load_settings()
    vocabulary = configured_vocabulary(settings)
    catalog = load_catalog(settings, vocabulary)
    registry = installed_providers(settings.providers)
    sourced = [spec for spec in catalog.specs.values() if not is_derived(spec)]
    derived = derived_specs(catalog.specs)  # each after its input (`ref_assets.defs.derived`)
    specs = [*sourced, *derived]
    datasets = [
        build_dataset_asset(spec, registry, PreviewStyle.for_spec(spec, vocabulary))
        for spec in sourced
    ] + [
        build_derived_asset(spec, registry, PreviewStyle.for_spec(spec, vocabulary))
        for spec in derived
    ]
    copies = [build_timeseries_asset(spec) for spec in specs if spec.timeseries]
    maintained = {spec.id: build_maintenance_job(spec) for spec in specs if spec.retention}
    catalogue = [build_catalog_asset(specs)] if specs else []
    return dg.Definitions(
        assets=[
            *datasets,
            *copies,
            *catalogue,
            *(
                source_asset(spec, _version(registry.classes.get(spec.provider)))
                for spec in sourced
            ),
            *(maintenance_asset(spec) for spec in specs if spec.id in maintained),
        ],
        asset_checks=[
            build_quality_check(spec, asset.partitions_def)
            for spec, asset in zip(specs, datasets, strict=True)
        ],
        jobs=[
            *(build_check_job(spec) for spec in specs),
            *maintained.values(),
            extract_job,
            clean_job,
        ],
        schedules=[
            clean_schedule,
            *(
                build_maintenance_schedule(spec, maintained[spec.id])
                for spec in specs
                if spec.id in maintained
            ),
        ],
        sensors=[
            *(build_updates_sensor(spec) for spec in sourced),
            *(build_automation_sensor(spec) for spec in derived),
            *([timeseries_sensor(copies)] if copies else []),
            *(stac_sensor(asset) for asset in catalogue),
        ],
        resources={
            # The root is resolved in each process that writes (REF_STORAGE_ROOT, ref.toml).
            IO_MANAGER_KEY: IcechunkIOManager(storage=IcechunkStorage()),
            "icechunk_storage": IcechunkStorage(),
            "providers": ProviderRegistryResource(),
            "packaged_files": PackagedFilesResource(),
            "stac_destination": StacDestination(),
        },
    )


def _version(provider_class: type | None) -> str | None:
    return provider_class.version if provider_class else None


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by Dagster's tools: importing this module reads no configuration."""
    return build_definitions()

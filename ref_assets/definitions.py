"""The Dagster code location: ``dagster dev -w workspace.yaml`` or ``-m ref_assets.definitions``."""

from __future__ import annotations

import dagster as dg

from ref_assets.catalog import load_catalog
from ref_assets.config import Settings, load_settings
from ref_assets.defs.assets import IO_MANAGER_KEY, build_dataset_asset
from ref_assets.defs.io_manager import IcechunkIOManager
from ref_assets.defs.resources import (
    IcechunkStorage,
    PackagedFilesResource,
    ProviderRegistryResource,
)
from ref_assets.providers.registry import installed_providers


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Assets for every dataset spec that loads (broken specs are logged and skipped); a
    dataset whose provider did not load is still an asset, which fails clearly when run."""
    settings = settings or load_settings()
    catalog = load_catalog(settings)
    registry = installed_providers(settings.providers)
    return dg.Definitions(
        assets=[build_dataset_asset(spec, registry) for spec in catalog.specs.values()],
        resources={
            # The root is resolved in each process that writes (REF_STORAGE_ROOT, ref.toml).
            IO_MANAGER_KEY: IcechunkIOManager(storage=IcechunkStorage()),
            "providers": ProviderRegistryResource(),
            "packaged_files": PackagedFilesResource(),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded lazily by Dagster's tools: importing this module reads no configuration."""
    return build_definitions()

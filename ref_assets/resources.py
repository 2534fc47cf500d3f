"""Dagster resources: where stores live, and which providers are installed."""

from __future__ import annotations

from functools import cache

import dagster as dg

from ref_assets.config import load_settings
from ref_assets.providers.protocol import Provider
from ref_assets.providers.registry import ProviderRegistry
from ref_assets.specs import DatasetSpec
from ref_assets.store.repository import DatasetStore


class IcechunkStorage(dg.ConfigurableResource):
    """The storage root holding one Icechunk repository per dataset.

    ``root`` unset means the configured default: ``REF_STORAGE_ROOT``, else ``[storage] root`` in
    ``ref.toml``, else ``$REF_CONFIGURATION/stores``; it is resolved in the process that uses it.
    """

    root: str | None = None

    def resolved_root(self) -> str:
        return self.root or load_settings().storage_root

    def store(self, dataset_id: str) -> DatasetStore:
        return DatasetStore(self.resolved_root(), dataset_id)


@cache
def installed_providers() -> ProviderRegistry:
    """Providers found by entry point, discovered once per process."""
    return ProviderRegistry.discover()


class ProviderRegistryResource(dg.ConfigurableResource):
    """Builds the provider a dataset spec names (see `ProviderRegistry`)."""

    def create(self, spec: DatasetSpec) -> Provider:
        return installed_providers().create(spec)

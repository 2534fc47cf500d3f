"""Dagster resources: where stores live, which providers are installed, and packaged files.

Each resolves the configuration (``REF_CONFIGURATION``, ref.toml, ``REF_*``) in the process that
uses it, so the code location, the daemon and run workers on other machines agree as long as they
share the configuration directory.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ref_assets.config import load_settings
from ref_assets.providers.protocol import Provider
from ref_assets.providers.registry import ProviderRegistry, installed_providers
from ref_assets.specs import DatasetSpec
from ref_assets.store.repository import DatasetStore
from ref_assets.vocabulary import VariableVocabulary, load_vocabulary


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


class ProviderRegistryResource(dg.ConfigurableResource):
    """Builds the provider a dataset spec names (see `ProviderRegistry`).

    >>> ProviderRegistryResource().registry().classes["synthetic"].name  # doctest: +SKIP
    'synthetic'
    """

    def registry(self) -> ProviderRegistry:
        return installed_providers()

    def create(self, spec: DatasetSpec) -> Provider:
        return self.registry().create(spec)


class PackagedFilesResource(dg.ConfigurableResource):
    """Packaged data files through the durable cache ``$REF_CONFIGURATION/cache``.

    ``path("packaged:ref_assets/data/variables_cv.toml")`` returns the cached copy, written or
    repaired first when needed; ``variables_cv()`` is the vocabulary ref.toml names.
    """

    def path(self, reference: str) -> Path:
        return load_settings().resolve_path(reference)

    def variables_cv(self) -> VariableVocabulary:
        settings = load_settings()
        return load_vocabulary(settings.variables_cv, settings.resolve_path)

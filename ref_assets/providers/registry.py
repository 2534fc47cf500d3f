"""Finding providers: entry points in the group ``ref_assets.providers``, loaded tolerantly.

A provider whose module no longer imports, or whose class does not satisfy the `Provider`
contract, is logged once with the reason and skipped; the others register. Datasets that name a
missing provider still load as assets and fail only when run, with an error saying what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from ref_assets.providers.protocol import Provider, ProviderError
from ref_assets.specs import DatasetSpec

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ref_assets.providers"
_REQUIRED_METHODS = ("describe", "available_periods", "latest_available", "fetch")


class ProviderUnavailableError(ProviderError):
    """The spec names a provider that is not installed or failed to load."""


@dataclass
class ProviderRegistry:
    """Provider classes by name, plus the reason each unusable one was skipped."""

    classes: dict[str, type[Provider]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def discover(cls) -> ProviderRegistry:
        registry = cls()
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            registry.register_entry_point(entry_point)
        return registry

    def register_entry_point(self, entry_point: EntryPoint) -> None:
        try:
            provider_class = entry_point.load()
        except Exception as err:  # any import-time failure of a third-party module
            self._skip(entry_point.name, f"{entry_point.value} does not import: {err!r}")
            return
        problem = _contract_problem(provider_class)
        if problem:
            self._skip(entry_point.name, f"{entry_point.value} {problem}")
            return
        self.classes[entry_point.name] = provider_class

    def _skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        logger.warning("provider %r skipped: %s", name, reason)

    def create(self, spec: DatasetSpec) -> Provider:
        """The provider for ``spec``, built from its params."""
        provider_class = self.classes.get(spec.provider)
        if provider_class is None:
            reason = self.skipped.get(spec.provider, "it is not installed")
            known = ", ".join(sorted(self.classes)) or "none"
            raise ProviderUnavailableError(
                f"{spec.id}: provider {spec.provider!r} is unavailable ({reason}). Install the "
                f"package that provides it, or change the spec's provider (available: {known})."
            )
        return provider_class(spec)


def _contract_problem(provider_class: object) -> str | None:
    missing = [m for m in _REQUIRED_METHODS if not callable(getattr(provider_class, m, None))]
    missing += [
        a for a in ("name", "version") if not isinstance(getattr(provider_class, a, None), str)
    ]
    if missing:
        return f"does not satisfy the provider protocol (missing {', '.join(missing)})"
    return None

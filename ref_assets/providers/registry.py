"""Finding providers: entry points in the group ``ref_assets.providers``, plus ``[[providers]]``
tables in ref.toml (``provider = "package.module:attribute"``), all loaded tolerantly.

A provider whose module no longer imports (or calls ``sys.exit()`` while importing), whose
attribute is missing, or whose class does not satisfy the `Provider` contract, is logged once with
the reason and skipped; the others register.
Datasets that name a missing provider still load as assets and fail only when run, with an error
saying what to do. A ref.toml entry replaces an entry point of the same name.

>>> registry = ProviderRegistry.discover()
>>> registry.classes["synthetic"].name
'synthetic'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from ref_assets.config import ProviderEntry, load_settings
from ref_assets.providers.protocol import Provider, ProviderError, ProviderParamsError
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ref_assets.providers"
_REQUIRED_METHODS = ("describe", "available_periods", "latest_available", "fetch")


class ProviderUnavailableError(ProviderError):
    """The spec names a provider that is not installed or failed to load."""


@dataclass(frozen=True)
class ProviderSource:
    """Where a provider was declared, and what came of loading it."""

    name: str | None  # None: a ref.toml entry without a name that did not load
    reference: str  # package.module:attribute
    origin: str  # "entry point (dist 1.2)" or "ref.toml [[providers]] #2"
    problem: str | None = None
    version: str | None = None
    entry: ProviderEntry | None = None  # the ref.toml table, if it came from one

    @property
    def loaded(self) -> bool:
        return self.problem is None

    @property
    def label(self) -> str:
        return self.name or self.reference


@dataclass
class ProviderRegistry:
    """Provider classes by name, and every declared provider with its state."""

    classes: dict[str, type[Provider]] = field(default_factory=dict)
    sources: list[ProviderSource] = field(default_factory=list)

    @classmethod
    def discover(cls, configured: Iterable[ProviderEntry] = ()) -> ProviderRegistry:
        """Entry points first, then the ref.toml entries (which win on a shared name)."""
        registry = cls()
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            registry.register_entry_point(entry_point)
        for entry in configured:
            registry.register_configured(entry)
        return registry

    @property
    def skipped(self) -> dict[str, str]:
        """The reason each unusable provider was skipped, by name (or reference)."""
        return {
            s.label: s.problem for s in self.sources if s.problem and s.label not in self.classes
        }

    def register_entry_point(self, entry_point: EntryPoint) -> None:
        dist = entry_point.dist
        origin = f"entry point ({dist.name} {dist.version})" if dist else "entry point"
        self._register(entry_point.name, entry_point, origin)

    def register_configured(self, entry: ProviderEntry) -> None:
        if entry.problem:
            self._add(
                ProviderSource(
                    entry.name, entry.reference, entry.origin, entry.problem, entry=entry
                )
            )
            return
        entry_point = EntryPoint(entry.name or "", entry.reference, ENTRY_POINT_GROUP)
        self._register(entry.name, entry_point, entry.origin, entry)

    def _register(
        self,
        name: str | None,
        entry_point: EntryPoint,
        origin: str,
        entry: ProviderEntry | None = None,
    ) -> None:
        try:
            provider_class = entry_point.load()
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # any import-time failure of a third-party module,
            # sys.exit() included: it must not take the CLI or the code location down with it
            problem = _load_problem(err)
            self._add(ProviderSource(name, entry_point.value, origin, problem, entry=entry))
            return
        problem = _contract_problem(provider_class)
        name = name or getattr(provider_class, "name", None)
        version = getattr(provider_class, "version", None)
        source = ProviderSource(name, entry_point.value, origin, problem, version, entry)
        self._add(source)
        if problem is None:
            if source.name in self.classes:
                logger.info("provider %r from %s replaces an earlier one", source.name, origin)
            self.classes[source.name] = provider_class

    def _add(self, source: ProviderSource) -> None:
        self.sources.append(source)
        if source.problem:
            named = (
                f"{source.name!r} ({source.reference}" if source.name else f"{source.reference} ("
            )
            logger.warning("provider %s, %s) skipped: %s", named, source.origin, source.problem)

    def create(self, spec: DatasetSpec) -> Provider:
        """The provider for ``spec``, built from its params (offline: constructors do no I/O).

        Whatever the constructor raises comes out as a `ProviderError` with secrets masked and
        without the original chained, whose text may hold them (a URL's credentials, a token);
        `ProviderParamsError` keeps its per-field problems."""
        provider_class = self.classes.get(spec.provider)
        if provider_class is None:
            raise ProviderUnavailableError(self.unavailable_reason(spec))
        if spec.dimensions and not getattr(provider_class, "extra_dimensions", False):
            # Refused once, here, rather than as a grid mismatch in every period.
            raise ProviderError(
                f"{spec.id}: dimensions: provider {spec.provider!r} delivers (y, x) fields only, "
                f"so {[d.name for d in spec.dimensions]} cannot be filled; remove `dimensions` "
                "(and the variables' `dimensions`) or use a provider that has them, such as "
                "local_files"
            )
        try:
            return provider_class(spec)
        except (ProviderParamsError, KeyboardInterrupt):
            raise  # masked already; an interrupt stays one
        except BaseException as err:  # a third-party constructor; sys.exit() included
            if isinstance(err, ProviderError):
                message = str(err)
            else:
                message = (
                    f"{spec.id}: provider {spec.provider!r} could not be built from the spec: "
                    f"{type(err).__name__}: {err}"
                )
            raise ProviderError(redact(message)) from None

    def unavailable_reason(self, spec: DatasetSpec) -> str:
        """Why ``spec``'s provider cannot be built, and what to do about it."""
        known = ", ".join(sorted(self.classes)) or "none"
        reason = self.skipped.get(spec.provider, "it is not installed")
        unnamed = [s for s in self.sources if s.name is None and s.problem]
        also = "".join(
            f"; {s.origin} ({s.reference}) did not load either: {s.problem}" for s in unnamed
        )
        return (
            f"{spec.id}: provider {spec.provider!r} is unavailable ({reason}{also}). Install the "
            f"package that provides it, change the spec's provider (available: {known}), or "
            "remove ref.toml entries that no longer load with `ref-assets providers prune`."
        )


@cache
def discover_providers(configured: tuple[ProviderEntry, ...]) -> ProviderRegistry:
    """`ProviderRegistry.discover`, once per process and configuration."""
    return ProviderRegistry.discover(configured)


def installed_providers(configured: Iterable[ProviderEntry] | None = None) -> ProviderRegistry:
    """Providers from entry points and ref.toml (default: the current settings' entries),
    discovered once per process and configuration, so each broken one is logged once."""
    entries = load_settings().providers if configured is None else configured
    return discover_providers(tuple(entries))


def _load_problem(err: BaseException) -> str:
    if isinstance(err, SystemExit):
        return f"called sys.exit({'' if err.code is None else repr(err.code)}) on import"
    if isinstance(err, ModuleNotFoundError):
        return f"module {err.name!r} is not installed"
    if isinstance(err, AttributeError):
        return f"attribute missing: {err}"
    return f"does not import: {err!r}"


def _contract_problem(provider_class: object) -> str | None:
    missing = [m for m in _REQUIRED_METHODS if not callable(getattr(provider_class, m, None))]
    missing += [
        a for a in ("name", "version") if not isinstance(getattr(provider_class, a, None), str)
    ]
    if missing:
        return f"does not satisfy the provider protocol (missing {', '.join(missing)})"
    return None

"""Politeness towards upstream servers: how many runs fetch from one source at once.

Every dataset's fetch step is in a Dagster pool (``runs.pool``, by default its provider's name),
so all datasets read from one upstream share one limit: at most that many of their steps run at
once, whatever the run queue allows, each fetching ``runs.fetch_workers`` periods at a time. The
limit is the smallest ``runs.pool_limit`` of the pool's specs, else the smallest ``pool_limit`` of
their provider classes (CHIRPS: 1, after a peer's four parallel requests got its address banned),
else none (unlimited). ``ref-assets instance init`` writes the limits into the Dagster instance,
where the UI shows them (Deployment > Concurrency) with each asset's pool.

>>> from ref_assets.config import Settings
from ref_assets.specs import DatasetSpec
>>> class Chirps:
...     pool_limit = 1
>>> spec = DatasetSpec.model_validate({"id": "rain", "title": "Rain", "provider": "chirps3",
...     "period": "daily", "start": "2024-01-01",
...     "variables": [{"name": "precipitation", "units": "mm"}]})  # doctest: +SKIP
>>> pool_limits([spec], {"chirps3": Chirps})  # doctest: +SKIP
[PoolLimit(pool='chirps3', limit=1, origin='provider chirps3', datasets=('rain',))]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ref_assets.config import Settings
from ref_assets.specs import DatasetSpec


@dataclass(frozen=True)
class PoolLimit:
    """One pool: its limit (None: unlimited), where the limit comes from, and its datasets."""

    pool: str
    limit: int | None
    origin: str  # "spec rain runs.pool_limit", "provider chirps3" or "none"
    datasets: tuple[str, ...]


def dataset_pool(spec: DatasetSpec) -> str:
    """The Dagster pool of ``spec``'s fetch step."""
    return spec.runs.pool or spec.provider


def pool_limits(
    specs: Iterable[DatasetSpec], provider_classes: Mapping[str, type]
) -> list[PoolLimit]:
    """Each pool of ``specs`` with its limit, by pool name. Of several specs or providers
    sharing a pool, the smallest limit wins: the upstream bans whoever asks most."""
    members: dict[str, list[DatasetSpec]] = {}
    for spec in specs:
        members.setdefault(dataset_pool(spec), []).append(spec)
    limits = []
    for pool, pooled in sorted(members.items()):
        datasets = tuple(sorted(spec.id for spec in pooled))
        configured = [(s.runs.pool_limit, f"spec {s.id} runs.pool_limit") for s in pooled]
        declared = [
            (_provider_limit(provider_classes, s), f"provider {s.provider}") for s in pooled
        ]
        for candidates in (configured, declared):
            known = [(limit, origin) for limit, origin in candidates if limit is not None]
            if known:
                limit, origin = min(known)
                limits.append(PoolLimit(pool, limit, origin, datasets))
                break
        else:
            limits.append(PoolLimit(pool, None, "none", datasets))
    return limits


def _provider_limit(provider_classes: Mapping[str, type], spec: DatasetSpec) -> int | None:
    return getattr(provider_classes.get(spec.provider), "pool_limit", None)


def configured_pools(settings: Settings) -> list[PoolLimit]:
    """The pools of every dataset ``settings`` defines, with their providers' limits."""
    from ref_assets.catalog import load_catalog
    from ref_assets.providers.registry import installed_providers

    specs = load_catalog(settings).specs.values()
    return pool_limits(specs, installed_providers(settings.providers).classes)

"""The STAC catalogue as a Dagster asset, kept current by automation.

``stac/catalog`` depends on every dataset asset; its automation condition requests it on the
first tick after any dataset's period is materialized (once no run is writing), and it rewrites
the catalogue (`ref_assets.catalog_stac`) from the stores as they are then: extents, snapshots
and variables follow the data. The `stac_automation` sensor evaluates the condition; it is on
as soon as the code location loads.

Where the catalogue goes is the `StacDestination` resource: ``root`` (a directory or
``s3://bucket/prefix``), by default ``[stac] root`` of ref.toml (``REF_STAC_ROOT``), else
``$REF_CONFIGURATION/stac``.
"""

import dagster as dg

from ref_assets.catalog_stac import ICECHUNK_ASSET, build_catalog, write_catalog
from ref_assets.config import load_settings
from ref_assets.defs.resources import IcechunkStorage
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec

CATALOG_KEY = dg.AssetKey(["stac", "catalog"])
AUTOMATION_SENSOR = "stac_automation"
AUTOMATION_INTERVAL_SECONDS = 30

# Whenever a dataset's period lands (new or revised), and once when the catalogue was never
# written; not while a run writes a dataset (its extents would be out of date at once).
CATALOGUE_WHEN_UPDATED = (
    (dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.missing())
    .since_last_handled()
    .with_label("a dataset's period was stored since the catalogue was written")
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)


class StacDestination(dg.ConfigurableResource):
    """Where the STAC catalogue is written: ``root`` (a directory or s3://bucket/prefix); unset:
    the configured one (``REF_STAC_ROOT``, else ``[stac] root`` in ref.toml, else
    ``$REF_CONFIGURATION/stac``), resolved in the process that writes."""

    root: str | None = None

    def resolved_root(self) -> str:
        return self.root or load_settings().stac_root


def build_catalog_asset(specs: list[DatasetSpec]) -> dg.AssetsDefinition:
    """The catalogue asset over the datasets of ``specs``."""
    by_id = {spec.id: spec for spec in specs}

    @dg.asset(
        key=CATALOG_KEY,
        description="STAC catalogue of the datasets' stores: one collection per dataset "
        "(datacube extension; extents, snapshot and branch read from the store), under "
        "catalog.json. `ref-assets stac --to DIR` writes the same.",
        deps=[dg.AssetDep(dataset_id) for dataset_id in by_id],
        automation_condition=CATALOGUE_WHEN_UPDATED,
        group_name="catalogue",
        kinds={"stac"},
    )
    def stac_catalog(
        context: dg.AssetExecutionContext,
        icechunk_storage: IcechunkStorage,
        stac_destination: StacDestination,
    ) -> dg.MaterializeResult:
        built = build_catalog(icechunk_storage.resolved_root(), by_id)
        destination = stac_destination.resolved_root()
        files = write_catalog(built.catalog, destination)
        collections = {
            child.id: child.assets[ICECHUNK_ASSET].extra_fields["icechunk:snapshot_id"]
            for child in built.catalog.get_collections()
        }
        context.log.info(
            f"STAC catalogue at {redact(destination)}: {len(collections)} collections"
            + (f"; left out {', '.join(built.skipped)}" if built.skipped else "")
        )
        return dg.MaterializeResult(
            metadata={
                "catalog": dg.MetadataValue.path(
                    redact(next(f for f in files if f.endswith("catalog.json")))
                ),
                "collections": dg.MetadataValue.int(len(collections)),
                "snapshots": dg.MetadataValue.json(collections),
                "left_out": dg.MetadataValue.json(built.skipped),
            }
        )

    return stac_catalog


def stac_sensor(catalog: dg.AssetsDefinition) -> dg.AutomationConditionSensorDefinition:
    """The sensor evaluating the catalogue's automation condition, on from the start."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.assets(catalog),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
        description="Rewrites the STAC catalogue once a dataset's period is stored or revised.",
    )

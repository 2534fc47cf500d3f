"""What Dagster shows: statistics as plottable floats, map previews, dataset-level definition
metadata, owners/tags/groups from the spec, and source assets upstream of every dataset."""

from __future__ import annotations

import base64
import io
import re

import dagster as dg
import matplotlib
import numpy as np
import pytest
from dagster._core.definitions.utils import is_valid_owner, validate_group_name
from dagster._utils.tags import is_valid_strict_tag_value, is_valid_tag_key
from PIL import Image
from pydantic import ValidationError

import ref_assets
from ref_assets.definitions import build_definitions
from ref_assets.defs.metadata import DATASET_PREFIX, round_significant
from ref_assets.preview import LEVELS, MAX_SIDE, PreviewStyle, render_preview
from ref_assets.provenance import read_provenance
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore
from ref_assets_tests.conftest import spec_dict
from ref_assets_tests.test_extra_dimensions import levels_spec, write_levels_file

# Dagster's UI draws a markdown value in place only below this many characters.
INLINE_MARKDOWN_CHARS = 1000
STYLE = PreviewStyle("t2m", "RdYlBu_r", (-40.0, 45.0))


def event_metadata(result: dg.ExecuteInProcessResult, dataset_id: str, key: str) -> dict:
    [event] = [e for e in result.asset_materializations_for_node(dataset_id) if e.partition == key]
    return dict(event.metadata)


def decode_preview(markdown: str) -> tuple[str, bytes]:
    """The caption and PNG of a preview's markdown."""
    match = re.fullmatch(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:80]
    return match.group(1), base64.b64decode(match.group(2))


def rgba(image: Image.Image, x: int, y: int) -> tuple[int, int, int, int]:
    return image.convert("RGBA").getpixel((x, y))


def colormap_rgb(fraction: float) -> tuple[int, int, int]:
    return tuple(round(c * 255) for c in matplotlib.colormaps["RdYlBu_r"](fraction)[:3])


def test_round_significant_keeps_four_digits():
    assert round_significant(23.456789) == 23.46
    assert round_significant(-0.000123456) == -0.0001235
    assert round_significant(123456.7) == 123500.0
    assert round_significant(0.0) == 0.0
    assert round_significant(1.0) == 1.0


def test_statistics_are_top_level_rounded_floats(settings, write_spec, materialize):
    spec = DatasetSpec.model_validate(write_spec())
    result = materialize(spec.id, "2024-01-02...2024-01-03")
    for key in ("2024-01-02", "2024-01-03"):
        metadata = event_metadata(result, spec.id, key)
        recorded = read_provenance(spec.id, key).variables["t2m"]
        expected = {
            "t2m/min": recorded.minimum,
            "t2m/mean": recorded.mean,
            "t2m/max": recorded.maximum,
            "t2m/nan_fraction": recorded.nan_fraction,
        }
        for name, value in expected.items():
            assert isinstance(metadata[name], dg.FloatMetadataValue), name
            assert metadata[name].value == round_significant(value)
            assert len(f"{abs(metadata[name].value):e}".split("e")[0].rstrip("0")) <= 6
        assert 0 < metadata["t2m/nan_fraction"].value < 1


def test_a_period_without_finite_values_has_only_its_nan_fraction(
    settings, write_spec, materialize
):
    from ref_assets.defs.metadata import statistics_metadata

    spec = DatasetSpec.model_validate(write_spec())
    materialize(spec.id, "2024-01-02")
    record = read_provenance(spec.id, "2024-01-02")
    empty = record.variables["t2m"].model_copy(
        update={"minimum": None, "mean": None, "maximum": None, "nan_fraction": 1.0}
    )
    metadata = statistics_metadata(record.model_copy(update={"variables": {"t2m": empty}}))
    assert {k: v.value for k, v in metadata.items()} == {"t2m/nan_fraction": 1.0}


def test_the_preview_shows_the_stored_period_inline(settings, write_spec, materialize):
    spec = DatasetSpec.model_validate(write_spec())
    result = materialize(spec.id, "2024-01-02")
    markdown = event_metadata(result, spec.id, "2024-01-02")["preview"]
    assert isinstance(markdown, dg.MarkdownMetadataValue)
    assert len(markdown.value) < INLINE_MARKDOWN_CHARS
    caption, png = decode_preview(markdown.value)
    assert caption == "t2m, RdYlBu_r -40 to 45"
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and max(image.size) <= MAX_SIDE
    # Drawn while writing, from the values that were stored: the same picture as from the store.
    session = store_reader.session_for(DatasetStore(settings.storage_root, spec.id))
    stored = store_reader.open_store_dataset(session)["t2m"].isel(time=1)
    again = render_preview(stored.values, stored.y.values, stored.x.values, STYLE)
    assert png == again.png


def test_preview_colours_transparency_and_orientation():
    # 40 x 60 cells, y ascending (south first): the preview must turn it north up.
    values = np.full((40, 60), 10.0, dtype="float32")
    values[-10:, :20] = -100.0  # north-west: below the range
    values[-10:, 40:] = 100.0  # north-east: above the range
    values[:10, :] = np.nan  # the south: no data
    y = np.linspace(-10, 10, 40)
    x = np.linspace(0, 30, 60)
    preview = render_preview(values, y, x, STYLE)
    image = Image.open(io.BytesIO(preview.png))
    assert image.size == (preview.width, preview.height)
    assert max(image.size) <= MAX_SIDE and image.size[0] / image.size[1] == pytest.approx(1.5)
    width, height = image.size
    top, bottom = 1, height - 2
    assert rgba(image, 1, top) == (*colormap_rgb(0.5 / LEVELS), 255)
    assert rgba(image, width - 2, top) == (*colormap_rgb(1 - 0.5 / LEVELS), 255)
    assert rgba(image, width // 2, bottom)[3] == 0  # NaN is transparent
    middle = rgba(image, width // 2, height // 2)
    step = int((10 + 40) / 85 * LEVELS)
    assert middle == (*colormap_rgb((step + 0.5) / LEVELS), 255)


def test_a_large_grid_gives_a_small_preview():
    rng = np.random.default_rng(1)
    values = rng.normal(15, 10, size=(900, 1800)).astype("float32")
    preview = render_preview(values, np.linspace(90, -90, 900), np.linspace(-180, 180, 1800), STYLE)
    assert max(preview.width, preview.height) <= MAX_SIDE
    assert preview.width == 2 * preview.height
    assert len(base64.b64encode(preview.png)) + 60 < INLINE_MARKDOWN_CHARS


def test_an_unknown_colour_map_costs_the_preview_not_the_period(
    settings, write_spec, materialize, tmp_path
):
    vocabulary = tmp_path / "vocabulary.toml"
    vocabulary.write_text(
        'format = "ref-assets/variables-cv-v1"\n'
        'extends = "packaged:ref_assets/data/variables_cv.toml"\n'
        "[variables.t2m]\n"
        'units = ["degC"]\n'
        'standard_name = "air_temperature"\n'
        'colormap = "no_such_map"\n'
    )
    settings.config_file.write_text(f'[paths]\nvariables_cv = "{vocabulary}"\n')
    spec = DatasetSpec.model_validate(write_spec())
    result = materialize(spec.id, "2024-01-02")
    preview = event_metadata(result, spec.id, "2024-01-02")["preview"]
    assert isinstance(preview, dg.TextMetadataValue)
    assert preview.value == (
        "test_t2m period 2024-01-02: no map preview: unknown colour map 'no_such_map': the "
        "vocabulary's `colormap` must name a matplotlib colour map (such as viridis, RdYlBu_r, "
        "YlGnBu)"
    )
    assert read_provenance(spec.id, "2024-01-02").checksum.startswith("sha256:")


def test_definition_metadata_is_not_overwritten_by_a_materialization(
    settings, write_spec, materialize, instance
):
    spec = DatasetSpec.model_validate(write_spec(end="2024-01-31"))
    definition = (
        build_definitions().resolve_assets_def(spec.id).metadata_by_key[dg.AssetKey(spec.id)]
    )
    assert {k: v.value for k, v in definition.items() if k != "dataset/variables"} == {
        "dataset/title": "Test dataset test_t2m",
        "dataset/provider": "synthetic",
        "dataset/period": "daily",
        "dataset/start": "2024-01-01",
        "dataset/end": "2024-01-31",
        "dataset/last_period": "2024-01-31",
        "dataset/source": "provider synthetic's default source",
    }
    assert definition["dataset/variables"].value[0]["name"] == "t2m"
    result = materialize(spec.id, "2024-01-05")
    partition = event_metadata(result, spec.id, "2024-01-05")
    assert not set(partition) & set(definition)
    assert not [key for key in partition if key.startswith(DATASET_PREFIX)]
    assert partition["period"].value == "2024-01-05"


def test_owners_tags_and_group_come_from_the_spec(settings, write_spec):
    write_spec(
        owners=["data-team@example.org", "team:climate"],
        tags={"domain": "climate", "ref/tier": "gold", "empty": ""},
        group="climate/temperature",
    )
    defs = build_definitions()
    asset = defs.resolve_assets_def("test_t2m")
    key = dg.AssetKey("test_t2m")
    assert asset.specs_by_key[key].owners == ["data-team@example.org", "team:climate"]
    assert {"domain": "climate", "ref/tier": "gold", "empty": ""}.items() <= (
        asset.specs_by_key[key].tags.items()
    )
    assert asset.group_names_by_key[key] == "climate/temperature"
    source = defs.resolve_assets_def(dg.AssetKey(["source", "test_t2m"])).specs_by_key[
        dg.AssetKey(["source", "test_t2m"])
    ]
    assert source.group_name == "climate/temperature"
    assert source.owners == ["data-team@example.org", "team:climate"]
    # The default: no owners, the datasets group.
    assert (
        defs.resolve_assets_def("demo_air_temperature").group_names_by_key[
            dg.AssetKey("demo_air_temperature")
        ]
        == "datasets"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("owners", ["alice"], "owner 'alice' is neither an e-mail address nor a team"),
        ("owners", ["team:"], "owner 'team:' is neither an e-mail address nor a team"),
        ("tags", {"has space": "x"}, "tag key 'has space' must be at most 63 letters"),
        ("tags", {"a/b/c": "x"}, "tag key 'a/b/c' must be at most 63 letters"),
        ("tags", {"dagster/kind/x": ""}, "tag 'dagster/kind/x': keys under dagster/ are"),
        ("tags", {"tier": "gold plated"}, "tag value 'gold plated' must be at most 63"),
        ("tags", {"tier": "x" * 64}, "tag value 'xxxxx"),
        ("group", "climate data", "group 'climate data' must be letters, digits and '_'"),
        ("group", "climate//t", "group 'climate//t' must be letters"),
    ],
)
def test_bad_owners_tags_and_groups_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValidationError) as caught:
        DatasetSpec.model_validate(spec_dict(**{field: value}))
    [error] = caught.value.errors()
    assert error["loc"][0] == field
    assert message in error["msg"]


@pytest.mark.parametrize(
    "text",
    [
        "a@b.org",
        "team:x",
        "alice",
        "team:",
        "a b@c.d",
        "domain",
        "ref/tier",
        "a/b/c",
        "",
        "x" * 63,
        "x" * 64,
        "gold plated",
        "climate/temperature",
        "climate//t",
        "_a/b_2",
    ],
)
def test_owner_tag_and_group_rules_agree_with_dagsters(text):
    def accepted(field: str, value) -> bool:
        try:
            DatasetSpec.model_validate(spec_dict(**{field: value}))
        except ValidationError:
            return False
        return True

    assert accepted("owners", [text]) == is_valid_owner(text)
    if not text.startswith("dagster/"):
        assert accepted("tags", {text: "v"}) == is_valid_tag_key(text)
    assert accepted("tags", {"k": text}) == is_valid_strict_tag_value(text)
    try:
        validate_group_name(text)
        dagster_accepts_group = bool(text)
    except dg.DagsterInvalidDefinitionError:
        dagster_accepts_group = False
    assert accepted("group", text) == dagster_accepts_group


def test_a_source_asset_upstream_shows_where_the_data_comes_from(settings, write_spec):
    secret_url = "https://user:s3cret@data.example/t2m"
    write_spec("remote_t2m", params={**spec_dict()["params"], "url": secret_url})
    defs = build_definitions()
    for dataset in ("demo_air_temperature", "remote_t2m"):
        source_key = dg.AssetKey(["source", dataset])
        asset = defs.resolve_assets_def(dataset)
        assert asset.asset_deps[dg.AssetKey(dataset)] == {source_key}
        source = defs.resolve_assets_def(source_key)
        assert not source.is_materializable and not source.is_executable
        spec = source.specs_by_key[source_key]
        assert "source" in spec.kinds and "synthetic" in spec.kinds
        assert f"Where {dataset} (" in spec.description
        assert "read by the provider synthetic 1 from" in spec.description
    remote = defs.resolve_assets_def(dg.AssetKey(["source", "remote_t2m"]))
    description = remote.specs_by_key[dg.AssetKey(["source", "remote_t2m"])].description
    assert description.endswith("from https://***@data.example/t2m.")
    assert "s3cret" not in description


def test_a_variable_with_levels_is_previewed_at_its_first_level(
    settings, write_spec, materialize, register_providers, tmp_path
):
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    write_levels_file(tmp_path / "archive" / "t_20240102.nc", 2)
    write_spec("upper_air", **levels_spec(tmp_path / "archive"))
    result = materialize("upper_air", "2024-01-02")
    caption, png = decode_preview(
        event_metadata(result, "upper_air", "2024-01-02")["preview"].value
    )
    assert caption == "t level=850, RdYlBu_r 190 to 310"
    stored = ref_assets.open_dataset("upper_air", settings=settings)["t"].sel(
        time="2024-01-02", level=850
    )
    style = PreviewStyle("t", "RdYlBu_r", (190.0, 310.0))
    assert png == render_preview(stored.values, stored.y.values, stored.x.values, style).png

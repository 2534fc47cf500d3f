"""The worldpop provider against small GeoTIFFs served locally in WorldPop's two directory
layouts: URLs, values and coordinates against rasterio reading the files directly, availability,
retries, corrupt files and real Dagster materializations with provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

import ref_assets
from ref_assets.catalog import load_catalog
from ref_assets.periods import Period, PeriodType
from ref_assets.provenance import read_provenance
from ref_assets.providers.http import HttpClient, SourceNotFoundError, SourceUnavailableError
from ref_assets.providers.protocol import ProviderError
from ref_assets.providers.worldpop import HEADER_BYTES, WorldPopProvider
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import step_failure
from ref_assets_tests.http_server import FileServer

NODATA = -99999.0
ROWS, COLS = 40, 50
# Where the test countries' rasters start (north-west corner) and their cell size, in degrees.
ORIGINS = {"KEN": (33.9, 5.0, 0.2), "XQZ": (-10.0, 12.0, 0.1)}
BBOX = (35.0, 0.0, 37.0, 3.0)  # inside the KEN test raster, with centres on its edges
TEMPLATE = Path(ref_assets.__file__).parent / "data" / "templates" / "worldpop.yaml"


def served_path(release: str, country: str, year: int) -> str:
    """WorldPop's layout (global2: constrained), written out independently of the provider."""
    upper, lower = country.upper(), country.lower()
    if release == "global1":
        return f"/GIS/Population/Global_2000_2020/{year}/{upper}/{lower}_ppp_{year}.tif"
    return (
        f"/GIS/Population/Global_2015_2030/R2025A/{year}/{upper}/v1/100m/constrained/"
        f"{lower}_pop_{year}_CN_100m_R2025A_v1.tif"
    )


def write_geotiff(path: Path, country: str, year: int, *, rows=ROWS, cols=COLS) -> Path:
    """People per cell (gamma-distributed, a tenth of the cells nodata), as WorldPop writes."""
    west, north, resolution = ORIGINS[country]
    rng = np.random.default_rng([year, rows, cols])
    values = rng.gamma(0.7, 30.0, (rows, cols)).astype("float32")
    values[rng.random((rows, cols)) < 0.1] = NODATA
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": rows, "width": cols, "count": 1, "dtype": "float32"}
    with rasterio.open(
        path,
        "w",
        **profile,
        crs="EPSG:4326",
        transform=from_origin(west, north, resolution, resolution),
        nodata=NODATA,
    ) as raster:
        raster.write(values, 1)
    return path


def publish(server: FileServer, release: str, country: str, year: int, **shape) -> Path:
    """Write a year's GeoTIFF where the server publishes it in ``release``'s layout."""
    path = server.root / served_path(release, country, year).lstrip("/")
    return write_geotiff(path, country, year, **shape)


def source_values(path: Path, rows=slice(None), cols=slice(None)):
    """Values (nodata as NaN) and cell-centre coordinates, read with rasterio directly."""
    with rasterio.open(path) as raster:
        values = raster.read(1)
        nodata, transform = raster.nodata, raster.transform
        height, width = raster.height, raster.width
    values = np.where(values == nodata, np.nan, values)[rows, cols]
    # Cell centres (rasterio's default offset), not corners.
    _, y = rasterio.transform.xy(transform, np.arange(height), np.zeros(height))
    x, _ = rasterio.transform.xy(transform, np.zeros(width), np.arange(width))
    return values, np.asarray(y)[rows], np.asarray(x)[cols]


def values_in_bbox(path: Path, bbox: tuple[float, float, float, float]):
    """`source_values` of the cells whose centres lie in ``bbox`` (west, south, east, north)."""
    west, south, east, north = bbox
    _, y, x = source_values(path)
    rows = np.flatnonzero((y >= south) & (y <= north))
    cols = np.flatnonzero((x >= west) & (x <= east))
    return source_values(path, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def worldpop_spec(base_url: str, dataset_id="pop_ken", *, params=None, **fields) -> dict:
    spec = {
        "id": dataset_id,
        "title": "WorldPop test",
        "provider": "worldpop",
        "params": {
            "release": "global2",
            "country": "KEN",
            "base_url": base_url,
            **(params or {}),
        },
        "period": "yearly",
        "start": "2015-01-01",
        "end": "2030-01-01",
        "variables": [{"name": "pop_total", "units": "people"}],
        "storage": {"time_block": 16},
    }
    return spec | fields


def provider_for(server: FileServer, **spec_fields) -> WorldPopProvider:
    spec = DatasetSpec.model_validate(worldpop_spec(server.url(""), **spec_fields))
    return WorldPopProvider(spec, http=HttpClient(sleep=lambda seconds: None))


def year(key: int) -> Period:
    return Period.from_key(PeriodType.YEARLY, str(key))


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "worldpop"
    root.mkdir()
    with FileServer(root) as file_server:
        yield file_server


@pytest.mark.parametrize(
    ("params", "path"),
    [
        (
            {"release": "global2", "country": "ken"},
            "/GIS/Population/Global_2015_2030/R2025A/2020/KEN/v1/100m/constrained/"
            "ken_pop_2020_CN_100m_R2025A_v1.tif",
        ),
        (
            {"release": "global2", "country": "KEN", "model": "unconstrained"},
            "/GIS/Population/Global_2015_2030/R2025A/2020/KEN/v1/100m/unconstrained/"
            "ken_pop_2020_UC_100m_R2025A_v1.tif",
        ),
        (
            {"release": "global1", "country": "xqz"},
            "/GIS/Population/Global_2000_2020/2020/XQZ/xqz_ppp_2020.tif",
        ),
    ],
)
def test_url_layout_per_release_upper_case_directory_lower_case_file(server, params, path):
    write_geotiff(server.root / path.lstrip("/"), params["country"].upper(), 2020)
    provider = provider_for(server, params=params, start="2020-01-01", end="2020-01-01")
    provider.fetch(year(2020))
    requested = {(r.method, r.path) for r in server.requests}
    assert requested == {("HEAD", path), ("GET", path)}


def test_values_nodata_and_coordinates_match_the_file_read_directly(server):
    path = publish(server, "global1", "XQZ", 2005)
    provider = provider_for(
        server,
        params={"release": "global1", "country": "XQZ"},
        start="2000-01-01",
        end="2020-01-01",
    )
    fetched = provider.fetch(year(2005))

    values, y, x = source_values(path)
    data = fetched.data["pop_total"]
    assert data.dims == ("y", "x") and data.dtype == np.float32
    assert data.attrs["units"] == "people"
    assert np.isnan(data.values).sum() == np.isnan(values).sum() > 0
    np.testing.assert_array_equal(data.values, values)
    np.testing.assert_array_equal(fetched.data["y"].values, y)
    np.testing.assert_array_equal(fetched.data["x"].values, x)
    assert y[0] > y[-1] and x[0] == -10.0 + 0.05
    grid = provider.describe().grid
    np.testing.assert_array_equal(grid.y, y)
    np.testing.assert_array_equal(grid.x, x)

    [source] = fetched.sources
    assert source.uri == server.url(served_path("global1", "XQZ", 2005))
    assert (source.sha256, source.size) == (sha256(path), path.stat().st_size)
    assert source.etag == f'"{hashlib.md5(path.read_bytes()).hexdigest()}"'
    assert source.last_modified is not None


def test_bbox_keeps_the_cells_whose_centres_lie_inside(server):
    path = publish(server, "global2", "KEN", 2021)
    provider = provider_for(server, params={"bbox": BBOX})
    fetched = provider.fetch(year(2021))

    values, y, x = values_in_bbox(path, BBOX)
    assert fetched.data["pop_total"].shape == (15, 11)  # centres 35.0..37.0 and 2.9..0.1
    np.testing.assert_array_equal(fetched.data["pop_total"].values, values)
    np.testing.assert_array_equal(fetched.data["y"].values, y)
    np.testing.assert_array_equal(fetched.data["x"].values, x)


def test_availability_is_one_head_per_year_of_the_release_and_latest_is_the_newest(server):
    for published in (2016, 2017, 2019):
        publish(server, "global2", "KEN", published)
    provider = provider_for(server)

    assert provider.available_periods(year(2012), year(2020)) == [
        year(2016),
        year(2017),
        year(2019),
    ]
    heads = [r.path for r in server.requests if r.method == "HEAD"]
    assert heads == [served_path("global2", "KEN", y) for y in range(2015, 2021)]  # in order
    assert all(r.method == "HEAD" for r in server.requests)
    assert provider.latest_available() == year(2019)
    newest_first = [r.path for r in server.requests][len(heads) :]
    assert newest_first == [served_path("global2", "KEN", y) for y in range(2030, 2020, -1)]
    count = len(server.requests)
    assert provider.available_periods(year(2015), year(2020)) == [
        year(2016),
        year(2017),
        year(2019),
    ]
    assert len(server.requests) == count  # cached per provider instance


def test_a_year_outside_the_release_or_not_published_is_a_clear_unavailable_error(server):
    publish(server, "global1", "KEN", 2020)
    provider = provider_for(server, params={"release": "global1"}, start="2019-01-01", end=None)
    with pytest.raises(
        SourceNotFoundError,
        match="pop_ken period 2021: WorldPop global1 covers 2000-2020; 2021 is not in it",
    ):
        provider.fetch(year(2021))
    assert server.requests == []
    missing = served_path("global1", "KEN", 2019)
    with pytest.raises(SourceNotFoundError, match=f"pop_ken period 2019: .*{missing}: not found"):
        provider.fetch(year(2019))
    assert provider.latest_available() == year(2020)


def test_429_and_503_are_retried_then_succeed(server):
    path = publish(server, "global2", "KEN", 2020)
    provider = provider_for(server)
    provider.describe()
    served = served_path("global2", "KEN", 2020)
    server.fail(served, 503, 429)
    fetched = provider.fetch(year(2020))
    assert [r.status for r in server.requests_for(served, "GET")][-3:] == [503, 429, 200]
    assert fetched.sources[0].sha256 == sha256(path)


def test_persistent_503_is_a_retryable_unavailable_error_naming_the_url(server):
    publish(server, "global2", "KEN", 2020)
    provider = provider_for(server)
    provider.describe()
    served = served_path("global2", "KEN", 2020)
    server.fail(served, 503, 429, 503, 503, 503)
    with pytest.raises(
        SourceUnavailableError,
        match=f"pop_ken period 2020: .*{served}: HTTP 503.* after 5 attempts",
    ) as raised:
        provider.fetch(year(2020))
    assert raised.value.retryable
    # describe's GET (a small file: whole), then the five failed attempts of the download
    assert [r.status for r in server.requests_for(served, "GET")] == [200, 503, 429, 503, 503, 503]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_file_is_a_provider_error_naming_the_url(server, damage):
    publish(server, "global2", "KEN", 2020)
    path = publish(server, "global2", "KEN", 2021)
    payload = path.read_bytes()
    path.write_bytes(
        payload[: len(payload) // 2] if damage == "truncated" else b"II*\0" + b"x" * 500
    )
    provider = provider_for(server)
    served = served_path("global2", "KEN", 2021)
    with pytest.raises(
        ProviderError,
        match=f"pop_ken period 2021: .*{served}: not a readable GeoTIFF \\(truncated or corrupt\\)",
    ):
        provider.fetch(year(2021))


def test_a_year_on_another_grid_is_a_grid_mismatch(server):
    publish(server, "global2", "KEN", 2020)
    publish(server, "global2", "KEN", 2022, cols=COLS + 1)
    provider = provider_for(server)
    with pytest.raises(
        ProviderError,
        match=r"pop_ken period 2022: .*: grid mismatch: the file has 51x40 cells .* but the grid "
        r"read from .*2020.* is 50x40 cells",
    ):
        provider.fetch(year(2022))


def test_describe_reads_only_the_header_of_a_large_file(server):
    path = publish(server, "global2", "KEN", 2020, rows=300, cols=400)
    provider = provider_for(server)
    grid = provider.describe().grid
    _, y, x = source_values(path)
    np.testing.assert_array_equal(grid.y, y)
    np.testing.assert_array_equal(grid.x, x)
    [read] = [r for r in server.requests if r.method == "GET"]
    assert read.range == (0, HEADER_BYTES - 1)
    assert path.stat().st_size > 7 * HEADER_BYTES


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"country": "KE"}}, "pop_ken: params.country: String should match pattern"),
        ({"params": {"country": "K3N"}}, "pop_ken: params.country: String should match pattern"),
        ({"params": {"release": "global3"}}, "pop_ken: params.release: Input should be"),
        (
            {"params": {"release": "global1", "model": "constrained"}},
            "pop_ken: params: .*model: global1 is served unconstrained only",
        ),
        ({"params": {"bbox": [37, 0, 35, 3]}}, "pop_ken: params.bbox: .*need west < east"),
        ({"params": {"mirror": "x"}}, "pop_ken: params.mirror: Extra inputs are not permitted"),
        ({"period": "monthly", "start": "2020-01-01", "end": None}, "pop_ken: period is 'monthly'"),
        (
            {"variables": [{"name": "t2m", "units": "degC"}]},
            "pop_ken: the worldpop provider delivers one variable",
        ),
        (
            {"params": {"release": "global1"}, "start": "2021-01-01"},
            "pop_ken: the dataset's years \\(2021-2030\\) lie outside WorldPop global1",
        ),
    ],
)
def test_bad_params_are_provider_errors_naming_the_dataset_and_field(change, message):
    others = {field: value for field, value in change.items() if field != "params"}
    fields = worldpop_spec("http://127.0.0.1:9", params=change.get("params"), **others)
    with pytest.raises(ProviderError, match=message):
        WorldPopProvider(DatasetSpec.model_validate(fields))


def test_the_template_is_a_valid_spec_that_builds_the_provider_offline(settings):
    raw = yaml.safe_load(TEMPLATE.read_text())
    spec = DatasetSpec.model_validate(raw)
    provider = WorldPopProvider(spec)  # no request: probing is lazy
    assert (provider.name, spec.provider) == ("worldpop", "worldpop")
    assert provider.params.url(2020) == (
        "https://data.worldpop.org/GIS/Population/Global_2015_2030/R2025A/2020/KEN/v1/100m/"
        "constrained/ken_pop_2020_CN_100m_R2025A_v1.tif"
    )
    (settings.user_spec_dir / TEMPLATE.name).write_text(TEMPLATE.read_text())
    catalog = load_catalog(settings)  # passes the variable vocabulary too
    assert catalog.errors == [] and catalog.get(spec.id) == spec


@pytest.fixture
def registered(register_providers):
    register_providers("ref_assets.providers.worldpop:WorldPopProvider")


def test_dagster_materializes_two_years_with_records_of_the_served_bytes(
    server, registered, write_spec, materialize
):
    paths = {key: publish(server, "global2", "KEN", key) for key in (2020, 2021)}
    write_spec("pop_ken", **worldpop_spec(server.url(""), params={"bbox": BBOX}))
    result = materialize("pop_ken", "2020...2021")
    assert result.success

    stored = ref_assets.open_dataset("pop_ken")
    for key, path in paths.items():
        values, y, x = values_in_bbox(path, BBOX)
        np.testing.assert_array_equal(stored["pop_total"].isel(time=key - 2015).values, values)
        np.testing.assert_array_equal(stored["y"].values, y)
        np.testing.assert_array_equal(stored["x"].values, x)
        [source] = read_provenance("pop_ken", str(key)).sources
        assert source.uri == server.url(served_path("global2", "KEN", key))
        assert (source.sha256, source.size) == (sha256(path), path.stat().st_size)
    assert stored["pop_total"].attrs["units"] == "people"
    present = ref_assets.dataset_status("pop_ken", end=year(2030).start).present
    assert [p.key for p in present] == ["2020", "2021"]


def test_a_truncated_year_fails_the_run_and_nothing_is_committed(
    server, registered, write_spec, materialize
):
    publish(server, "global2", "KEN", 2020)
    path = publish(server, "global2", "KEN", 2021)
    path.write_bytes(path.read_bytes()[:-2000])
    write_spec("pop_ken", **worldpop_spec(server.url("")))
    assert materialize("pop_ken", "2020").success

    result = materialize("pop_ken", "2021", raise_on_error=False)
    assert not result.success
    failure = step_failure(result)
    message = failure.step_failure_data.error.to_string()
    assert "pop_ken 2021" in message and "not a readable GeoTIFF (truncated or corrupt)" in message
    assert served_path("global2", "KEN", 2021) in message
    status = ref_assets.dataset_status("pop_ken", end=year(2030).start)
    assert [p.key for p in status.present] == ["2020"]
    assert "2021" in [p.key for p in status.missing]


def test_a_header_longer_than_the_probe_falls_back_to_the_whole_file(tmp_path):
    """A large striped GeoTIFF's strip offsets fill the first 64 KiB: GDAL opens the cut-off
    header without its georeferencing, which must not be taken for the grid."""
    from rasterio.transform import from_origin

    path = tmp_path / served_path("global2", "KEN", 2015).lstrip("/")
    path.parent.mkdir(parents=True)
    rows, cols = 12000, 40
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=rows,
        width=cols,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=from_origin(33.9, 5.0, 0.001, 0.001),
        nodata=-99999.0,
        compress="LZW",
        blockysize=1,
    ) as raster:
        raster.write(np.ones((rows, cols), "float32"), 1)
    with FileServer(tmp_path) as server:
        spec = DatasetSpec.model_validate(worldpop_spec(server.url("")))
        grid = WorldPopProvider(spec, http=HttpClient(sleep=lambda _: None)).describe().grid
    assert grid.shape == (rows, cols)
    assert grid.x[0] == pytest.approx(33.9005) and grid.y[0] == pytest.approx(4.9995)


def test_the_fingerprint_is_one_head_and_changes_when_a_year_is_replaced(server):
    path = publish(server, "global2", "KEN", 2016)
    provider = provider_for(server)
    fingerprint = provider.fingerprint(year(2016))
    assert fingerprint.size == path.stat().st_size and fingerprint.etag
    assert [r.method for r in server.requests] == ["HEAD"]
    assert provider.fingerprint(year(2017)) is None
    fetched = provider.fetch(year(2016))
    assert fetched.fingerprint.same_version(fingerprint)

    write_geotiff(path, "KEN", 2099)  # WorldPop corrects the year's file in place
    replaced = provider_for(server).fingerprint(year(2016))
    assert not replaced.same_version(fingerprint)

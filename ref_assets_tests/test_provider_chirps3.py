"""The chirps3 provider against a local server of CHIRPS-like COGs (quasi-global, 0.5 degree,
64x64 tiles): windowed range reads only, values against rasterio reading the local files,
availability probing, retries, corrupt files, and Dagster runs with their provenance."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests
import yaml
from rasterio.transform import from_origin
from rasterio.windows import Window

import ref_assets
from ref_assets.periods import Period, PeriodType
from ref_assets.providers.chirps3 import Chirps3Provider
from ref_assets.providers.http import HttpClient, SourceNotFoundError, SourceUnavailableError
from ref_assets.providers.protocol import ProviderError
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict, step_failure
from ref_assets_tests.http_server import FileServer

SOURCE_GRID = {"bounds": [-180.0, -60.0, 180.0, 60.0], "resolution": 0.5}  # 240 x 720 cells
BBOX = [30.2, -9.8, 37.9, -2.1]  # snaps outward to columns 420..435 and rows 124..139
WINDOW = Window(col_off=420, row_off=124, width=16, height=16)
TILE = 64
DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")


def final_path(day: datetime, flavour: str = "rnl") -> str:
    return f"/final/{flavour}/{day:%Y}/chirps-v3.0.{flavour}.{day:%Y.%m.%d}.tif"


def prelim_path(day: datetime) -> str:
    return f"/prelim/sat/{day:%Y}/chirps-v3.0.prelim.{day:%Y.%m.%d}.tif"


def write_cog(path: Path, seed: int, *, transform=None) -> None:
    """A CHIRPS-like day: gamma-distributed rain, -9999 over a 'sea' that cuts the window."""
    rng = np.random.default_rng(seed)
    values = rng.gamma(0.8, 6.0, (240, 720)).astype("float32")
    values[:, 427:431] = -9999.0
    values[130, 420:424] = -9999.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=720,
        height=240,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=transform or from_origin(-180.0, 60.0, 0.5, 0.5),
        nodata=-9999.0,
        blocksize=TILE,
        compress="deflate",
    ) as cog:
        cog.write(values, 1)


def make_spec(base_url: str, dataset_id: str = "chirps_test", **params) -> DatasetSpec:
    return DatasetSpec.model_validate(chirps_spec_dict(base_url, dataset_id, **params))


def chirps_spec_dict(
    base_url: str, dataset_id: str = "chirps_test", start: str = "2024-01-01", **params
) -> dict:
    return spec_dict(
        dataset_id,
        provider="chirps3",
        params={"bbox": BBOX, "base_url": base_url, "source_grid": SOURCE_GRID, **params},
        variables=[
            {
                "name": "precip",
                "units": "mm/day",
                "attributes": {"standard_name": "precipitation_flux"},
            }
        ],
        chunks={"y": 16, "x": 16},
        start=start,
    )


def quick_client() -> tuple[HttpClient, list[float]]:
    slept: list[float] = []
    return HttpClient(backoff=0.01, max_attempts=3, sleep=slept.append), slept


def local_window(path: Path, window: Window = WINDOW) -> np.ndarray:
    with rasterio.open(path) as source:
        values = source.read(1, window=window).astype("float32")
    values[values == -9999.0] = np.nan
    return values


def served_ranges(server: FileServer, path: str) -> list[tuple[int, int]]:
    """The byte ranges the server answered for ``path`` (206s), in offset order."""
    size = (server.root / path.lstrip("/")).stat().st_size
    return sorted(
        (start, min(end, size - 1))
        for (start, end) in (r.range for r in server.requests_for(path) if r.status == 206)
    )


def sha256_of_ranges(file: Path, ranges: list[tuple[int, int]]) -> tuple[str, int]:
    payload = file.read_bytes()
    chunks = b"".join(payload[start : end + 1] for start, end in ranges)
    return hashlib.sha256(chunks).hexdigest(), len(chunks)


def window_tiles(file: Path, window: Window = WINDOW) -> list[tuple[int, int]]:
    """Byte ranges (inclusive) of the full-resolution tiles the window touches, from the TIFF."""
    tiles = []
    with rasterio.open(file) as source:
        for row in range(window.row_off // TILE, (window.row_off + window.height - 1) // TILE + 1):
            for col in range(
                window.col_off // TILE, (window.col_off + window.width - 1) // TILE + 1
            ):
                offset = int(source.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
                size = int(source.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
                tiles.append((offset, offset + size - 1))
    return tiles


@pytest.fixture
def archive(tmp_path):
    """Three final rnl days served over HTTP; ``archive.files[key]`` is a day's path."""
    root = tmp_path / "chc"
    files = {key: final_path(datetime.strptime(key, "%Y-%m-%d")) for key in DAYS}
    for seed, key in enumerate(DAYS):
        write_cog(root / files[key].lstrip("/"), seed)
    with FileServer(root) as server:
        server.files = files
        yield server


def test_the_template_builds_the_provider_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a provider must not reach the network when built or described")

    monkeypatch.setattr(requests.Session, "request", no_network)
    template = Path(ref_assets.__file__).parent / "data" / "templates" / "chirps3.yaml"
    spec = DatasetSpec.model_validate(yaml.safe_load(template.read_text()))
    provider = Chirps3Provider(spec)
    grid = provider.describe().grid
    assert grid.shape == (540, 480)  # 27 x 24 degrees at 0.05
    assert (grid.x[0], grid.y[0]) == pytest.approx((28.025, 14.975))
    assert provider.url(Period.from_key(PeriodType.DAILY, "2024-03-05")) == (
        "https://data.chc.ucsb.edu/products/CHIRPS/v3.0/daily/final/rnl/2024/"
        "chirps-v3.0.rnl.2024.03.05.tif"
    )
    prelim = make_spec(spec.params["base_url"], stage="prelim")
    assert Chirps3Provider(prelim).url(Period.from_key(PeriodType.DAILY, "2025-06-30")) == (
        "https://data.chc.ucsb.edu/products/CHIRPS/v3.0/daily/prelim/sat/2025/"
        "chirps-v3.0.prelim.2025.06.30.tif"
    )


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"stage": "daily"}, "params.stage"),
        ({"stage": "prelim", "flavour": "rnl"}, "only as flavour 'sat'"),
        ({"bbox": [100.0, 70.0, 110.0, 80.0]}, "params.bbox .* holds no cell"),
        ({"bbox": [1.0, 2.0]}, "params.bbox"),
        ({"cache": True}, "params.cache"),
    ],
)
def test_bad_params_are_named(params, problem):
    with pytest.raises(ProviderError, match=rf"chirps_test: .*{problem}"):
        Chirps3Provider(make_spec("http://unused", **params))


def test_fetch_reads_only_the_window_tiles_and_matches_rasterio(archive):
    client, _ = quick_client()
    provider = Chirps3Provider(make_spec(archive.url("/")), client)
    fetched = provider.fetch(Period.from_key(PeriodType.DAILY, "2024-01-02"))
    path = archive.files["2024-01-02"]
    file = archive.root / path.lstrip("/")

    # Values, NaNs, units and coordinates against rasterio reading the local file.
    precip = fetched.data["precip"]
    expected = local_window(file)
    np.testing.assert_array_equal(precip.values, expected)
    assert precip.dtype == np.float32 and precip.attrs["units"] == "mm/day"
    assert np.isnan(precip.values).sum() == 16 * 4 + 4  # the sea: 4 columns and 4 cells
    with rasterio.open(file) as source:
        x, _ = source.xy(WINDOW.row_off, range(420, 436))
        _, y = source.xy(range(124, 140), WINDOW.col_off)
    np.testing.assert_allclose(precip["x"].values, x)
    np.testing.assert_allclose(precip["y"].values, y)
    assert np.array_equal(precip["x"].values, provider.describe().grid.x)
    assert np.array_equal(precip["y"].values, provider.describe().grid.y)

    # Only one HEAD and ranged GETs of this one file: no sidecar or listing probes.
    assert {(r.method, r.path) for r in archive.requests} == {("HEAD", path), ("GET", path)}
    assert len(archive.requests_for(path, "HEAD")) == 1
    ranges = served_ranges(archive, path)
    assert all(a[1] < b[0] for a, b in pairwise(ranges))  # disjoint
    requested = sum(end - start + 1 for start, end in ranges)
    size = file.stat().st_size
    assert requested < 0.15 * size
    tiles = window_tiles(file)
    assert len(tiles) == 2
    for start, end in tiles:  # every tile of the window lies inside a requested range
        assert any(a <= start and end <= b for a, b in ranges)
    # The source item is the checksum of exactly the bytes served, in offset order.
    [source] = fetched.sources
    sha256, length = sha256_of_ranges(file, ranges)
    assert (source.uri, source.sha256, source.size) == (archive.url(path), sha256, length)
    assert source.etag == f'"{hashlib.md5(file.read_bytes()).hexdigest()}"'
    assert source.last_modified is not None


def test_latest_available_probes_back_to_the_newest_published_day(tmp_path):
    yesterday = datetime.now(UTC).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    yesterday -= timedelta(days=1)
    root = tmp_path / "chc"
    payload = b"published"  # availability only HEADs: any bytes will do
    final_days = [yesterday - timedelta(days=back) for back in range(40, 50)]  # a monthly lag
    prelim_days = [yesterday - timedelta(days=back) for back in range(4, 30)]  # a pentad lag
    for day in final_days:
        (root / final_path(day).lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / final_path(day).lstrip("/")).write_bytes(payload)
    for day in prelim_days:
        (root / prelim_path(day).lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / prelim_path(day).lstrip("/")).write_bytes(payload)
    (root / final_path(yesterday - timedelta(days=45)).lstrip("/")).unlink()  # a gap
    start = f"{yesterday - timedelta(days=100):%Y-%m-%d}"
    with FileServer(root) as server:
        client, _ = quick_client()
        final = Chirps3Provider(make_spec(server.url("/"), start=start), client)
        newest = Period(PeriodType.DAILY, yesterday - timedelta(days=40))
        assert final.latest_available() == newest
        heads = [r for r in server.requests if r.method == "HEAD"]
        assert len(heads) == 41 and not [r for r in server.requests if r.method == "GET"]
        assert final.latest_available() == newest and len(server.requests) == 41  # cached
        days = [Period(PeriodType.DAILY, yesterday - timedelta(days=b)) for b in range(47, 37, -1)]
        # Up to the newest day, each confirmed by a HEAD: the gap is left out, later days too.
        assert final.available_periods(days[0], days[-1]) == days[:2] + days[3:8]
        assert len(server.requests) == 41 + 7

        prelim = Chirps3Provider(make_spec(server.url("/"), start=start, stage="prelim"), client)
        assert prelim.latest_available() == Period(PeriodType.DAILY, yesterday - timedelta(days=4))

        recent = f"{yesterday - timedelta(days=2):%Y-%m-%d}"  # starts after the newest final day
        assert (
            Chirps3Provider(make_spec(server.url("/"), start=recent), client).latest_available()
            is None
        )
        empty = Chirps3Provider(make_spec(server.url("/missing/"), start=start), client)
        with pytest.raises(ProviderError, match=r"chirps_test: no CHIRPS v3 final file .* 62 days"):
            empty.latest_available()


def test_rate_limits_and_outages_are_retried_then_fail_clearly(archive):
    client, slept = quick_client()
    provider = Chirps3Provider(make_spec(archive.url("/")), client)
    path = archive.files["2024-01-01"]
    archive.fail(path, 503, 429)  # the HEAD, then its retry
    fetched = provider.fetch(Period.from_key(PeriodType.DAILY, "2024-01-01"))
    np.testing.assert_array_equal(
        fetched.data["precip"].values, local_window(archive.root / path.lstrip("/"))
    )
    assert len(slept) == 2 and max(slept) < 0.05

    archive.fail(path, 503, 503, 503)
    with pytest.raises(SourceUnavailableError) as raised:
        provider.fetch(Period.from_key(PeriodType.DAILY, "2024-01-01"))
    message = str(raised.value)
    assert "chirps_test period 2024-01-01" in message and archive.url(path) in message
    assert "HTTP 503" in message and raised.value.retryable

    # A range GET failing for good, after the HEAD succeeded, is the same retryable error.
    class FailingAfterHead(HttpClient):
        def head(self, url):
            answer = super().head(url)
            archive.fail(path, 503, 503, 503)
            return answer

    failing = Chirps3Provider(
        make_spec(archive.url("/")),
        FailingAfterHead(backoff=0.01, max_attempts=3, sleep=slept.append),
    )
    with pytest.raises(SourceUnavailableError, match=r"chirps_test period 2024-01-01: .*HTTP 503"):
        failing.fetch(Period.from_key(PeriodType.DAILY, "2024-01-01"))
    assert [r.status for r in archive.requests_for(path)][-3:] == [503, 503, 503]

    with pytest.raises(SourceNotFoundError, match="chirps_test period 2024-01-09: not published"):
        provider.fetch(Period.from_key(PeriodType.DAILY, "2024-01-09"))


def _truncate_in_window(file: Path) -> None:
    """Cut the file inside the window's first tile (as an interrupted upload would)."""
    start, _ = min(window_tiles(file))
    file.write_bytes(file.read_bytes()[: start + 100])


def _garble_window(file: Path) -> None:
    """Overwrite the window's tiles with bytes that are not deflate streams."""
    payload = bytearray(file.read_bytes())
    for start, end in window_tiles(file):
        payload[start : end + 1] = b"\xff" * (end - start + 1)
    file.write_bytes(bytes(payload))


def _garble_header(file: Path) -> None:
    file.write_bytes(b"<html>Service maintenance</html>" + file.read_bytes()[32:])


@pytest.mark.parametrize("damage", [_truncate_in_window, _garble_window, _garble_header])
def test_a_truncated_or_corrupt_file_is_a_clear_provider_error(archive, damage):
    client, _ = quick_client()
    provider = Chirps3Provider(make_spec(archive.url("/")), client)
    path = archive.files["2024-01-03"]
    damage(archive.root / path.lstrip("/"))
    with pytest.raises(ProviderError, match=r"truncated") as raised:
        provider.fetch(Period.from_key(PeriodType.DAILY, "2024-01-03"))
    assert not isinstance(raised.value, SourceUnavailableError)  # retrying would not help
    assert f"chirps_test period 2024-01-03: {archive.url(path)}" in str(raised.value)


def test_a_file_off_the_product_grid_is_refused(archive):
    client, _ = quick_client()
    provider = Chirps3Provider(make_spec(archive.url("/")), client)
    path = archive.files["2024-01-02"]
    write_cog(archive.root / path.lstrip("/"), 9, transform=from_origin(-180.0, 50.0, 0.5, 0.5))
    with pytest.raises(ProviderError, match=r"not on the CHIRPS v3 grid.*transform") as raised:
        provider.fetch(Period.from_key(PeriodType.DAILY, "2024-01-02"))
    assert f"chirps_test period 2024-01-02: {archive.url(path)}" in str(raised.value)


@pytest.fixture
def registered(register_providers):
    register_providers("ref_assets.providers.chirps3:Chirps3Provider")


def write_chirps_spec(settings, base_url: str) -> None:
    spec = chirps_spec_dict(base_url)
    (settings.user_spec_dir / "chirps_test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def test_dagster_materializes_days_with_provenance_of_the_bytes_served(
    settings, registered, archive, materialize
):
    write_chirps_spec(settings, archive.url("/"))
    assert materialize("chirps_test", "2024-01-01...2024-01-03").success

    stored = ref_assets.open_dataset("chirps_test", settings=settings)
    for key in DAYS:
        file = archive.root / archive.files[key].lstrip("/")
        np.testing.assert_array_equal(stored["precip"].sel(time=key).values, local_window(file))
        record = ref_assets.read_provenance("chirps_test", key, settings=settings)
        [source] = record.sources
        sha256, length = sha256_of_ranges(file, served_ranges(archive, archive.files[key]))
        assert (source.uri, source.sha256, source.size) == (
            archive.url(archive.files[key]),
            sha256,
            length,
        )
        assert length < 0.15 * file.stat().st_size
        assert (record.provider, record.period) == ("chirps3", key)
    with rasterio.open(archive.root / archive.files["2024-01-01"].lstrip("/")) as source:
        x, y = source.xy(WINDOW.row_off, WINDOW.col_off)
    assert (float(stored.x[0]), float(stored.y[0])) == pytest.approx((x, y))
    assert stored["precip"].attrs["units"] == "mm/day"


def test_a_corrupt_day_commits_nothing_and_the_others_are_stored(
    settings, registered, archive, materialize
):
    write_chirps_spec(settings, archive.url("/"))
    _garble_window(archive.root / archive.files["2024-01-02"].lstrip("/"))
    result = materialize("chirps_test", "2024-01-01...2024-01-03", raise_on_error=False)
    assert not result.success
    failure = step_failure(result)
    failed = failure.step_failure_data.user_failure_data.metadata["failed_periods"].value
    assert list(failed) == ["2024-01-02"]
    assert failed["2024-01-02"].startswith("CogReadError: chirps_test period 2024-01-02: http://")
    assert "truncated or corrupt" in failed["2024-01-02"]
    end = datetime(2024, 1, 3)
    status = ref_assets.dataset_status("chirps_test", end=end, settings=settings)
    assert [p.key for p in status.missing] == ["2024-01-02"]
    assert [p.key for p in status.present] == ["2024-01-01", "2024-01-03"]


@pytest.fixture
def staged_archive(tmp_path):
    """Prelim files for every day of `DAYS`, a final one for the first day only."""
    root = tmp_path / "chc"
    for seed, key in enumerate(DAYS):
        day = datetime.strptime(key, "%Y-%m-%d")
        write_cog(root / prelim_path(day).lstrip("/"), 10 + seed)
    write_cog(root / final_path(datetime(2024, 1, 1)).lstrip("/"), 0)
    with FileServer(root) as server:
        yield server


def test_stage_auto_takes_prelim_days_until_their_final_file_and_fingerprints_say_which(
    staged_archive,
):
    spec = make_spec(staged_archive.url("/"), stage="auto")
    spec = spec.model_copy(update={"end": datetime(2024, 1, 3)})
    provider = Chirps3Provider(spec, quick_client()[0])
    days = [Period.from_key(PeriodType.DAILY, key) for key in DAYS]
    assert provider.latest_available() == days[-1]
    assert provider.available_periods(days[0], days[-1]) == days

    final = provider.fingerprint(days[0])
    prelim = provider.fingerprint(days[1])
    assert (final.stage, final.preliminary) == ("final", False)
    assert (prelim.stage, prelim.preliminary) == ("prelim", True)
    file = staged_archive.root / prelim_path(datetime(2024, 1, 2)).lstrip("/")
    assert prelim.size == file.stat().st_size and prelim.etag and prelim.last_modified

    fetched = provider.fetch(days[1])
    assert fetched.fingerprint.same_version(prelim)
    np.testing.assert_array_equal(fetched.data["precip"].values, local_window(file))
    # The fingerprint costs HEADs only, never a byte of the file.
    heads = {r.path for r in staged_archive.requests if r.method == "HEAD"}
    assert final_path(datetime(2024, 1, 3)) in heads
    assert not [r for r in staged_archive.requests if r.method == "GET" and "01.03" in r.path]
    assert Chirps3Provider(spec, quick_client()[0]).fetch(days[0]).fingerprint.stage == "final"

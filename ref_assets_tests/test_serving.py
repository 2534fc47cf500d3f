"""``ref-assets serve``: the stores over HTTP, read-only, started as a real subprocess on a free
loopback port. Read back with xarray over HTTP (Zarr v3) and queried with plain HTTP clients
(OGC EDR position and area); from main or from a release tag; bound to loopback unless told."""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from ref_assets.batch import fetch_batch
from ref_assets.cli import main
from ref_assets.config import load_settings
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.reader import open_dataset
from ref_assets.serving import ServingError, check_host
from ref_assets.specs import DatasetSpec
from ref_assets.store.releases import tag
from ref_assets.store.repository import DatasetStore
from ref_assets.store.writer import CommitPolicy, PeriodWriter
from ref_assets_tests.conftest import spec_dict
from ref_assets_tests.serve_process import ServeProcess

DATASET = "test_t2m"
RELEASED = ["2024-01-01", "2024-01-02", "2024-01-04"]  # 2024-01-03 never written: NaN chunks
LATER = ["2024-01-05", "2024-01-06"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A configuration whose store holds the RELEASED days tagged v1 and, on main, LATER too;
    its settings and the environment a server process needs."""
    configuration = tmp_path_factory.mktemp("serve") / "ref"
    (configuration / "datasets").mkdir(parents=True)
    fields = spec_dict(DATASET)
    (configuration / "datasets" / f"{DATASET}.yaml").write_text(yaml.safe_dump(fields))
    env = {k: v for k, v in os.environ.items() if k != "REF_STORAGE_ROOT"}
    env["REF_CONFIGURATION"] = str(configuration)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REF_CONFIGURATION", str(configuration))
        patch.delenv("REF_STORAGE_ROOT", raising=False)
        settings = load_settings()
    spec = DatasetSpec.model_validate(fields)
    store = DatasetStore(settings.storage_root, DATASET)
    provider = SyntheticProvider(spec)
    writer = PeriodWriter(store, run_id="test", policy=CommitPolicy(every=10))
    for key in RELEASED:
        writer.add(fetch_batch(spec, provider, spec.period_for_key(key)))
    writer.flush()
    tag(store, "v1")
    for key in LATER:
        writer.add(fetch_batch(spec, provider, spec.period_for_key(key)))
    writer.flush()
    return settings, env, configuration


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    _, env, _ = served
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with ServeProcess.started(env, log) as process:
        yield process


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_xarray_reads_the_store_back_over_http(served, server):
    settings, _, _ = served
    remote = xr.open_zarr(server.url(f"/datasets/{DATASET}/zarr"), zarr_format=3)
    local = open_dataset(DATASET, settings=settings)
    assert remote.sizes == local.sizes == {"time": 6, "y": 8, "x": 12}
    # Chunked as stored: a request is one period's chunk.
    assert remote.t2m.encoding["chunks"] == (1, 4, 6)
    np.testing.assert_array_equal(remote.time.values, local.time.values)
    np.testing.assert_array_equal(remote.y.values, local.y.values)
    # Every value, the never-written day (all NaN: chunks zarr would skip) included.
    np.testing.assert_array_equal(remote.t2m.values, local.t2m.values)
    assert np.isnan(remote.t2m.sel(time="2024-01-03").values).all()
    assert np.isfinite(remote.t2m.sel(time="2024-01-06").values).any()
    assert remote.t2m.attrs["units"] == "degC"
    assert "GEOGCRS" in remote.spatial_ref.attrs["crs_wkt"]
    # Outside the grid of chunks, or a variable the dataset lacks: not found.
    assert get(server.url(f"/datasets/{DATASET}/zarr/t2m/c/99/0/0"))[0] == 404
    assert get(server.url(f"/datasets/{DATASET}/zarr/nothing/zarr.json"))[0] == 404
    assert get(server.url("/datasets/no_such_dataset/zarr/zarr.json"))[0] == 404


def test_edr_position_and_area_answer_the_stored_values(served, server):
    settings, _, _ = served
    local = open_dataset(DATASET, settings=settings).t2m
    status, body = get(
        server.url(
            f"/datasets/{DATASET}/edr/position?coords=POINT(1.25%2041.25)&parameter-name=t2m&f=csv"
        )
    )
    assert status == 200, body
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [row["time"][:10] for row in rows] == [str(t)[:10] for t in local.time.values]
    expected = local.sel(x=1.25, y=41.25).values
    got = np.array([float(row["t2m"]) if row["t2m"] else np.nan for row in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-6)

    status, body = get(
        server.url(
            f"/datasets/{DATASET}/edr/area?coords=POLYGON((1%2041,3%2041,3%2043,1%2043,1%2041))"
            "&datetime=2024-01-02&parameter-name=t2m&f=csv"
        )
    )
    assert status == 200, body
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    day = local.sel(time="2024-01-02")
    assert len(rows) == 16  # the 4 x 4 cell centres inside the square
    for row in rows:
        stored = day.sel(x=float(row["x"]), y=float(row["y"])).item()
        if row["t2m"]:
            assert float(row["t2m"]) == pytest.approx(stored, rel=1e-6)
        else:
            assert np.isnan(stored)


def test_an_edr_position_off_the_grid_is_refused_saying_why(served):
    """xpublish-edr alone answers with the nearest edge cell's series, however far off."""
    from fastapi.testclient import TestClient

    from ref_assets.serving import served_datasets, serving_app

    client = TestClient(serving_app(served_datasets(served[0], [DATASET])).app)
    position = f"/datasets/{DATASET}/edr/position?parameter-name=t2m&f=csv&coords="
    answer = client.get(position + "POINT(30 10)")
    assert answer.status_code == 404
    assert answer.json()["detail"] == (
        f"{DATASET}: the point 30.0,10.0 lies off the grid (cell centres longitude 0.25..5.75, "
        "latitude 40.25..43.75); give points inside it"
    )
    assert client.get(position + "MULTIPOINT((1.25 41.25),(1.25 50))").status_code == 404
    assert client.get(position + "POINT(1.25 41.25)").status_code == 200
    assert client.get(position + "POINT(5.9 41.25)").status_code == 200  # within half a cell


def test_map_tiles_show_the_stored_day(served, server):
    """An OGC API Tiles PNG over the grid (x 0..6, y 40..44 degrees) is drawn where the day has
    values; a tile over the other hemisphere is empty."""
    from PIL import Image

    query = (
        "?variables=t2m&style=raster/viridis&width=256&height=256&f=image/png&time=2024-01-02"
        "&colorscalerange=-10,10"
    )
    status, body = get(server.url(f"/datasets/{DATASET}/tiles/WebMercatorQuad/5/11/16{query}"))
    assert status == 200, body
    alpha = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))[..., 3]
    assert alpha.shape == (256, 256)
    # The tile spans x 0..11.25 and y 40.98..48.92: the grid's cells are in its lower left.
    assert alpha[200:, :40].max() == 255 and alpha[:100, :].max() == 0
    status, body = get(server.url(f"/datasets/{DATASET}/tiles/WebMercatorQuad/5/20/5{query}"))
    assert status == 200
    assert np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))[..., 3].max() == 0


def test_only_reads_are_served(server):
    for method in ("PUT", "POST", "DELETE"):
        request = urllib.request.Request(
            server.url(f"/datasets/{DATASET}/zarr/t2m/c/0/0/0"), data=b"x", method=method
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 405


def test_a_tag_is_served_as_released_while_main_grew(served, tmp_path):
    settings, env, _ = served
    with ServeProcess.started(env, tmp_path / "serve.log", ["--tag", "v1", "--json"]) as server:
        document, _ = json.JSONDecoder().raw_decode(server.output())
        assert (document["url"], document["datasets"], document["tag"]) == (
            server.url("").rstrip("/"),
            [DATASET],
            "v1",
        )
        # The packaged demo has no store here: left out, saying why.
        assert "no store at" in document["skipped"]["demo_air_temperature"]
        remote = xr.open_zarr(server.url(f"/datasets/{DATASET}/zarr"), zarr_format=3)
        released = open_dataset(DATASET, tag="v1", settings=settings)
        assert remote.sizes["time"] == 4  # up to 2024-01-04; main holds two more days
        np.testing.assert_array_equal(remote.t2m.values, released.t2m.values)


def test_the_server_refuses_to_listen_beyond_loopback_unless_told(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    with pytest.raises(ServingError, match=r"192\.0\.2\.7"):
        check_host("192.0.2.7", allow_remote=False)
    with pytest.raises(ServingError):
        check_host("example.org", allow_remote=False)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_host(host, allow_remote=False)
    check_host("0.0.0.0", allow_remote=True)


def test_a_server_with_nothing_to_serve_says_why(tmp_path, monkeypatch, capsys):
    configuration = tmp_path / "ref"
    (configuration / "datasets").mkdir(parents=True)
    (configuration / "datasets" / "empty_one.yaml").write_text(
        yaml.safe_dump(spec_dict("empty_one"))
    )
    monkeypatch.setenv("REF_CONFIGURATION", str(configuration))
    monkeypatch.delenv("REF_STORAGE_ROOT", raising=False)
    assert main(["serve", "empty_one", "--port", "1"]) == 2
    error = capsys.readouterr().err
    assert "no store to serve" in error and "empty_one: no store at" in error
    assert main(["serve", "no_such_dataset"]) == 2
    assert "no dataset 'no_such_dataset'" in capsys.readouterr().err


def test_the_log_names_what_is_served(server):
    assert f"serving {DATASET} (main) on {server.url('')}" in server.output()
    assert Path(server.log).exists()


def test_stored_chunks_decode_as_xpublish_zarr_encodes_them(served):
    """The server sends stored chunks as they are; they decode to the values of xpublish-zarr's
    own encoding of the same chunks (what an app without stores sends)."""
    from fastapi.testclient import TestClient
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    from ref_assets.serving import served_datasets, serving_app

    datasets = served_datasets(served[0], [DATASET])
    passing_app, encoding_app = serving_app(datasets), serving_app(datasets)
    assert passing_app.plugins["zarr"]._stored[DATASET][1] >= {"t2m", "time", "y", "x"}
    encoding_app.plugins["zarr"]._stored.clear()
    passing, encoding = TestClient(passing_app.app), TestClient(encoding_app.app)
    prefix = f"/datasets/{DATASET}/zarr"
    metadata = passing.get(f"{prefix}/t2m/zarr.json").content
    assert metadata == encoding.get(f"{prefix}/t2m/zarr.json").content

    def decoded(key: str, payload: bytes, index: int) -> np.ndarray:
        scratch = MemoryStore()
        for name, content in (("t2m/zarr.json", metadata), (key, payload)):
            sync(scratch.set(name, default_buffer_prototype().buffer.from_bytes(content)))
        return zarr.open_array(scratch, path="t2m", mode="r")[index, 4:8, 6:12]

    for index in range(6):
        key = f"t2m/c/{index}/1/1"
        stored, encoded = passing.get(f"{prefix}/{key}"), encoding.get(f"{prefix}/{key}")
        assert encoded.status_code == 200
        if index == 2:  # 2024-01-03, never written: not stored; encoded, it is all NaN
            assert stored.status_code == 404
            assert np.isnan(decoded(key, encoded.content, index)).all()
            continue
        assert stored.status_code == 200
        np.testing.assert_array_equal(
            decoded(key, stored.content, index), decoded(key, encoded.content, index)
        )


def test_a_store_on_s3_is_served(s3_settings, write_spec, tmp_path):
    fields = write_spec()
    spec = DatasetSpec.model_validate(fields)
    store = DatasetStore(s3_settings.storage_root, spec.id)
    writer = PeriodWriter(store, run_id="test", policy=CommitPolicy(every=10))
    provider = SyntheticProvider(spec)
    for key in ("2024-01-01", "2024-01-03"):
        writer.add(fetch_batch(spec, provider, spec.period_for_key(key)))
    writer.flush()
    with ServeProcess.started(os.environ, tmp_path / "serve.log", [spec.id]) as server:
        remote = xr.open_zarr(server.url(f"/datasets/{spec.id}/zarr"), zarr_format=3)
        local = open_dataset(spec.id, settings=s3_settings)
        np.testing.assert_array_equal(remote.t2m.values, local.t2m.values)
    assert "AWS_SECRET_ACCESS_KEY" not in server.output()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in server.output()

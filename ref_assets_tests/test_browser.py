"""The Dagster UI as a person sees it: the real webserver over an instance holding a few
materialized partitions, driven by Debian's headless Chromium through Playwright.

Playwright is used with the system browser (``/usr/bin/chromium``); its own browser download
(``playwright install``) is never needed. ``./dev test`` installs Chromium when it is missing and
sets ``REF_BROWSER_TEST=required``, so there a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from ref_assets.definitions import build_definitions
from ref_assets.defs.assets import range_run_tags
from ref_assets.defs.instance_init import init_instance
from ref_assets_tests.processes import stop_process_group

CHROMIUM = Path("/usr/bin/chromium")
DATASET = "browser_t2m"
# A guard against a hung server, not a timing check: loading the code location takes a few
# seconds, and far longer on a busy machine.
WEBSERVER_START_SECONDS = 240
# The UI fills the page in as its queries answer (the asset's definition arrives after its
# events): how long to wait for an element before failing, also a guard only.
UI_TIMEOUT_MS = 60_000


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = (
        f"the browser test needs Debian's Chromium at {CHROMIUM}: install it with "
        "`apt-get install -y chromium` (./dev test does this itself)"
    )
    if os.environ.get("REF_BROWSER_TEST") == "required":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    init_instance(home)
    return home


@pytest.fixture
def browser_dataset(settings, write_spec) -> list[str]:
    """A daily dataset starting a few days ago, and three of its partitions: Dagster's UI pages
    partition keys from the newest, so these are among those it plots."""
    require_chromium()  # before the costly set-up
    today = datetime.now(UTC).date()
    write_spec(DATASET, start=str(today - timedelta(days=6)))
    return [str(today - timedelta(days=days)) for days in (5, 4, 3)]


def materialize_range(keys: list[str]) -> None:
    """Materialize ``keys`` of the dataset in one range run, into ``DAGSTER_HOME``'s instance."""
    job = build_definitions().resolve_implicit_job_def_def_for_assets([dg.AssetKey(DATASET)])
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            asset_selection=[dg.AssetKey(DATASET)],
            instance=instance,
            tags=range_run_tags(keys[0], keys[-1]),
        )
    assert result.success


@contextlib.contextmanager
def running_webserver(
    dagster_home: Path, tmp_path: Path, meanwhile: Callable[[], None]
) -> Iterator[str]:
    """``dagster-webserver`` on a free loopback port over ``dagster_home``, ``meanwhile`` run
    while the server loads the code location; its URL once it answers; stopped by pid."""
    port = free_port()
    log = (tmp_path / "webserver.log").open("wb")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dagster-webserver")),
            *("-h", "127.0.0.1", "-p", str(port), "-m", "ref_assets.definitions"),
        ],
        cwd=tmp_path,
        env={**os.environ, "DAGSTER_HOME": str(dagster_home)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        meanwhile()
        deadline = time.monotonic() + WEBSERVER_START_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(
                        "dagster-webserver did not answer: "
                        + (tmp_path / "webserver.log").read_text()[-3000:]
                    )
                time.sleep(0.5)
        yield url
    finally:
        stop_process_group(server, grace=15)
        log.close()


@pytest.fixture
def webserver(browser_dataset: list[str], dagster_home: Path, tmp_path: Path):
    """The webserver, once the dataset's partitions are materialized."""
    with running_webserver(
        dagster_home, tmp_path, lambda: materialize_range(browser_dataset)
    ) as url:
        yield url


@contextlib.contextmanager
def chromium_page() -> Iterator:
    """A page of headless Chromium, Dagster's first-visit dialog dismissed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            # A fresh browser profile on localhost is greeted by Dagster's community dialog,
            # which covers the page; its dismissal is kept in local storage (CommunityNux.tsx).
            page.add_init_script("localStorage.setItem('communityNux', JSON.stringify('1'))")
            yield page
        finally:
            browser.close()


def test_the_asset_page_shows_the_map_preview_and_plotted_statistics(webserver, tmp_path):
    from playwright.sync_api import expect

    with chromium_page() as page:
        page.goto(f"{webserver}/assets/{DATASET}?view=overview")

        # The newest partition's map preview, drawn in place (markdown under 1,000 chars).
        preview = page.locator('img[src^="data:image/png;base64,"]').first
        expect(preview).to_be_visible(timeout=UI_TIMEOUT_MS)
        assert preview.evaluate("image => image.complete && image.naturalWidth") > 0
        assert preview.get_attribute("alt") == "t2m, RdYlBu_r -40 to 45"
        # The dataset-level definition metadata beside it, not hidden by the partition's.
        expect(page.get_by_text("dataset/provider", exact=True).first).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

        # The statistics, plotted per partition.
        page.get_by_role("button", name="Plots").click()
        for label in ("t2m/mean", "t2m/min", "t2m/max", "t2m/nan_fraction"):
            expect(page.get_by_text(label, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(page.locator("canvas").first).to_be_visible(timeout=UI_TIMEOUT_MS)
        assert page.locator("canvas").count() >= 4
        page.screenshot(path=str(tmp_path / "plots.png"), full_page=True)


def test_an_extraction_launched_from_the_launchpad_is_staged(
    browser_dataset, dagster_home, tmp_path, settings
):
    """The job `extract` launched from the launchpad with its config (as a person would: the
    launchpad's own link with the config, then "Launch Run"); the run succeeds, its output
    names the staged file, which is there with its record."""
    from playwright.sync_api import expect

    # Runs launched from the UI start at once, in a process of their own, instead of waiting
    # in the queue for a daemon (what `./dev ui` runs beside the webserver).
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n  module: dagster.core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
    )
    config = (
        "ops:\n  extract_subset:\n    config:\n"
        f"      dataset: {DATASET}\n      points: [[1.1, 41.6], [4.2, 43.1]]\n"
        "      format: csv\n"
    )
    with (
        running_webserver(
            dagster_home, tmp_path, lambda: materialize_range(browser_dataset)
        ) as url,
        chromium_page() as page,
    ):
        launchpad = "/locations/__repository__@ref_assets.definitions/jobs/extract/playground"
        page.goto(f"{url}{launchpad}/setup?{urllib.parse.urlencode({'config': config})}")
        launch = page.get_by_role("button", name="Launch Run")
        expect(launch).to_be_enabled(timeout=UI_TIMEOUT_MS)
        launch.click()
        page.wait_for_url("**/runs/**", timeout=UI_TIMEOUT_MS)
        staging = settings.extraction_settings.staging
        expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=240_000)
        page.screenshot(path=str(tmp_path / "extraction-run.png"), full_page=True)
        [record_file] = (Path(staging) / DATASET).glob("*.json")
        record = json.loads(record_file.read_text())
        assert record["request"]["points"] == [[1.1, 41.6], [4.2, 43.1]]
        staged = Path(record["output"])
        assert staged.suffix == ".csv" and staged.exists()
        assert len(staged.read_text().splitlines()) == 1 + 2 * len(browser_dataset)
        # The run's page names the staged file (the output's metadata).
        expect(page.get_by_text(staged.name).first).to_be_visible(timeout=UI_TIMEOUT_MS)

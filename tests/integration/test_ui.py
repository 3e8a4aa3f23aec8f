"""Drive the Dagster UI in a real headless Chromium (Playwright) against `dagster dev`."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from cartridge_dagster.demo.seed import DemoSizes
from tests.support.dagster_dev import dagster_dev
from tests.support.demo_env import seeded_demo_config
from tests.support.services import REPO

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("CARTRIDGE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"

LATEST_RUNS = """
{ runsOrError(limit: 20) { ... on Runs { results { runId status jobName } } } }
"""


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/ensure-browser.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture
def demo_config(tmp_path: Path, pg_url: str) -> Path:
    """Seeded before Playwright starts its own event loop (fixture order)."""
    return seeded_demo_config(tmp_path, pg_url, sizes=DemoSizes.scaled(0.01))


def test_materialize_from_the_asset_graph(demo_config: Path, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = demo_config
    ARTIFACTS.mkdir(exist_ok=True)
    with dagster_dev(config, tmp_path / "home") as dev:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{dev.url}/locations/cartridge/asset-groups/shop/lineage")
        skip = page.get_by_role("button", name="Skip")
        # Dagster's community pop-up on first visit (not always shown).
        with contextlib.suppress(PlaywrightTimeout):
            skip.click(timeout=15_000)
        page.get_by_text("catalog", exact=True).first.wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "ui-asset-graph-before.png"))
        page.get_by_role("button", name="Materialize all").click()
        # A launch confirmation may appear for multi-asset selections.
        deadline = time.monotonic() + 30
        run_id = None
        while time.monotonic() < deadline and run_id is None:
            runs = dev.graphql(LATEST_RUNS)["runsOrError"]["results"]
            mine = [r for r in runs if r["jobName"] == "__ASSET_JOB"]
            if mine:
                run_id = mine[0]["runId"]
                break
            launch = page.get_by_role("button", name="Launch run")
            if launch.count():
                launch.first.click()
            time.sleep(1)
        assert run_id, "no run was launched from the UI"
        assert dev.wait_run(run_id, timeout=600) == "SUCCESS"
        page.reload()
        page.get_by_text("catalog", exact=True).first.wait_for(timeout=60_000)
        time.sleep(2)
        page.screenshot(path=str(ARTIFACTS / "ui-asset-graph-after.png"))
        assert page.get_by_text("Never materialized").count() < 3

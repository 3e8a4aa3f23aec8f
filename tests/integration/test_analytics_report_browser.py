"""The HTML report in a real headless Chromium: it renders offline, with every chart, no errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
from pathlib import Path

import asyncpg
import pytest

from cartridge_dagster.analytics.runner import analyze_schema
from cartridge_dagster.config import settings_from_mapping
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from tests.support.raw_tables import copy_source, land
from tests.support.services import REPO

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = os.environ.get("CARTRIDGE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"


def test_report_renders_in_chromium(
    tmp_path: Path, pg_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/ensure-browser.sh installs it)")
    settings = settings_from_mapping(
        {
            "source": {"connection_string": mongo_url},
            "destination": {"connection_string": pg_url},
            "state_dir": str(tmp_path / "state"),
            "defaults": {"analytics": {"max_null_ratio": 0.9, "reconcile_sample_size": 50}},
            "schemas": [{"name": "shop", "source_database": mongo_db_name}],
        }
    )

    async def build() -> Path:
        async with mongo_session(mongo_url) as mongo:
            mdb = mongo.database(mongo_db_name)
            await seed_demo(mdb, sizes=DemoSizes.scaled(0.01))
            conn = await asyncpg.connect(pg_url)
            try:
                await copy_source(mdb, conn, settings.get_schema("shop"))
                # some CDC activity with lag, so the volume and lag charts have data
                now = dt.datetime.now(dt.UTC)
                docs = [d async for d in mdb["orders"].find({}).limit(30)]
                for i, doc in enumerate(docs):
                    synced = now - dt.timedelta(seconds=5 * i)
                    lag = dt.timedelta(milliseconds=200 + 40 * i)
                    await land(
                        conn,
                        "raw_shop",
                        "orders",
                        [doc],
                        op="update",
                        source_ts=synced - lag,
                        synced_at=synced,
                    )
                # a staging model (as generated: typed columns; coupon is often null)
                await conn.execute("CREATE SCHEMA shop_staging")
                await conn.execute(
                    "CREATE VIEW shop_staging.stg_shop__orders AS SELECT _id, "
                    "document->>'status' AS status, document->>'coupon' AS coupon, "
                    "(document->>'total')::numeric AS total, _cartridge_synced_at "
                    "FROM raw_shop.orders WHERE NOT _cartridge_deleted"
                )
            finally:
                await conn.close()
        result = await analyze_schema(settings, "shop", report_dir=tmp_path / "reports")
        assert result.report_path is not None
        return result.report_path

    report = asyncio.run(build())

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            errors: list[str] = []
            requests: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri())
            assert page.title() == "Cartridge · shop"
            assert page.locator("section.card").count() == 4
            # per collection: volume, lag, null ratios, and histograms for numbers and dates
            assert page.locator("svg.chart").count() >= 4 * 3 + 4
            orders = page.locator("section#orders")
            assert orders.locator("text=Volume over time").count() == 1
            assert "150 / 150" in orders.inner_text()  # source / target live documents
            box = orders.locator("svg.chart").first.bounding_box()
            assert box is not None and box["width"] > 400 and box["height"] > 100
            # the charts drew marks: bars of streamed changes, lag lines, null-ratio bars
            volume, lag = orders.locator("svg.chart").nth(0), orders.locator("svg.chart").nth(1)
            assert volume.locator("rect[rx='1.5']").count() >= 1
            assert lag.locator("polyline").count() >= 1
            # the snapshot is a number beside the chart, not a bar dwarfing the stream
            legend = volume.locator("text").all_text_contents()
            assert "snapshot" not in legend and "inserts" in legend
            # 150 copied, 30 of them updated since (the last operation per row is counted)
            assert "120" in orders.locator(".stat", has_text="snapshot rows").inner_text()
            # count axes have whole-number ticks
            ticks = volume.locator("text.tick").all_text_contents()
            assert len(ticks) >= 2 and all(re.fullmatch(r"[0-9,]+", t) for t in ticks), ticks
            # a column's declared type is shown once
            declared = orders.locator("code.declared").all_text_contents()
            assert set(declared) == {"text", "numeric"}, declared
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "analytics-report.png"), full_page=True)
            page.goto((report.parent / "index.html").as_uri())
            assert page.locator("a[href='shop.html']").count() == 1
            page.screenshot(path=str(ARTIFACTS / "analytics-index.png"))
            assert errors == []
            assert all(u.startswith("file://") for u in requests), requests
        finally:
            browser.close()

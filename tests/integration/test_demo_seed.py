"""`cartridge demo seed` on a seeded source says so in one line and exits 0; `--reset` reseeds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoGenerator, DemoSizes, SeedConflict, seed_demo
from tests.support.cli import cartridge

pytestmark = pytest.mark.integration


def _config(tmp_path: Path) -> tuple[Path, str]:
    url = f"mongoeco://{tmp_path / 'src.sqlite'}"
    data = {
        "source": {"connection_string": url},
        "destination": {"connection_string": "postgresql://cartridge@127.0.0.1:1/x"},
        "schemas": [{"name": "shop", "source_database": "shop"}],
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "cartridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, url


async def _counts(url: str) -> dict[str, int]:
    async with mongo_session(url) as conn:
        db = conn.database("shop")
        names = await conn.list_collection_names("shop")
        return {n: int(await db[n].count_documents({})) for n in sorted(names)}


def test_seed_twice_then_reset(tmp_path: Path) -> None:
    config, url = _config(tmp_path)
    first = cartridge("demo", "seed", "--config", str(config), "--scale", "0.01")
    assert first.returncode == 0, first.stderr
    seeded = asyncio.run(_counts(url))
    assert seeded == {"customers": 20, "events": 150, "orders": 150, "products": 5}

    again = cartridge("demo", "seed", "--config", str(config), "--scale", "0.01")
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    lines = again.stdout.strip().splitlines()
    assert len(lines) == 1, again.stdout
    assert lines[0].startswith("demo source 'shop' already has data (customers=20, events=150")
    assert "--reset" in lines[0]
    assert asyncio.run(_counts(url)) == seeded

    reset = cartridge("demo", "seed", "--config", str(config), "--scale", "0.01", "--reset")
    assert reset.returncode == 0, reset.stderr
    assert "emptied customers=20, products=5, orders=150, events=150" in reset.stdout
    assert "seeded customers=20" in reset.stdout
    assert asyncio.run(_counts(url)) == seeded


def test_seeding_over_the_demo_documents_is_one_clear_error(tmp_path: Path) -> None:
    url = f"mongoeco://{tmp_path / 'src.sqlite'}"
    sizes = DemoSizes.scaled(0.01)
    first = next(DemoGenerator(sizes, 42).collections())
    one = next(iter(first[2]))

    async def go() -> None:
        async with mongo_session(url) as conn:
            db = conn.database("shop")
            await db.customers.insert_one(one)
            await seed_demo(db, sizes=sizes)

    with pytest.raises(SeedConflict) as caught:
        asyncio.run(go())
    assert str(caught.value) == (
        "collection 'customers' already holds 1 of the demo's documents (same _id); "
        "not seeding over them"
    )
    assert caught.value.hint is not None and "--reset" in caught.value.hint


def test_traffic_inserts_cost_no_scan_of_the_collection(tmp_path: Path) -> None:
    """The traffic's inserts land (counted by kind, checked in the source) and cost a fraction
    of the embedded engine's insert_one, which decodes the whole collection per insert
    (0.2-0.5 s of CPU per insert at the demo's 15,000 events: most of the demo's idle CPU)."""
    import statistics
    import time

    from bson import ObjectId

    from cartridge_dagster.demo.traffic import run_traffic

    url = f"mongoeco://{tmp_path / 'src.sqlite'}"
    costs: dict[str, list[float]] = {}

    async def scenario() -> tuple[dict[str, int], dict[str, int], dict[str, int], float]:
        async with mongo_session(url) as conn:
            await seed_demo(conn.database("shop"), sizes=DemoSizes.scaled(0.1))
        before = await _counts(url)
        async with mongo_session(url) as conn:
            db = conn.database("shop")
            last = [time.process_time()]

            def progress(kind: str) -> None:
                now = time.process_time()
                costs.setdefault(kind, []).append(now - last[0])
                last[0] = now

            counts = await run_traffic(db, rate=0, max_ops=40, seed=3, progress=progress)
            one = []
            for i in range(3):  # the other path, on the same collection
                started = time.process_time()
                await db.events.insert_one({"_id": ObjectId(), "n": i})
                one.append(time.process_time() - started)
        return before, await _counts(url), dict(counts), statistics.median(one)

    before, after, counts, insert_one = asyncio.run(scenario())
    assert after["orders"] == before["orders"] + counts.get("insert_order", 0)
    events = counts.get("insert_event", 0) - counts.get("delete_event", 0) + 3
    assert after["events"] == before["events"] + events
    inserts = costs.get("insert_order", []) + costs.get("insert_event", [])
    assert len(inserts) >= 10, counts
    assert statistics.median(inserts) < insert_one / 4, (statistics.median(inserts), insert_one)

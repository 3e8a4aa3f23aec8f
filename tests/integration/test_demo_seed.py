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

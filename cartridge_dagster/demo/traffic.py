"""Live demo traffic: inserts, updates and deletes against the demo source until stopped."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from cartridge_dagster.demo.seed import STATUSES, DemoGenerator, DemoSizes

__all__ = ["run_traffic"]


async def _ids(database: Any, collection: str, limit: int = 5000) -> list[Any]:
    cursor = database[collection].find({}, {"_id": 1}).limit(limit)
    return [doc["_id"] async for doc in cursor]


async def run_traffic(
    database: Any,
    *,
    rate: float = 5.0,
    duration: float | None = None,
    max_ops: int | None = None,
    seed: int = 7,
    stop: asyncio.Event | None = None,
    progress: Callable[[str], None] | None = None,
) -> Counter[str]:
    """Apply about ``rate`` operations per second until ``duration``/``max_ops``/``stop``.

    The mix: new orders and events (inserts), order status changes and customer edits (updates;
    some add a field the seed never had, ``preferred_language``, so schema drift shows), and
    deletes of old events. Returns counts per operation kind.
    """
    gen = DemoGenerator(
        DemoSizes(customers=0, products=0, orders=0, events=0), seed, fresh_ids=True
    )
    gen.customer_ids = await _ids(database, "customers")
    gen.product_ids = await _ids(database, "products")
    gen.order_ids = await _ids(database, "orders")
    event_ids = await _ids(database, "events")
    if not gen.customer_ids or not gen.product_ids:
        from cartridge_dagster.errors import TerminalError

        raise TerminalError("the demo source is empty", hint="seed it first: cartridge demo seed")
    counts: Counter[str] = Counter()
    started = time.monotonic()
    interval = 1.0 / rate if rate > 0 else 0.0
    rng = gen.rng
    while True:
        if stop is not None and stop.is_set():
            break
        if duration is not None and time.monotonic() - started >= duration:
            break
        if max_ops is not None and counts.total() >= max_ops:
            break
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        roll = rng.random()
        # One-document insert_many, not insert_one: the embedded engine (mongoeco 4.11) checks
        # an insert_one's _id by decoding every document of the collection (~0.2-0.5 s of CPU
        # per insert at the demo's 15,000 events, most of the demo's idle CPU); its
        # insert_many looks the _id up in its index. The same insert, the same change event.
        if roll < 0.35:
            await database.orders.insert_many([gen.order(placed_at=now)])
            kind = "insert_order"
        elif roll < 0.6:
            event = gen.event(ts=now)
            await database.events.insert_many([event])
            event_ids.append(event["_id"])
            kind = "insert_event"
        elif roll < 0.8:
            await database.orders.update_one(
                {"_id": rng.choice(gen.order_ids)},
                {"$set": {"status": rng.choice(STATUSES), "updated_at": now}},
            )
            kind = "update_order"
        elif roll < 0.92:
            update: dict[str, Any] = {"$inc": {"loyalty_points": rng.randint(1, 50)}}
            if rng.random() < 0.3:
                update["$set"] = {"preferred_language": rng.choice(["en", "pt", "de", "fr"])}
            await database.customers.update_one({"_id": rng.choice(gen.customer_ids)}, update)
            kind = "update_customer"
        elif event_ids:
            victim = event_ids.pop(rng.randrange(len(event_ids)))
            await database.events.delete_one({"_id": victim})
            kind = "delete_event"
        else:
            continue
        counts[kind] += 1
        if progress is not None:
            progress(kind)
        if interval:
            await asyncio.sleep(interval)
    return counts

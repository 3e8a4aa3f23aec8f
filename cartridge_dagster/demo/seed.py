"""The demo source: a deterministic, realistic e-commerce dataset.

Four collections with what real operational data has: nested objects, arrays of objects,
polymorphic payloads, optional and drifting fields (an int that is sometimes a string), Decimal128
money, dates, UUIDs and ObjectId references between collections.

- ``customers``: profile, nested address (zip sometimes an int), tier enum, tags array.
- ``products``: per-category ``attributes`` with different shapes, Decimal128 price.
- ``orders``: ``customer_id`` → customers, ``items`` array of line items → products,
  nested shipping address, payment sub-document, Decimal128 totals.
- ``events``: ``type`` decides the shape of ``payload``; ``session_id`` is a UUID.

The same ``seed`` and ``scale`` always give the same documents, ``_id``s included.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pymongo.errors
from bson import Decimal128, ObjectId

from cartridge_dagster.errors import TerminalError

__all__ = [
    "DEMO_COLLECTIONS",
    "DemoGenerator",
    "DemoSizes",
    "SeedConflict",
    "existing_documents",
    "reset_demo",
    "seed_demo",
]

#: The collections the demo seeds, in dependency order.
DEMO_COLLECTIONS = ("customers", "products", "orders", "events")


class SeedConflict(TerminalError):
    """The demo's documents would collide with documents already in the source."""


BASE_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CITIES = [
    ("Lisbon", "PT"),
    ("Porto", "PT"),
    ("Madrid", "ES"),
    ("Berlin", "DE"),
    ("Paris", "FR"),
    ("Lyon", "FR"),
    ("Amsterdam", "NL"),
    ("Dublin", "IE"),
    ("Milan", "IT"),
    ("Vienna", "AT"),
]
FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Edsger",
    "Frances",
    "Dennis",
    "Radia",
    "Guido",
    "Sophie",
    "Tim",
    "Joan",
    "Niklaus",
]
LAST = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Dijkstra",
    "Allen",
    "Ritchie",
    "Perlman",
    "van Rossum",
    "Wilson",
    "Berners-Lee",
    "Clarke",
    "Wirth",
]
CATEGORIES = ["electronics", "apparel", "books", "home", "grocery"]
TIERS = ["bronze", "silver", "gold", "platinum"]
STATUSES = ["pending", "paid", "shipped", "delivered", "cancelled", "returned"]
EVENT_TYPES = ["page_view", "search", "add_to_cart", "checkout"]
PAYMENT_METHODS = ["card", "paypal", "bank_transfer", "voucher"]


@dataclass(frozen=True)
class DemoSizes:
    customers: int = 2000
    products: int = 500
    orders: int = 15000
    events: int = 15000

    @classmethod
    def scaled(cls, scale: float) -> DemoSizes:
        base = cls()
        return cls(
            customers=max(10, int(base.customers * scale)),
            products=max(5, int(base.products * scale)),
            orders=max(10, int(base.orders * scale)),
            events=max(10, int(base.events * scale)),
        )

    @property
    def total(self) -> int:
        return self.customers + self.products + self.orders + self.events


def _money(value: float) -> Decimal128:
    return Decimal128(Decimal(f"{value:.2f}"))


class DemoGenerator:
    """Generates the demo documents (and traffic) from one seeded random source."""

    def __init__(self, sizes: DemoSizes, seed: int = 42, *, fresh_ids: bool = False) -> None:
        """``fresh_ids``: new documents get real, unique ObjectIds (live traffic), not seeded
        ones (the deterministic dataset)."""
        self.sizes = sizes
        self.rng = random.Random(seed)
        self.fresh_ids = fresh_ids
        self.customer_ids = [self._oid() for _ in range(sizes.customers)]
        self.product_ids = [self._oid() for _ in range(sizes.products)]
        self.product_prices: dict[ObjectId, float] = {}
        self.order_ids: list[ObjectId] = []

    def _oid(self) -> ObjectId:
        if self.fresh_ids:
            return ObjectId()
        return ObjectId(self.rng.randbytes(12))

    def _time(self, max_days: float = 300) -> dt.datetime:
        seconds = self.rng.uniform(0, max_days * 86400)
        return (BASE_TIME + dt.timedelta(seconds=seconds)).replace(microsecond=0)

    def _address(self) -> dict[str, Any]:
        city, country = self.rng.choice(CITIES)
        zip_code: int | str = self.rng.randint(1000, 99999)
        if self.rng.random() < 0.3:
            zip_code = f"{zip_code:05d}-{self.rng.randint(0, 999):03d}"  # drifting type
        address: dict[str, Any] = {
            "street": f"{self.rng.randint(1, 250)} {self.rng.choice(LAST)} Street",
            "city": city,
            "country": country,
            "zip": zip_code,
        }
        if self.rng.random() < 0.2:
            address["geo"] = {
                "lat": round(self.rng.uniform(36, 55), 5),
                "lng": round(self.rng.uniform(-9, 17), 5),
            }
        return address

    def customer(self, _id: ObjectId) -> dict[str, Any]:
        first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
        doc: dict[str, Any] = {
            "_id": _id,
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower().replace(' ', '')}{self.rng.randint(1, 999)}"
            "@example.com",
            "tier": self.rng.choice(TIERS),
            "address": self._address(),
            "created_at": self._time(),
            "marketing_opt_in": self.rng.random() < 0.6,
            "tags": self.rng.sample(
                ["vip", "b2b", "newsletter", "returning", "mobile"], self.rng.randint(0, 3)
            ),
            "loyalty_points": self.rng.randint(0, 5000),
        }
        if self.rng.random() < 0.7:
            doc["phone"] = f"+351 9{self.rng.randint(10000000, 99999999)}"
        if self.rng.random() < 0.1:
            doc["loyalty_points"] = float(doc["loyalty_points"]) + 0.5  # int or double
        if self.rng.random() < 0.05:
            doc["phone"] = None
        return doc

    def product(self, _id: ObjectId) -> dict[str, Any]:
        category = self.rng.choice(CATEGORIES)
        price = round(self.rng.uniform(2, 800), 2)
        self.product_prices[_id] = price
        attributes: dict[str, Any]
        if category == "electronics":
            attributes = {
                "voltage": self.rng.choice([110, 230]),
                "warranty_months": self.rng.choice([12, 24, 36]),
            }
        elif category == "apparel":
            attributes = {
                "size": self.rng.choice(["XS", "S", "M", "L", "XL"]),
                "color": self.rng.choice(["black", "white", "navy", "red"]),
            }
        elif category == "books":
            attributes = {
                "isbn": f"978-{self.rng.randint(1000000000, 9999999999)}",
                "pages": self.rng.randint(80, 900),
                "authors": [
                    f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}"
                    for _ in range(self.rng.randint(1, 3))
                ],
            }
        elif category == "home":
            attributes = {
                "material": self.rng.choice(["wood", "steel", "glass"]),
                "dimensions_cm": {
                    "w": self.rng.randint(10, 200),
                    "h": self.rng.randint(10, 200),
                    "d": self.rng.randint(10, 100),
                },
            }
        else:
            attributes = {"perishable": True, "weight_g": self.rng.randint(50, 5000)}
        return {
            "_id": _id,
            "sku": f"SKU-{self.rng.randint(100000, 999999)}",
            "name": f"{category.title()} item {self.rng.randint(1, 9999)}",
            "category": category,
            "price": _money(price),
            "stock": self.rng.randint(0, 500),
            "active": self.rng.random() < 0.9,
            "attributes": attributes,
            "created_at": self._time(200),
        }

    def order(
        self, _id: ObjectId | None = None, *, placed_at: dt.datetime | None = None
    ) -> dict[str, Any]:
        _id = _id or self._oid()
        items = []
        for _ in range(self.rng.randint(1, 5)):
            pid = self.rng.choice(self.product_ids)
            unit = self.product_prices.get(pid) or round(self.rng.uniform(2, 800), 2)
            item: dict[str, Any] = {
                "product_id": pid,
                "quantity": self.rng.randint(1, 4),
                "unit_price": _money(unit),
            }
            if self.rng.random() < 0.15:
                item["discount_pct"] = self.rng.choice([5, 10, 15, 20])
            items.append(item)
        total = sum(float(i["unit_price"].to_decimal()) * i["quantity"] for i in items)
        payment: dict[str, Any] = {"method": self.rng.choice(PAYMENT_METHODS)}
        if payment["method"] == "card":
            payment["card_last4"] = f"{self.rng.randint(0, 9999):04d}"
        doc: dict[str, Any] = {
            "_id": _id,
            "customer_id": self.rng.choice(self.customer_ids),
            "status": self.rng.choice(STATUSES),
            "placed_at": placed_at or self._time(),
            "currency": self.rng.choice(["EUR", "EUR", "EUR", "USD", "GBP"]),
            "items": items,
            "total": _money(total),
            "shipping_address": self._address(),
            "payment": payment,
            "coupon": self.rng.choice([None, None, None, "WELCOME10", "SPRING"]),
        }
        if self.rng.random() < 0.1:
            doc["notes"] = self.rng.choice(["leave at door", "gift wrap", "call before delivery"])
        self.order_ids.append(_id)
        return doc

    def event(self, *, ts: dt.datetime | None = None) -> dict[str, Any]:
        kind = self.rng.choice(EVENT_TYPES)
        payload: dict[str, Any]
        if kind == "page_view":
            payload = {
                "url": f"/p/{self.rng.randint(1, 500)}",
                "referrer": self.rng.choice([None, "google", "newsletter", "direct"]),
            }
        elif kind == "search":
            payload = {
                "query": self.rng.choice(["shoes", "usb cable", "novel", "lamp", "coffee"]),
                "results": self.rng.randint(0, 120),
            }
        elif kind == "add_to_cart":
            payload = {
                "product_id": self.rng.choice(self.product_ids),
                "quantity": self.rng.randint(1, 3),
            }
        else:
            amount: float | str = round(self.rng.uniform(5, 900), 2)
            if self.rng.random() < 0.2:
                amount = f"{amount:.2f}"  # drifting type: a number sent as text
            payload = {
                "order_id": self.rng.choice(self.order_ids) if self.order_ids else None,
                "amount": amount,
            }
        return {
            "_id": self._oid(),
            "type": kind,
            "customer_id": self.rng.choice(self.customer_ids) if self.rng.random() < 0.8 else None,
            "session_id": uuid.UUID(bytes=self.rng.randbytes(16), version=4),
            "ts": ts or self._time(),
            "payload": payload,
        }

    def collections(self) -> Iterator[tuple[str, int, Iterator[dict[str, Any]]]]:
        """(collection, count, documents) in dependency order."""
        yield "customers", self.sizes.customers, (self.customer(i) for i in self.customer_ids)
        yield "products", self.sizes.products, (self.product(i) for i in self.product_ids)
        yield "orders", self.sizes.orders, (self.order() for _ in range(self.sizes.orders))
        yield "events", self.sizes.events, (self.event() for _ in range(self.sizes.events))


def _chunks(docs: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def seed_demo(
    database: Any,
    *,
    sizes: DemoSizes | None = None,
    seed: int = 42,
    progress: Callable[[str, int], None] | None = None,
    batch_size: int = 1000,
) -> dict[str, int]:
    """Insert the demo dataset into an (async) database handle. Returns counts per collection.

    ``progress(collection, n)`` is called after each batch with the number just inserted.
    """
    sizes = sizes or DemoSizes()
    gen = DemoGenerator(sizes, seed)
    counts: dict[str, int] = {}
    for name, _count, docs in gen.collections():
        coll = database[name]
        inserted = 0
        for chunk in _chunks(docs, batch_size):
            try:
                await coll.insert_many(chunk, ordered=False)
            except pymongo.errors.BulkWriteError as exc:
                duplicates = sum(
                    1 for e in exc.details.get("writeErrors", []) if e.get("code") == 11000
                )
                raise SeedConflict(
                    f"collection {name!r} already holds {duplicates or 'some'} of the demo's "
                    f"documents (same _id); not seeding over them",
                    hint="`cartridge demo seed --reset` empties the demo collections and seeds "
                    "again",
                ) from None
            inserted += len(chunk)
            if progress is not None:
                progress(name, len(chunk))
        counts[name] = inserted
    return counts


async def existing_documents(client: Any, database: Any) -> dict[str, int]:
    """Collections of ``database`` holding documents, with their counts (``client``: anything
    with ``list_collection_names(database_name)``, as :class:`MongoConnection`)."""
    names = await client.list_collection_names(database.name)
    counts = {name: int(await database[name].count_documents({})) for name in sorted(names)}
    return {name: n for name, n in counts.items() if n}


async def reset_demo(database: Any) -> dict[str, int]:
    """Empty the demo's collections (documents deleted, collections kept): what was removed."""
    removed: dict[str, int] = {}
    for name in DEMO_COLLECTIONS:
        result = await database[name].delete_many({})
        if result.deleted_count:
            removed[name] = int(result.deleted_count)
    return removed

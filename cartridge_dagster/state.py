"""Where Cartridge keeps local state, and what it knows about each schema's collections.

Layout under ``settings.state_dir`` (``.cartridge/`` by default, never committed):

- ``postgres/``             the local PostgreSQL (``cartridge services``)
- ``demo/``                 the embedded demo source
- ``catalog/<schema>.json`` the last source catalog (collections, counts, sizes)
- ``schemas/<schema>/``     versioned inferred schemas (``init``)
- ``reports/``              analytics HTML reports
- ``dagster_home/``         the local Dagster instance
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cartridge_dagster.config import CartridgeSettings
from cartridge_dagster.scope import current_scope

__all__ = [
    "catalog_file",
    "known_collections",
    "read_json",
    "scanned_collections",
    "schema_dir",
    "write_json_atomic",
    "write_text_atomic",
]


def catalog_file(settings: CartridgeSettings, schema: str) -> Path:
    return settings.state_path / "catalog" / f"{schema}.json"


def schema_dir(settings: CartridgeSettings, schema: str) -> Path:
    return settings.state_path / "schemas" / schema


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_text_atomic(path: Path, text: str) -> bool:
    """Replace ``path`` atomically with ``text``; returns False (and writes nothing) when the
    file already holds exactly that text."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True


def write_json_atomic(path: Path, data: Any) -> bool:
    """Write deterministic JSON (sorted keys); returns False when the file already had it."""
    return write_text_atomic(
        path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )


def scanned_collections(settings: CartridgeSettings, schema: str) -> list[str]:
    """Collections of ``schema`` as the last scan recorded them, without touching the source.

    From the config's ``include`` list when set; else from the latest inferred schema
    (``schemas/<schema>/latest.json``, key ``collections``) and the last catalog.
    """
    cfg = settings.get_schema(schema)
    if cfg.include:
        return sorted(c for c in cfg.include if cfg.selects(c))
    names: set[str] = set()
    latest = read_json(schema_dir(settings, schema) / "latest.json")
    if isinstance(latest, dict) and isinstance(latest.get("collections"), dict | list):
        names.update(str(c) for c in latest["collections"])
    catalog = read_json(catalog_file(settings, schema))
    if isinstance(catalog, dict) and isinstance(catalog.get("collections"), dict):
        names.update(str(c) for c in catalog["collections"])
    return sorted(c for c in names if cfg.selects(c))


def known_collections(settings: CartridgeSettings, schema: str) -> list[str]:
    """Collections of ``schema`` known without touching the source.

    While the Cartridge component builds from its state (``dg utils refresh-defs-state``), the
    collections that state holds; otherwise what the last scan recorded
    (:func:`scanned_collections`). Used to build per-collection assets at code-location load
    time (a reload picks up new collections).
    """
    state = current_scope().collections
    if state is not None and schema in state:
        cfg = settings.get_schema(schema)
        return sorted(c for c in state[schema] if cfg.selects(c))
    return scanned_collections(settings, schema)

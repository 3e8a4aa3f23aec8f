"""The versioned schema store: one deterministic JSON file per schema change, and diffs.

Layout under ``state.schema_dir(settings, S)``:

- ``v0001.json``, ``v0002.json`` … one per change: ``{"schema", "version", "fingerprint",
  "previous", "collections": {name: schema}, "diff": {...}}``
- ``latest.json``: the current version (same content as the newest ``vNNNN.json``); its
  top-level ``collections`` maps collection name → schema (``state.known_collections`` reads it)
- ``pending.json``: with the ``approve`` evolution policy, a detected change waits here until
  :func:`approve` turns it into the next version.

A version changes only when the *structure* changes (field paths, types, SQL types, column
names, required/nullable, enums, references, arrays, timestamps) — :func:`fingerprint` hashes
exactly that. Sampling noise in the statistics (ratios, examples, min/max) of a sampled
collection therefore never creates a version, and a rescan of unchanged data writes nothing.
JSON is written with sorted keys and fixed indentation: the same input gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cartridge_dagster.errors import CartridgeError
from cartridge_dagster.init.inference import NUMERIC_TYPES
from cartridge_dagster.state import write_text_atomic

__all__ = [
    "SchemaDiff",
    "StoreOutcome",
    "approve",
    "diff_schemas",
    "fingerprint",
    "load_latest",
    "load_pending",
    "load_version",
    "record",
    "structure",
    "versions",
]

_STRUCTURAL_FIELD_KEYS = ("required", "nullable", "enum", "sensitive")
_WIDER = {
    # a → b is widening when every value of a fits b
    ("integer", "bigint"),
    ("integer", "double precision"),
    ("integer", "numeric"),
    ("bigint", "numeric"),
    ("bigint", "double precision"),
    ("double precision", "numeric"),
}


def dumps(data: Any) -> str:
    """The store's canonical JSON text."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def structure(collections: dict[str, Any]) -> dict[str, Any]:
    """The structural view of a schema's collections (what a version is made of)."""
    out: dict[str, Any] = {}
    for name, coll in sorted(collections.items()):
        fields = {}
        for path, entry in coll["fields"].items():
            view: dict[str, Any] = {"types": sorted(t for t in entry["types"] if t != "null")}
            for key in _STRUCTURAL_FIELD_KEYS:
                if key in entry:
                    view[key] = entry[key]
            fields[path] = view
        out[name] = {
            "fields": fields,
            "columns": coll["columns"],
            "arrays": coll["arrays"],
            "primary_key": coll["primary_key"],
            "references": {p: r["collection"] for p, r in coll.get("references", {}).items()},
            "timestamps": coll.get("timestamps", []),
        }
    return out


def fingerprint(collections: dict[str, Any]) -> str:
    text = json.dumps(structure(collections), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- diff


@dataclass
class SchemaDiff:
    """What changed between two versions of a schema."""

    collections_added: list[str] = field(default_factory=list)
    collections_removed: list[str] = field(default_factory=list)
    fields_added: dict[str, list[str]] = field(default_factory=dict)
    fields_removed: dict[str, list[str]] = field(default_factory=dict)
    types_widened: dict[str, dict[str, list[list[str]]]] = field(default_factory=dict)
    types_narrowed: dict[str, dict[str, list[list[str]]]] = field(default_factory=dict)
    column_types_changed: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    presence_changed: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    enums_changed: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)
    references_changed: dict[str, dict[str, list[str | None]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(
            getattr(self, f)
            for f in (
                "collections_added",
                "collections_removed",
                "fields_added",
                "fields_removed",
                "types_widened",
                "types_narrowed",
                "column_types_changed",
                "presence_changed",
                "enums_changed",
                "references_changed",
            )
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in sorted(self.__dict__.items()) if v}

    def counts(self) -> dict[str, int]:
        def n(d: dict[str, Any]) -> int:
            return sum(len(v) for v in d.values())

        return {
            "collections_added": len(self.collections_added),
            "collections_removed": len(self.collections_removed),
            "fields_added": n(self.fields_added),
            "fields_removed": n(self.fields_removed),
            "types_widened": n(self.types_widened),
            "types_narrowed": n(self.types_narrowed),
            "column_types_changed": n(self.column_types_changed),
            "presence_changed": n(self.presence_changed),
            "enums_changed": n(self.enums_changed),
            "references_changed": n(self.references_changed),
        }

    def markdown(self) -> str:
        if self.empty:
            return "No schema change."
        lines = ["| change | collection | field | detail |", "|---|---|---|---|"]
        for c in self.collections_added:
            lines.append(f"| collection added | `{c}` | | |")
        for c in self.collections_removed:
            lines.append(f"| collection removed | `{c}` | | |")
        for c, paths in sorted(self.fields_added.items()):
            lines.extend(f"| field added | `{c}` | `{p}` | |" for p in paths)
        for c, paths in sorted(self.fields_removed.items()):
            lines.extend(f"| field removed | `{c}` | `{p}` | |" for p in paths)
        for label, table in (
            ("type widened", self.types_widened),
            ("type narrowed", self.types_narrowed),
        ):
            for c, changes in sorted(table.items()):
                for p, (old_types, new_types) in sorted(changes.items()):
                    before, after = "/".join(old_types) or "∅", "/".join(new_types) or "∅"
                    lines.append(f"| {label} | `{c}` | `{p}` | {before} → {after} |")
        for c, col_changes in sorted(self.column_types_changed.items()):
            for p, (old, new) in sorted(col_changes.items()):
                lines.append(f"| column type | `{c}` | `{p}` | {old} → {new} |")
        for c, presence in sorted(self.presence_changed.items()):
            for p, (old_p, new_p) in sorted(presence.items()):
                lines.append(f"| presence | `{c}` | `{p}` | {old_p} → {new_p} |")
        for c, enum_changes in sorted(self.enums_changed.items()):
            for p, delta in sorted(enum_changes.items()):
                detail = ", ".join(f"{k}: {', '.join(v)}" for k, v in sorted(delta.items()) if v)
                lines.append(f"| enum values | `{c}` | `{p}` | {detail} |")
        for c, ref_changes in sorted(self.references_changed.items()):
            for p, (old_ref, new_ref) in sorted(ref_changes.items()):
                lines.append(f"| reference | `{c}` | `{p}` | {old_ref or '∅'} → {new_ref or '∅'} |")
        return "\n".join(lines)


def _presence_label(entry: dict[str, Any]) -> str:
    if entry.get("required"):
        return "required"
    if entry.get("nullable") and entry.get("presence", 1.0) >= 1.0:
        return "nullable"
    return "optional"


def _type_change(old: set[str], new: set[str]) -> str | None:
    if old == new:
        return None
    if old < new:
        return "widened"
    if new < old:
        return "narrowed"
    if old <= NUMERIC_TYPES and new <= NUMERIC_TYPES:
        rank = ["int", "long", "double", "decimal"]
        return "widened" if max(map(rank.index, new)) > max(map(rank.index, old)) else "narrowed"
    return "widened"  # replaced: the column must take the new type; report as widening


def diff_schemas(old: dict[str, Any], new: dict[str, Any]) -> SchemaDiff:
    """Diff two ``collections`` mappings (collection → schema JSON)."""
    d = SchemaDiff()
    d.collections_added = sorted(set(new) - set(old))
    d.collections_removed = sorted(set(old) - set(new))
    for name in sorted(set(old) & set(new)):
        of, nf = old[name]["fields"], new[name]["fields"]
        added = sorted(set(nf) - set(of))
        removed = sorted(set(of) - set(nf))
        if added:
            d.fields_added[name] = added
        if removed:
            d.fields_removed[name] = removed
        for path in sorted(set(of) & set(nf)):
            ot = {t for t in of[path]["types"] if t != "null"}
            nt = {t for t in nf[path]["types"] if t != "null"}
            kind = _type_change(ot, nt)
            if kind is not None:
                target = d.types_widened if kind == "widened" else d.types_narrowed
                target.setdefault(name, {})[path] = [sorted(ot), sorted(nt)]
            op, np_ = _presence_label(of[path]), _presence_label(nf[path])
            if op != np_:
                d.presence_changed.setdefault(name, {})[path] = [op, np_]
            oe, ne = set(of[path].get("enum") or []), set(nf[path].get("enum") or [])
            if oe != ne and (oe or ne):
                d.enums_changed.setdefault(name, {})[path] = {
                    "added": sorted(ne - oe),
                    "removed": sorted(oe - ne),
                }
        oc, nc = old[name]["columns"], new[name]["columns"]
        for path in sorted(set(oc) & set(nc)):
            if oc[path]["sql_type"] != nc[path]["sql_type"]:
                d.column_types_changed.setdefault(name, {})[path] = [
                    oc[path]["sql_type"],
                    nc[path]["sql_type"],
                ]
        orf = {p: r["collection"] for p, r in old[name].get("references", {}).items()}
        nrf = {p: r["collection"] for p, r in new[name].get("references", {}).items()}
        for path in sorted(set(orf) | set(nrf)):
            if orf.get(path) != nrf.get(path):
                d.references_changed.setdefault(name, {})[path] = [orf.get(path), nrf.get(path)]
    return d


# --------------------------------------------------------------------------- the store


@dataclass
class StoreOutcome:
    """What :func:`record` did."""

    status: Literal["unchanged", "created", "pending"]
    version: int
    fingerprint: str
    diff: SchemaDiff
    path: Path | None = None

    @property
    def changed(self) -> bool:
        return self.status == "created"


def _version_file(directory: Path, version: int) -> Path:
    return directory / f"v{version:04d}.json"


def versions(directory: Path) -> list[int]:
    """Stored version numbers, ascending."""
    out = []
    for p in directory.glob("v[0-9][0-9][0-9][0-9].json"):
        out.append(int(p.stem[1:]))
    return sorted(out)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise CartridgeError(
            f"{path}: unreadable schema file ({exc})",
            hint="restore it from the other vNNNN.json files, or delete it to rescan",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("collections"), dict):
        raise CartridgeError(f"{path}: not a Cartridge schema file (no 'collections' mapping)")
    return data


def load_latest(directory: Path) -> dict[str, Any] | None:
    return _read(directory / "latest.json")


def load_pending(directory: Path) -> dict[str, Any] | None:
    return _read(directory / "pending.json")


def load_version(directory: Path, version: int) -> dict[str, Any]:
    data = _read(_version_file(directory, version))
    if data is None:
        known = ", ".join(str(v) for v in versions(directory)) or "none"
        raise CartridgeError(f"schema version {version} not found in {directory} (known: {known})")
    return data


def _document(
    scanned: dict[str, Any], version: int, previous: int | None, fp: str, diff: SchemaDiff
) -> dict[str, Any]:
    return {
        "schema": scanned["schema"],
        "database": scanned["database"],
        "source_kind": scanned["source_kind"],
        "version": version,
        "previous": previous,
        "fingerprint": fp,
        "diff": diff.to_json(),
        "collections": scanned["collections"],
    }


def record(
    directory: Path, scanned: dict[str, Any], *, policy: Literal["auto", "approve"] = "auto"
) -> StoreOutcome:
    """Store a scan (``ScanResult.to_json()``) when its structure differs from the latest.

    ``auto``: a change becomes the next version and ``latest.json``. ``approve``: a change is
    written to ``pending.json`` and nothing else moves until :func:`approve`. The very first
    scan is always recorded as version 1 (there is nothing to approve against).
    """
    latest = load_latest(directory)
    fp = fingerprint(scanned["collections"])
    if latest is not None and latest.get("fingerprint") == fp:
        pending = directory / "pending.json"
        if pending.exists():
            pending.unlink()  # the source went back to the approved shape
        return StoreOutcome("unchanged", int(latest["version"]), fp, SchemaDiff())
    previous_collections = latest["collections"] if latest else {}
    diff = diff_schemas(previous_collections, scanned["collections"])
    current = int(latest["version"]) if latest else 0
    if latest is not None and policy == "approve":
        doc = _document(scanned, current + 1, current, fp, diff)
        path = directory / "pending.json"
        write_text_atomic(path, dumps(doc))
        return StoreOutcome("pending", current, fp, diff, path)
    return _commit(directory, _document(scanned, current + 1, current or None, fp, diff), diff)


def _commit(directory: Path, doc: dict[str, Any], diff: SchemaDiff) -> StoreOutcome:
    text = dumps(doc)
    path = _version_file(directory, int(doc["version"]))
    write_text_atomic(path, text)
    write_text_atomic(directory / "latest.json", text)
    pending = directory / "pending.json"
    if pending.exists():
        pending.unlink()
    return StoreOutcome("created", int(doc["version"]), str(doc["fingerprint"]), diff, path)


def approve(directory: Path) -> StoreOutcome:
    """Promote ``pending.json`` to the next version (the ``approve`` policy)."""
    pending = load_pending(directory)
    if pending is None:
        raise CartridgeError(
            f"nothing to approve in {directory}",
            hint="run a scan first; it reports pending changes",
        )
    latest = load_latest(directory)
    current = int(latest["version"]) if latest else 0
    if latest is not None and latest.get("fingerprint") == pending.get("fingerprint"):
        (directory / "pending.json").unlink()
        return StoreOutcome("unchanged", current, str(latest["fingerprint"]), SchemaDiff())
    diff = diff_schemas(latest["collections"] if latest else {}, pending["collections"])
    doc = dict(pending)
    doc.update(version=current + 1, previous=current or None, diff=diff.to_json())
    return _commit(directory, doc, diff)

"""Schema inference for document collections: per field path statistics in one pass.

:class:`Profiler` walks decoded BSON documents once and keeps, for every field path (nested
objects and array elements included, up to ``max_depth``): a BSON type histogram, presence and
null counts, a capped distinct set (exact below the cap, estimated above), min/max of numbers and
dates, string lengths, array lengths and element types, and a few example values. The walk is a
tight loop over ``type(value)`` with no per-value string building (children hang off their
parent node), which keeps it within a small factor of BSON decoding itself (see
``tests/performance/bench_inference.py``).

:func:`finalize` turns the profile into the JSON form stored by :mod:`.store` (deterministic:
sorted keys and values, rounded ratios) and derives facts: the SQL type of each column, enums,
timestamps fit for freshness and incremental models, and stable collision-free column names.
References between collections are checked against the source in :mod:`.scan`.
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bson import DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS

from cartridge_dagster.documents import ConversionStats, ValuePolicy, landed_names, to_jsonable
from cartridge_dagster.identifiers import assign_names

__all__ = [
    "ARRAY_MARK",
    "LITERAL_ARRAY_MARK",
    "RESERVED_COLUMNS",
    "InferenceOptions",
    "Profiler",
    "field_name",
    "finalize",
    "join_path",
    "split_path",
]

#: The path segment standing for "each element of the array".
ARRAY_MARK = "[]"
#: The path segment of a field literally named ``[]`` (a NUL never is in a landed field name,
#: so this cannot be another field's name); :func:`field_name` gives the name back.
LITERAL_ARRAY_MARK = "\x00[]"


def field_name(segment: str) -> str:
    """The field name (JSON key) a path segment stands for (not :data:`ARRAY_MARK`)."""
    return ARRAY_MARK if segment == LITERAL_ARRAY_MARK else segment


def _segment(key: str) -> str:
    return LITERAL_ARRAY_MARK if key == ARRAY_MARK else key


#: Column names the staging models use themselves; field columns never take them.
RESERVED_COLUMNS = (
    "_id",
    "_parent_id",
    "_index",
    "_cartridge_deleted",
    "_cartridge_version",
    "_cartridge_op",
    "_cartridge_source_ts",
    "_cartridge_synced_at",
    "_cartridge_invalid_fields",
)
NUMERIC_TYPES = frozenset({"int", "long", "double", "decimal"})
# ASCII only, like the SQL guards in dbt_project/macros/cartridge_casts.sql
_NUMBER_TEXT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$", re.ASCII)
_ISO_TEXT = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$", re.ASCII
)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_TIME_NAMES = ("updated", "modified", "changed", "synced", "ts", "timestamp", "time", "at")

_SCALAR_TYPE_NAMES: dict[type, str] = {
    float: "double",
    bool: "bool",
    type(None): "null",
    ObjectId: "objectId",
    Decimal128: "decimal",
    dt.datetime: "date",
    DatetimeMS: "date",
    uuid.UUID: "uuid",
    Timestamp: "timestamp",
    Regex: "regex",
    re.Pattern: "regex",
    MinKey: "minKey",
    MaxKey: "maxKey",
    Code: "javascript",
    DBRef: "dbRef",
    bytes: "binary",
    Int64: "long",
}


def _type_name(value: Any) -> str:
    t = type(value)
    name = _SCALAR_TYPE_NAMES.get(t)
    if name is not None:
        return name
    if isinstance(value, Binary):
        return "uuid" if value.subtype in (3, 4) and len(value) == 16 else "binary"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT32_MIN <= value <= _INT32_MAX else "long"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dt.datetime):
        return "date"
    return t.__name__


def join_path(segments: Iterable[str]) -> str:
    """``["address", "zip"]`` → ``address.zip``; dots and backslashes in names are escaped."""
    out = []
    for seg in segments:
        if seg == ARRAY_MARK:
            out.append(ARRAY_MARK)
        else:
            text = field_name(seg).replace("\\", "\\\\").replace(".", "\\.")
            out.append("\\[]" if text == ARRAY_MARK else text)
    return ".".join(out)


def split_path(path: str) -> list[str]:
    """Inverse of :func:`join_path`."""
    segments: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "\\" and i + 1 < len(path):
            nxt = path[i + 1]
            if nxt == "[" and path[i + 1 : i + 3] == "[]":
                buf.append(LITERAL_ARRAY_MARK)
                i += 3
                continue
            buf.append(nxt)
            i += 2
            continue
        if ch == ".":
            segments.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    segments.append("".join(buf))
    return segments


@dataclass(frozen=True)
class InferenceOptions:
    max_depth: int = 8
    example_values: int = 3
    enum_max_distinct: int = 12
    distinct_cap: int = 20000
    sensitive_fields: tuple[str, ...] = ()
    excluded_fields: tuple[str, ...] = ()
    type_overrides: Mapping[str, str] | None = None


_BIG = 2**62


class _Node:
    __slots__ = (
        "arr_count",
        "arr_max",
        "arr_min",
        "arr_total",
        "children",
        "distinct",
        "distinct_overflow",
        "elem",
        "nulls",
        "objects",
        "present",
        "str_max",
        "str_min",
        "str_total",
        "types",
    )

    def __init__(self) -> None:
        self.present = 0
        self.nulls = 0
        self.objects = 0
        self.types: dict[str, int] = {}
        self.children: dict[str, _Node] | None = None
        self.elem: _Node | None = None
        self.distinct: set[Any] | None = set()
        self.distinct_overflow = 0
        self.str_min = _BIG
        self.str_max = 0
        self.str_total = 0
        self.arr_count = 0
        self.arr_min = _BIG
        self.arr_max = 0
        self.arr_total = 0


class Profiler:
    """Accumulates per-path statistics over documents (one instance per collection)."""

    def __init__(self, options: InferenceOptions | None = None) -> None:
        self.options = options or InferenceOptions()
        self.root = _Node()
        self.documents = 0
        #: bumps whenever a new path or a new type of a path appears (adaptive sampling)
        self.novelty = 0
        self._ids: set[Any] = set()
        self._max_depth = self.options.max_depth
        self._cap = self.options.distinct_cap

    def seen(self, _id: Any) -> bool:
        """Whether a document with this ``_id`` was already profiled (sampling dedup)."""
        try:
            if _id in self._ids:
                return True
            self._ids.add(_id)
        except TypeError:  # unhashable _id (a sub-document): cannot dedup, keep it
            return False
        return False

    def add(self, document: Mapping[str, Any]) -> None:
        self.documents += 1
        self._object(self.root, document, 1)

    def add_many(self, documents: Iterable[Mapping[str, Any]]) -> None:
        obj = self._object
        root = self.root
        n = 0
        for doc in documents:
            obj(root, doc, 1)
            n += 1
        self.documents += n

    def _object(self, node: _Node, value: Mapping[str, Any], depth: int) -> None:
        node.objects += 1
        children = node.children
        if children is None:
            children = node.children = {}
        observe = self._observe
        for key, item in value.items():
            child = children.get(key)
            if child is None:
                child = children[key] = _Node()
                self.novelty += 1
            observe(child, item, depth)

    def _observe(self, node: _Node, value: Any, depth: int) -> None:
        # Hot loop: per value, one type dispatch, counters, and one set insertion. Ranges and
        # examples are derived from the distinct set when the profile is finalized.
        node.present += 1
        t = type(value)
        key: Any = value
        if t is str:
            name = "string"
            n = len(value)
            node.str_total += n
            if n > node.str_max:
                node.str_max = n
            if n < node.str_min:
                node.str_min = n
        elif t is int:
            name = "int" if _INT32_MIN <= value <= _INT32_MAX else "long"
        elif t is dict:
            name = "object"
            key = _NO_KEY
            if depth < self._max_depth:
                self._object(node, value, depth + 1)
        elif t is list:
            name = "array"
            key = _NO_KEY
            n = len(value)
            node.arr_count += 1
            node.arr_total += n
            if n > node.arr_max:
                node.arr_max = n
            if n < node.arr_min:
                node.arr_min = n
            if depth < self._max_depth:
                elem = node.elem
                if elem is None:
                    elem = node.elem = _Node()
                    self.novelty += 1
                observe = self._observe
                for item in value:
                    observe(elem, item, depth + 1)
        elif value is None:
            name = "null"
            node.nulls += 1
            key = _NO_KEY
        elif t is Decimal128:
            name = "decimal"
            key = value.bid
        else:
            name = _KEYED_AS_IS.get(t)  # type: ignore[assignment]
            if name is None:
                name = _SCALAR_TYPE_NAMES.get(t) or _type_name(value)
                key = _NO_KEY if name in _UNKEYED else _distinct_key(value, name)
        if key is not _NO_KEY:
            d = node.distinct
            if d is not None:
                d.add(key)
                if len(d) > self._cap:
                    node.distinct = None
                    node.distinct_overflow = 1
            else:
                node.distinct_overflow += 1
        types = node.types
        count = types.get(name)
        if count is None:
            types[name] = 1
            self.novelty += 1
        else:
            types[name] = count + 1


_NO_KEY = object()
#: types whose values are their own distinct key: one dict lookup in the hot loop
_KEYED_AS_IS: dict[type, str] = {
    float: "double",
    bool: "bool",
    ObjectId: "objectId",
    dt.datetime: "date",
    uuid.UUID: "uuid",
    Int64: "long",
}
_UNKEYED = frozenset(
    {"object", "array", "null", "regex", "minKey", "maxKey", "javascript", "dbRef", "timestamp"}
)


def _distinct_key(value: Any, name: str) -> Any:
    """A hashable stand-in for a value (binary → bytes, uuid as is, others by type)."""
    if name == "binary":
        return ("binary", bytes(value))
    if name == "uuid" and not isinstance(value, uuid.UUID):
        return uuid.UUID(bytes=bytes(value))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


_COEFFICIENT = (1 << 113) - 1


def bid_to_decimal(bid: bytes) -> Decimal:
    """Decimal128's 16 little-endian BID bytes → ``Decimal``, exactly.

    The common form (sign, 14-bit exponent, 113-bit coefficient) is decoded directly, which is
    about 20× faster than ``Decimal128.to_decimal``; other forms (NaN, ±Infinity, the
    large-coefficient encoding) go through PyMongo.
    """
    x = int.from_bytes(bid, "little")
    if (x >> 125) & 3 == 3:
        return Decimal128.from_bid(bid).to_decimal()
    exponent = ((x >> 113) & 0x3FFF) - 6176
    sign = "-" if x >> 127 else ""
    return Decimal(f"{sign}{x & _COEFFICIENT}E{exponent}")


def _from_key(key: Any) -> Any:
    """Inverse of the hot loop's keys: Decimal128 is kept as its 16 ``bid`` bytes."""
    if type(key) is bytes and len(key) == 16:
        return bid_to_decimal(key)
    return key


# --------------------------------------------------------------------------- finalize


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return to_jsonable(value, ValuePolicy(), ConversionStats())


def _sort_key(value: Any) -> tuple[str, str]:
    return (type(value).__name__, str(value))


_NUMBER_PY = (int, float, Decimal, Int64)


def _values(node: _Node) -> list[Any] | set[Any]:
    """The distinct values of a node (Decimal128 keys decoded); the set itself when possible."""
    d = node.distinct
    if not d:
        return []
    if "decimal" in node.types or "binary" in node.types:
        return [_from_key(k) for k in d]
    return d


def _range(node: _Node, values: list[Any] | set[Any]) -> tuple[Any, Any] | None:
    """(min, max) of the numbers, else of the dates, among the distinct values."""
    if not values:
        return None
    nonnull = node.types.keys() - {"null"}
    if nonnull & NUMERIC_TYPES:
        homogeneous = nonnull <= NUMERIC_TYPES and "double" not in nonnull
        candidates: Any = (
            values
            if homogeneous
            else [v for v in values if type(v) in _NUMBER_PY and v == v and abs(v) != math.inf]
        )
    elif "date" in nonnull:
        candidates = (
            values if nonnull == {"date"} else [v for v in values if type(v) is dt.datetime]
        )
    else:
        return None
    if not candidates:
        return None
    try:
        return min(candidates), max(candidates)
    except TypeError:  # naive and aware datetimes, or odd mixes: normalise and compare
        norm = [
            v.replace(tzinfo=dt.UTC) if isinstance(v, dt.datetime) and v.tzinfo is None else v
            for v in candidates
            if isinstance(v, (*_NUMBER_PY, dt.datetime))
        ]
        try:
            return (min(norm), max(norm)) if norm else None
        except TypeError:
            return None


def _smallest(k: int, values: list[Any] | set[Any], has_binary: bool = False) -> list[Any]:
    """The ``k`` smallest distinct values (deterministic examples), cheaply when homogeneous.

    Binary values are tracked as ``("binary", bytes)`` keys and are never examples.
    """
    plain = [v for v in values if not isinstance(v, tuple)] if has_binary else values
    try:
        return heapq.nsmallest(k, plain)
    except TypeError:
        return heapq.nsmallest(k, plain, key=_sort_key)


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _numeric_strings(node: _Node) -> bool:
    if not node.distinct:
        return False
    strings = [v for v in node.distinct if type(v) is str]
    return bool(strings) and all(_NUMBER_TEXT.match(s) for s in strings)


def _iso_strings(node: _Node) -> bool:
    if not node.distinct:
        return False
    strings = [v for v in node.distinct if type(v) is str]
    return bool(strings) and all(_ISO_TEXT.match(s) for s in strings)


_OVERRIDE_TYPES = {
    "text": "text",
    "integer": "integer",
    "bigint": "bigint",
    "numeric": "numeric",
    "double": "double precision",
    "boolean": "boolean",
    "timestamp": "timestamptz",
    "date": "date",
    "jsonb": "jsonb",
}


def sql_type_for(types: set[str], node: _Node | None = None) -> str:
    """The staging column type for a set of (non-null) BSON types."""
    if not types:
        return "text"
    if types <= {"int"}:
        return "integer"
    if types <= {"int", "long"}:
        return "bigint"
    if types <= {"int", "long", "double"}:
        return "double precision"
    if types <= NUMERIC_TYPES:
        return "numeric"
    if types == {"string"}:
        return "text"
    if types == {"bool"}:
        return "boolean"
    if types == {"date"}:
        return "timestamptz"
    if types == {"objectId"}:
        return "text"
    if types == {"uuid"}:
        return "uuid"
    if node is not None and types <= NUMERIC_TYPES | {"string"} and _numeric_strings(node):
        return "numeric"
    if node is not None and types == {"date", "string"} and _iso_strings(node):
        return "timestamptz"
    if types & {"object", "array", "timestamp", "regex", "minKey", "maxKey", "dbRef"}:
        return "jsonb"
    return "text"


def _redact(path: str, options: InferenceOptions) -> bool:
    """Whether ``path`` (or an ancestor) is marked sensitive."""
    plain = path.replace(".[]", "").replace("[]", "")
    for marked in options.sensitive_fields:
        if plain == marked or plain.startswith(marked + "."):
            return True
    return False


def _excluded(path: str, options: InferenceOptions) -> bool:
    plain = path.replace(".[]", "").replace("[]", "")
    return any(plain == m or plain.startswith(m + ".") for m in options.excluded_fields)


def _field_entry(
    segments: list[str], node: _Node, parent_count: int, options: InferenceOptions
) -> dict[str, Any]:
    path = join_path(segments)
    nonnull = {t for t in node.types if t != "null"}
    entry: dict[str, Any] = {
        "path": list(segments),
        "types": dict(sorted(node.types.items())),
        "count": node.present,
        "nulls": node.nulls,
        "presence": _ratio(node.present, parent_count),
        "null_ratio": _ratio(node.nulls, node.present),
        "required": node.present == parent_count and node.nulls == 0 and parent_count > 0,
        "nullable": node.nulls > 0 or node.present < parent_count,
    }
    if node.distinct is not None:
        entry["distinct"] = len(node.distinct)
        entry["distinct_exact"] = True
    else:
        tracked = options.distinct_cap
        seen = tracked + node.distinct_overflow
        # values after the cap were unseen before with probability ≈ tracked/seen → linear guess
        entry["distinct"] = max(tracked, int(tracked * seen / max(1, tracked)))
        entry["distinct_exact"] = False
    values = _values(node)
    lo_hi = _range(node, values)
    if lo_hi is not None:
        entry["min"] = _json_value(lo_hi[0])
        entry["max"] = _json_value(lo_hi[1])
        entry["range_exact"] = node.distinct_overflow == 0
    n_str = node.types.get("string", 0)
    if n_str:
        entry["string_length"] = {
            "min": max(node.str_min, 0),
            "max": node.str_max,
            "mean": round(node.str_total / n_str, 2),
        }
    if node.arr_count:
        elem_types = dict(sorted(node.elem.types.items())) if node.elem is not None else {}
        entry["array"] = {
            "min_length": max(node.arr_min, 0),
            "max_length": node.arr_max,
            "mean_length": round(node.arr_total / node.arr_count, 2),
            "element_types": elem_types,
        }
    sensitive = _redact(path, options)
    entry["sensitive"] = sensitive
    if options.example_values and not sensitive and nonnull - {"object", "array"}:
        examples = _smallest(options.example_values, values, "binary" in node.types)
        entry["examples"] = [_json_value(v) for v in examples]
    if (
        nonnull == {"string"}
        and not sensitive
        and node.distinct is not None
        and 0 < len(node.distinct) <= options.enum_max_distinct
        and node.present - node.nulls >= max(10, 2 * len(node.distinct))
        and segments != ["_id"]
    ):
        entry["enum"] = sorted(v for v in node.distinct if type(v) is str)
    return entry


def _walk(
    node: _Node,
    segments: list[str],
    parent_count: int,
    options: InferenceOptions,
    out: dict[str, dict[str, Any]],
) -> None:
    if node.children:
        for key in sorted(node.children):
            child = node.children[key]
            child_segments = [*segments, _segment(key)]
            path = join_path(child_segments)
            if _excluded(path, options):
                continue
            out[path] = _field_entry(child_segments, child, parent_count, options)
            if child.children:
                _walk(child, child_segments, child.objects, options, out)
            if child.elem is not None:
                elem_segments = [*child_segments, ARRAY_MARK]
                elem_count = sum(child.elem.types.values())
                out[join_path(elem_segments)] = _field_entry(
                    elem_segments, child.elem, elem_count, options
                )
                if child.elem.children:
                    _walk(child.elem, elem_segments, child.elem.objects, options, out)


def _node_at(root: _Node, segments: list[str]) -> _Node | None:
    node: _Node | None = root
    for seg in segments:
        if node is None:
            return None
        node = node.elem if seg == ARRAY_MARK else (node.children or {}).get(field_name(seg))
    return node


def _flattened_ancestors(fields: dict[str, dict[str, Any]], segs: list[str], depth: int) -> bool:
    """Whether every ancestor of ``segs`` inside the model is a plain object (flattened)."""
    for i in range(depth + 1, len(segs)):
        entry = fields.get(join_path(segs[:i]))
        if entry is not None and {t for t in entry["types"] if t != "null"} != {"object"}:
            return False
    return True


def _layout(
    fields: dict[str, dict[str, Any]],
    root: _Node,
    base: list[str],
    options: InferenceOptions,
) -> tuple[dict[str, dict[str, Any]], list[list[str]]]:
    """Columns of one model rooted at ``base`` (``[]`` for the document, else an array path).

    Objects are flattened into their leaves; arrays of objects become child models (returned as
    paths); everything else is one column. Returns ({path: column info}, child array paths).
    """
    columns: dict[str, dict[str, Any]] = {}
    children: list[list[str]] = []
    overrides = options.type_overrides or {}
    depth = len(base)
    for path, entry in fields.items():
        segs = entry["path"]
        if len(segs) <= depth or segs[:depth] != base:
            continue
        rel = segs[depth:]
        if ARRAY_MARK in rel:
            continue  # inside an array below this model: belongs to a child model
        if base == [] and rel == ["_id"]:
            continue
        nonnull = {t for t in entry["types"] if t != "null"}
        node = _node_at(root, segs)
        if nonnull == {"object"} and node is not None and node.children:
            continue  # flattened into its leaves (an object below max_depth stays jsonb)
        if not _flattened_ancestors(fields, segs, depth):
            continue  # an ancestor holds mixed values: it is one jsonb column instead
        elem = fields.get(join_path([*segs, ARRAY_MARK]))
        elem_types = {t for t in (elem or {}).get("types", {}) if t != "null"}
        if nonnull == {"array"} and elem_types == {"object"} and len(base) == 0:
            children.append(segs)
            continue
        plain = path.replace(".[]", "")
        sql_type = _OVERRIDE_TYPES.get(overrides.get(plain, ""), "") or sql_type_for(nonnull, node)
        columns[path] = {"sql_type": sql_type, "path": rel}
    names = assign_names(
        [join_path(c["path"]) for c in columns.values()], reserved=RESERVED_COLUMNS
    )
    for col in columns.values():
        col["column"] = names[join_path(col["path"])]
    return dict(sorted(columns.items())), children


def _timestamps(fields: dict[str, dict[str, Any]]) -> list[str]:
    found = []
    for path, entry in fields.items():
        nonnull = {t for t in entry["types"] if t != "null"}
        if nonnull == {"date"} and ARRAY_MARK not in entry["path"] and entry["presence"] >= 0.5:
            found.append(path)

    def rank(path: str) -> tuple[int, str]:
        last = path.rsplit(".", 1)[-1].lower()
        for i, word in enumerate(_TIME_NAMES):
            if word in last:
                return (i, path)
        return (len(_TIME_NAMES), path)

    return sorted(found, key=rank)


def _land_names(node: _Node) -> None:
    """Field names as warp lands them: a NUL stripped (``~nul`` where the stripped name is
    another field's; :func:`~cartridge_dagster.documents.landed_names`), so generated models
    read the landed paths. Only trees holding such a name change (in place)."""
    if node.children:
        keys = sorted(node.children)
        if any("\x00" in k for k in keys):
            renamed = landed_names(keys)
            node.children = {
                name: node.children[key] for key, (name, _) in zip(keys, renamed, strict=True)
            }
        for child in node.children.values():
            _land_names(child)
    if node.elem is not None:
        _land_names(node.elem)


def finalize(
    collection: str,
    profiler: Profiler,
    *,
    total_documents: int,
    method: str,
    rounds: int,
) -> dict[str, Any]:
    """The collection's schema as deterministic JSON-able data."""
    options = profiler.options
    _land_names(profiler.root)
    fields: dict[str, dict[str, Any]] = {}
    _walk(profiler.root, [], profiler.documents, options, fields)
    columns, arrays = _layout(fields, profiler.root, [], options)
    child_models: dict[str, dict[str, Any]] = {}
    for segs in arrays:
        elem_segs = [*segs, ARRAY_MARK]
        child_cols, _ = _layout(fields, profiler.root, elem_segs, options)
        child_models[join_path(segs)] = {"path": segs, "columns": child_cols}
    id_entry = fields.get("_id", {})
    timestamps = _timestamps(fields)
    return {
        "collection": collection,
        "source_kind": "mongodb",
        "documents_total": total_documents,
        "documents_sampled": profiler.documents,
        "sampling": {"method": method, "rounds": rounds},
        "primary_key": ["_id"],
        "id_types": sorted(t for t in id_entry.get("types", {}) if t != "null"),
        "fields": fields,
        "columns": columns,
        "arrays": child_models,
        "timestamps": timestamps,
        "incremental_key": timestamps[0] if timestamps else None,
        "references": {},
    }

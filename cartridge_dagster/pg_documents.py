"""PostgreSQL rows → analytics-friendly JSON (the raw landing contract for PostgreSQL sources).

A row lands as one JSON object, one key per column (generated columns excepted: PostgreSQL's
``pgoutput`` does not publish them), with each value as PostgreSQL's own ``to_jsonb`` writes
it in a session with ``TimeZone=UTC``, with two exceptions: ``bytea`` lands as base64, and
non-finite numbers follow ``dead_letter.non_finite_numbers``. So:

- numbers (smallint … numeric, real, double precision): JSON numbers, exact (``1.50`` keeps
  its scale); NaN and ±Infinity: ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, null or a dead
  letter (the policy);
- boolean: ``true``/``false``; json, jsonb: the JSON value itself; arrays: JSON arrays (nested
  for several dimensions), elements converted as their type;
- timestamptz: ``"2024-01-01T07:00:00.12+00:00"`` (UTC, the fraction as stored); timestamp:
  ``"2024-01-01T12:00:00"``; date: ``"2024-01-01"`` (BC values end in `` BC``; ``infinity``);
- bytea: base64; composite types and types with their own cast to json (hstore): their text;
- everything else (uuid, text, char(n), enums, time, interval, inet, money, ranges, …): the
  value's text as PostgreSQL writes it.

The same conversion runs in two places, held to the same bytes by
``tests/integration/test_pg_landing.py``: in SQL for snapshots (:func:`snapshot_expressions`:
the source server builds the JSON, warp passes it through) and in Python from the text
representation that logical replication and ``::text`` deliver (:class:`RowConverter`), which
is also the fallback for the rare rows SQL cannot convert the same way (a NaN the policy must
see, a ``json`` value holding ``\\u0000``, ``bytea[]``). Both require the session settings
:data:`SESSION_SETTINGS`.

The ``_id`` column of a row is its key: for a one-column key, the key's landed value as text
(``42``, ``b5c7…``, ``2024-01-01T00:00:00+00:00``); for a composite key, the compact JSON array
of the key's landed values in key order (``[42,"EU"]``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from cartridge_dagster.documents import (
    ConversionStats,
    UnlandableDocument,
    ValuePolicy,
    to_jsonable,
)
from cartridge_dagster.identifiers import quote_ident

__all__ = [
    "SESSION_SETTINGS",
    "Column",
    "RowConverter",
    "key_id",
    "kind_of_type",
    "output_text",
    "parse_array",
    "snapshot_expressions",
]

#: The settings every connection that reads values for landing runs with (the replication
#: connection included): values are then written the same way whatever the server's defaults.
SESSION_SETTINGS: Final[dict[str, str]] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}

#: Kinds of values (how a column's text becomes JSON). Arrays are ``<kind>[]``.
BASE_KINDS: Final = frozenset(
    {
        "bool",
        "int",
        "float",
        "string",
        "text",
        "timestamptz",
        "timestamp",
        "date",
        "json",
        "jsonb",
        "bytea",
    }
)
_BUILTIN_KINDS: Final[dict[int, str]] = {
    16: "bool",
    20: "int",
    21: "int",
    23: "int",
    700: "float",
    701: "float",
    1700: "float",
    1082: "date",
    1114: "timestamp",
    1184: "timestamptz",
    114: "json",
    3802: "jsonb",
    17: "bytea",
}
#: The first OID of objects created after initdb (built-in types are below it).
FIRST_NORMAL_OID: Final = 16384
NON_FINITE: Final = frozenset({"NaN", "Infinity", "-Infinity"})


def kind_of_type(
    oid: int, *, typtype: str, is_composite: bool = False, json_cast: bool = False
) -> str:
    """The kind of a (domain-resolved, non-array) type, as ``to_jsonb`` categorises it."""
    found = _BUILTIN_KINDS.get(oid)
    if found is not None:
        return found
    if typtype == "c" or is_composite:
        return "text"
    if json_cast and oid >= FIRST_NORMAL_OID:
        return "text"  # to_jsonb would use the type's own cast (hstore): land its text instead
    return "string"


@dataclass(frozen=True, slots=True)
class Column:
    """One landed column: its name, kind (``int``, ``timestamptz[]``, …) and, for arrays, the
    element delimiter."""

    name: str
    kind: str
    delim: str = ","

    @property
    def is_array(self) -> bool:
        return self.kind.endswith("[]")

    @property
    def element(self) -> str:
        return self.kind[:-2] if self.is_array else self.kind


# --------------------------------------------------------------------------- array literals


def parse_array(text: str, delim: str = ",") -> list[Any]:
    """A PostgreSQL array literal (as ``array_out`` writes it) → nested lists of element texts
    (``None`` for NULL). Bounds decoration (``[0:1]={…}``) is dropped, as ``to_jsonb`` drops it."""
    pos = 0
    if text.startswith("["):
        pos = text.index("=") + 1
    try:
        value, end = _parse_level(text, pos, delim)
    except IndexError:
        raise ValueError(f"unterminated array literal: {text[:80]!r}") from None
    if end != len(text):
        raise ValueError(f"trailing characters in array literal at {end}: {text[:80]!r}")
    return value


def _parse_level(text: str, pos: int, delim: str) -> tuple[list[Any], int]:
    if text[pos] != "{":
        raise ValueError(f"array literal must start with '{{': {text[:80]!r}")
    pos += 1
    out: list[Any] = []
    n = len(text)
    if pos < n and text[pos] == "}":
        return out, pos + 1
    while pos < n:
        ch = text[pos]
        if ch == "{":
            sub, pos = _parse_level(text, pos, delim)
            out.append(sub)
        elif ch == '"':
            pos += 1
            buf: list[str] = []
            while True:
                c = text[pos]
                if c == "\\":
                    buf.append(text[pos + 1])
                    pos += 2
                elif c == '"':
                    pos += 1
                    break
                else:
                    nxt = text.find('"', pos)
                    bsl = text.find("\\", pos)
                    stop = nxt if bsl < 0 or (0 <= nxt < bsl) else bsl
                    buf.append(text[pos:stop])
                    pos = stop
            out.append("".join(buf))
        else:
            start = pos
            while text[pos] != delim and text[pos] != "}":
                pos += 1
            token = text[start:pos].strip()
            out.append(None if token.upper() == "NULL" else token)
        c = text[pos]
        if c == delim:
            pos += 1
            continue
        if c == "}":
            return out, pos + 1
        raise ValueError(f"unexpected {c!r} in array literal at {pos}: {text[:80]!r}")
    raise ValueError(f"unterminated array literal: {text[:80]!r}")


# --------------------------------------------------------------------------- values


def _tstz(text: str) -> str:
    """ISO text in UTC (``2024-01-01 07:00:00.12+00``) → ``to_jsonb``'s (``…T…+00:00``)."""
    if not text[0].isdigit():
        return text  # infinity, -infinity
    space = text.index(" ")
    out = f"{text[:space]}T{text[space + 1 :]}"
    bc = out.endswith(" BC")
    core = out[:-3] if bc else out
    if len(core) > 3 and core[-3] in "+-" and core[-2:].isdigit():
        core += ":00"
    return core + (" BC" if bc else "")


def _ts(text: str) -> str:
    if not text[0].isdigit():
        return text
    space = text.index(" ")
    return f"{text[:space]}T{text[space + 1 :]}"


def _bytea(text: str) -> str:
    return base64.b64encode(bytes.fromhex(text[2:])).decode("ascii")


def _bool(text: str) -> bool:
    return text == "t"


def _number(text: str) -> Any:
    return orjson.Fragment(text)


Converter = Callable[[str], Any]

#: Kinds whose conversion needs no policy, and their converters (None: the text itself).
_PLAIN: Final[dict[str, Converter | None]] = {
    "bool": _bool,
    "int": _number,
    "string": None,
    "text": None,
    "date": None,
    "timestamptz": _tstz,
    "timestamp": _ts,
    "jsonb": orjson.Fragment,
    "bytea": _bytea,
}


def _key_part(kind: str, text: str) -> Any:
    """A key column's landed value (policies never apply to keys: a NaN key is ``"NaN"``)."""
    if kind == "float":
        return text if text in NON_FINITE else orjson.Fragment(text)
    if kind == "json":
        return orjson.Fragment(text)
    if kind.endswith("[]"):
        element = kind[:-2]
        return _map_array(parse_array(text), lambda t: _key_part(element, t))
    conv = _PLAIN.get(kind)
    return text if conv is None else conv(text)


def key_id(kinds: Sequence[str], texts: Sequence[str | None]) -> str:
    """The ``_id`` of a row from its key columns' texts (see the module docstring)."""
    if len(kinds) == 1:
        kind, text = kinds[0], texts[0]
        if text is None:
            return "null"
        if kind in ("int", "float", "string", "text", "date"):
            return text
        part = _key_part(kind, text)
        if isinstance(part, str):
            return part
        return orjson.dumps(part).decode()
    parts = [None if t is None else _key_part(k, t) for k, t in zip(kinds, texts, strict=True)]
    return orjson.dumps(parts).decode()


def _map_array(items: list[Any], fn: Callable[[str], Any]) -> list[Any]:
    return [
        None if item is None else (_map_array(item, fn) if isinstance(item, list) else fn(item))
        for item in items
    ]


@dataclass
class RowConverter:
    """Column texts → the landed JSON document, for one table's columns.

    ``policy`` and ``stats`` apply the value policies (counted per column path); ``excluded``
    lists dotted paths never landed (a column, or a path inside a json/jsonb column)."""

    columns: Sequence[Column]
    policy: ValuePolicy = field(default_factory=ValuePolicy)
    excluded: Sequence[Sequence[str]] = ()

    def __post_init__(self) -> None:
        self._plan: list[tuple[str, Converter | None, bool]] = []
        drop_top = {p[0] for p in self.excluded if len(p) == 1}
        self._nested = [list(p) for p in self.excluded if len(p) > 1]
        for col in self.columns:
            if col.name in drop_top:
                self._plan.append((col.name, None, True))
                continue
            plain = col.kind in _PLAIN and not any(p[0] == col.name for p in self._nested)
            self._plan.append((col.name, _PLAIN[col.kind] if plain else None, not plain))
        self._names = [c.name for c in self.columns]

    @property
    def names(self) -> list[str]:
        return self._names

    def document(self, texts: Sequence[str | None], stats: ConversionStats) -> bytes:
        """The JSON bytes of one row (raises :class:`UnlandableDocument` when a policy says
        dead letter). ``texts`` are in column order; ``None`` is NULL."""
        doc: dict[str, Any] = {}
        for (name, conv, special), text in zip(self._plan, texts, strict=True):
            if text is None:
                if not special or self._kept(name):
                    doc[name] = None
                continue
            if not special:
                doc[name] = text if conv is None else conv(text)
                continue
            if not self._kept(name):
                continue
            doc[name] = self._special(name, text, stats)
        return orjson.dumps(doc)

    def _kept(self, name: str) -> bool:
        return not any(len(p) == 1 and p[0] == name for p in self.excluded)

    def _column(self, name: str) -> Column:
        return self.columns[self._names.index(name)]

    def _special(self, name: str, text: str, stats: ConversionStats) -> Any:
        col = self._column(name)
        value = self.value(col, text, stats, name)
        for path in self._nested:
            if path[0] == name:
                value = _drop(value, path[1:])
        return value

    def value(self, col: Column, text: str, stats: ConversionStats, path: str) -> Any:
        """One column's landed value (policies applied and counted under ``path``)."""
        if col.is_array:
            element = col.element
            items = parse_array(text, col.delim)
            return _map_array(items, lambda t: self._scalar(element, t, stats, f"{path}[]"))
        return self._scalar(col.kind, text, stats, path)

    def _scalar(self, kind: str, text: str, stats: ConversionStats, path: str) -> Any:
        if kind == "float":
            if text in NON_FINITE:
                return _non_finite(text, self.policy, stats, path)
            return orjson.Fragment(text)
        if kind in ("json", "jsonb"):
            if "u0000" not in text and not self._nested:
                return orjson.Fragment(text)
            # a NUL (only json can hold one) must meet the policy: parse, convert, count
            return to_jsonable(orjson.loads(text), self.policy, stats, path)
        conv = _PLAIN[kind]
        return text if conv is None else conv(text)


def _non_finite(text: str, policy: ValuePolicy, stats: ConversionStats, path: str) -> Any:
    if policy.non_finite_numbers == "dead_letter":
        raise UnlandableDocument(
            f"column {path!r} holds {text}, which JSON cannot represent",
            path=path,
            reason="non_finite_number",
        )
    stats.note("non_finite", path)
    return None if policy.non_finite_numbers == "null" else text


def _drop(value: Any, path: Sequence[str]) -> Any:
    if isinstance(value, orjson.Fragment):
        value = orjson.loads(value.contents)
    node = value
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return value
    if isinstance(node, dict):
        node.pop(path[-1], None)
    return value


# --------------------------------------------------------------------------- SQL (snapshots)


def output_text(ref: str) -> str:
    """SQL for a value's text as its type's output function writes it (what logical
    replication sends). ``x::text`` is not always that: booleans cast to ``true``, char(n)
    loses its padding, inet gains a netmask."""
    return f"CASE WHEN {ref} IS NULL THEN NULL ELSE concat({ref}) END"


@dataclass(frozen=True)
class SnapshotSQL:
    """What a snapshot query adds to ``FROM <table> AS <alias>``: a lateral subquery of the
    landed values (``lateral``), the document built from it (``document``: JSON text), and
    the flag of rows the Python conversion must take instead (``slow``, None: never)."""

    lateral: str
    document: str
    slow: str | None


def snapshot_expressions(
    alias: str,
    columns: Sequence[Column],
    excluded: Sequence[Sequence[str]] = (),
    *,
    doc_alias: str = "_cartridge_row",
) -> SnapshotSQL:
    """SQL building each row's landed document on the source server, with the flag of rows
    :class:`RowConverter` must convert instead. ``alias`` is the table's alias in the query.

    The document is ``row_to_json`` of a lateral row of the landed values: JSON text built in
    one pass (no ``jsonb`` tree, no argument limit); the destination parses it into ``jsonb``,
    where it equals what ``to_jsonb`` would have built."""
    a = quote_ident(alias)
    drop_top = {p[0] for p in excluded if len(p) == 1}
    values: list[str] = []
    slow: list[str] = []
    for col in columns:
        if col.name in drop_top:
            continue
        ref = f"{a}.{quote_ident(col.name)}"
        element = col.element
        if col.kind == "text" or (col.is_array and element == "text"):
            expr = f"{ref}::text"
        elif col.kind == "bytea":
            expr = f"translate(encode({ref}, 'base64'), E'\\n', '')"
        elif col.is_array and element in ("bytea", "json"):
            expr = "NULL"
            slow.append(f"{ref} IS NOT NULL")
        else:
            expr = ref
            if col.kind == "json":  # json may hold \u0000, which jsonb refuses
                slow.append(f"strpos({ref}::text, 'u0000') > 0")
            elif col.kind == "float":
                slow.append(f"{ref} IN ('NaN', 'Infinity', '-Infinity')")
            elif col.kind == "float[]":
                slow.append(
                    f"'NaN' = ANY({ref}) OR 'Infinity' = ANY({ref}) OR '-Infinity' = ANY({ref})"
                )
        values.append(f"{expr} AS {quote_ident(col.name)}")
    nested = [p for p in excluded if len(p) > 1]
    if nested:
        # a path inside a json(b) column: the Python conversion drops it for every row
        slow.append("true")
    d = quote_ident(doc_alias)
    lateral = f"CROSS JOIN LATERAL (SELECT {', '.join(values) or 'NULL AS _'}) AS {d}"
    # ``alias.*``: the lateral row, even where the table has a column of the alias's name
    document = f"row_to_json({d}.*)" if values else "'{}'::json"
    flag = " OR ".join(f"({s})" for s in slow) if slow else None
    return SnapshotSQL(lateral, document, flag)


def raw_event(
    table: str, op: str, columns: Sequence[Column], texts: Sequence[str | None]
) -> dict[str, Any]:
    """A row that could not land, as kept in the dead-letter table (replayable)."""
    return {
        "cartridge_pg": 1,
        "table": table,
        "op": op,
        "columns": [[c.name, c.kind, c.delim] for c in columns],
        "values": list(texts),
    }


def columns_of_raw(raw: Mapping[str, Any]) -> list[Column]:
    return [Column(str(n), str(k), str(d)) for n, k, d in raw["columns"]]

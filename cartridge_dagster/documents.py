"""BSON documents → analytics-friendly JSON (the raw landing contract, docs/warp.md).

ObjectId → 24-hex string; datetime → ISO-8601 UTC string with milliseconds and ``Z``;
Decimal128 → an exact JSON number; Binary → base64 string (UUID subtypes 3/4 → canonical UUID
string); UUID → canonical string; Int64 → number; Timestamp → ``{"t": …, "i": …}``; Regex →
``{"$regex": …, "$options": "<letters>"}`` (MongoDB's letters, alphabetical); MinKey/MaxKey →
``{"$minKey": 1}``/``{"$maxKey": 1}``; Code → its source text; code with scope →
``{"$code": …, "$scope": {…}}``; DBRef → ``{"$ref": …, "$id": …}`` plus ``$db`` and any other
fields it carries; symbol → string; undefined → null; DBPointer → ``{"$ref": …, "$id": …}``.

Values PostgreSQL's ``jsonb`` cannot hold follow :class:`ValuePolicy`; every change a policy
makes to a value is counted per case and field path in :class:`ConversionStats` (the case
names are :data:`POLICY_CASES`):

- NUL (U+0000) in a string: stripped, or the document is rejected;
- NUL in a field name: stripped, or the document is rejected; a stripped name that would take
  the name of another field of the same object gets the suffix ``~nul`` (``~nul2``, … until it
  is unique): a field is never overwritten;
- NaN/±Infinity (double or Decimal128): the strings ``"NaN"``/``"Infinity"``/``"-Infinity"``,
  null, or the document is rejected;
- −0.0 (double or Decimal128): landed as 0 (PostgreSQL's ``numeric`` has no negative zero);
- dates outside years 1–9999: the string ``"<milliseconds since the epoch>ms"``.

Rejected documents raise :class:`UnlandableDocument`, which names the field path and the reason,
so the caller can dead-letter them; so does BSON that does not decode (:func:`decode_raw`).
Nothing is dropped silently.

Three implementations of the contract, each measured by ``tests/performance/bench_conversion.py``
and held to the same bytes by ``tests/unit/test_bson_corpus.py`` and the hypothesis tests:
:func:`to_jsonable` (the reference, and the only one that applies policies), the orjson fast
path of :func:`document_json` (dicts: the embedded engine's path), and the C extension behind
:func:`raw_document_json` (raw BSON: PyMongo's path). The fast ones step aside to the reference
wherever a policy or a rare type is involved.

:func:`canonical_hash` gives the same digest for a document converted here and for the same
document read back from ``jsonb``, which is what reconciliation compares.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

import bson
import orjson
from bson import (
    DBRef,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
)
from bson.binary import Binary, UuidRepresentation
from bson.code import Code
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument

from cartridge_dagster.errors import TerminalError

__all__ = [
    "POLICY_CASES",
    "ConversionStats",
    "UnlandableDocument",
    "ValuePolicy",
    "canonical_hash",
    "canonical_id",
    "decode_raw",
    "document_json",
    "landed_names",
    "raw_copy_rows",
    "raw_document_json",
    "split_documents",
    "split_event",
    "to_jsonable",
]

try:  # the C fast path (hatch_build.py compiles it at install; optional)
    from cartridge_dagster import _bsonjson
except ImportError:  # pragma: no cover - an install without a C compiler
    _bsonjson = None  # type: ignore[assignment]

#: Whether raw BSON converts in C (without building Python objects); see raw_document_json.
FAST_BSON: bool = _bsonjson is not None

#: How Cartridge decodes BSON (and how its PyMongo client is configured): timezone-aware UTC
#: datetimes, dates outside Python's range as ``DatetimeMS``, standard UUIDs.
DECODE_OPTIONS: Any = CodecOptions(
    tz_aware=True,
    tzinfo=dt.UTC,
    uuid_representation=UuidRepresentation.STANDARD,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)
#: The same, reading documents as ``RawBSONDocument`` (bytes, decoded only when looked into).
RAW_OPTIONS: Any = DECODE_OPTIONS.with_options(document_class=RawBSONDocument)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_UNPACK_QQ = struct.Struct("<QQ").unpack

PolicyCase = Literal[
    "nul_stripped",
    "nul_key_stripped",
    "nul_key_renamed",
    "non_finite",
    "negative_zero",
    "date_out_of_range",
]
#: Every change a policy makes to a value, as counted by :class:`ConversionStats`.
POLICY_CASES: Final[tuple[PolicyCase, ...]] = (
    "nul_stripped",  # NUL removed from a string value (policy nul_in_strings: strip)
    "nul_key_stripped",  # NUL removed from a field name (policy nul_in_strings: strip)
    "nul_key_renamed",  # ... and the name taken by another field: suffixed ``~nul``
    "non_finite",  # NaN/±Infinity as a string or null (policy non_finite_numbers)
    "negative_zero",  # -0.0 landed as 0 (jsonb's numeric has no negative zero)
    "date_out_of_range",  # a date outside years 1-9999 landed as "<millis>ms"
)

#: The suffix a NUL-stripped field name takes when another field already has its name.
NUL_KEY_SUFFIX: Final = "~nul"

#: MongoDB's regex option letters for Python's ``re`` flags (PyMongo decodes options to them).
_REGEX_LETTERS: Final = (
    (re.IGNORECASE, "i"),
    (re.LOCALE, "l"),
    (re.MULTILINE, "m"),
    (re.DOTALL, "s"),
    (re.UNICODE, "u"),
    (re.VERBOSE, "x"),
)


class UnlandableDocument(TerminalError):
    """A document that cannot be landed under the configured policy (goes to dead letters).

    ``reason`` is one of ``nul_in_string``, ``nul_in_key``, ``non_finite_number``,
    ``invalid_bson``, ``oversized``; ``path`` is the field path (empty for the document)."""

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ValuePolicy:
    nul_in_strings: Literal["strip", "dead_letter"] = "strip"
    non_finite_numbers: Literal["string", "null", "dead_letter"] = "string"


@dataclass
class ConversionStats:
    """What the value policies changed: ``counts[case][field path]`` (cases: POLICY_CASES).

    Field paths are dotted (``a.b``), ``[]`` marks array elements (``items[].price``), and a
    renamed field is counted under its landed name. A dead letter is not counted here (it
    changes nothing: the dead-letter table has it)."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def note(self, case: PolicyCase, path: str) -> None:
        by_path = self.counts.get(case)
        if by_path is None:
            by_path = self.counts[case] = {}
        by_path[path] = by_path.get(path, 0) + 1

    def total(self, case: PolicyCase) -> int:
        return sum(self.counts.get(case, {}).values())

    def merge(self, other: ConversionStats) -> None:
        for case, by_path in other.counts.items():
            mine = self.counts.setdefault(case, {})
            for path, n in by_path.items():
                mine[path] = mine.get(path, 0) + n

    def as_dict(self) -> dict[str, dict[str, int]]:
        """The counts as sorted JSON-able data (for asset metadata and ``warp status``)."""
        return {
            case: dict(sorted(self.counts[case].items()))
            for case in POLICY_CASES
            if self.counts.get(case)
        }

    def __bool__(self) -> bool:
        return any(self.counts.values())

    @property
    def nul_stripped(self) -> int:
        """NULs removed, from string values and from field names (renamed ones included)."""
        return (
            self.total("nul_stripped")
            + self.total("nul_key_stripped")
            + self.total("nul_key_renamed")
        )

    @property
    def non_finite(self) -> int:
        return self.total("non_finite")

    @property
    def out_of_range_dates(self) -> int:
        return self.total("date_out_of_range")

    @property
    def by_field(self) -> dict[str, int]:
        """Changes per field path, all cases together."""
        out: dict[str, int] = {}
        for by_path in self.counts.values():
            for path, n in by_path.items():
                out[path] = out.get(path, 0) + n
        return dict(sorted(out.items()))


def decode_raw(raw: bytes | memoryview) -> dict[str, Any]:
    """BSON bytes → a document (:data:`DECODE_OPTIONS`); BSON that does not decode raises
    :class:`UnlandableDocument` (reason ``invalid_bson``) saying why."""
    try:
        return bson.decode(raw, DECODE_OPTIONS)  # type: ignore[no-any-return]
    except (bson.errors.InvalidBSON, ValueError, TypeError, OverflowError) as exc:
        raise UnlandableDocument(
            f"the document is not valid BSON ({len(raw)} bytes): {exc}",
            path="",
            reason="invalid_bson",
        ) from None


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is None:  # naive datetimes are UTC (the embedded engine returns them)
        return value.isoformat(timespec="milliseconds") + "Z"
    if value.utcoffset():
        value = value.astimezone(dt.UTC)
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _datetime_ms(value: DatetimeMS, stats: ConversionStats, path: str) -> str:
    millis = int(value)
    try:
        return _iso(_EPOCH + dt.timedelta(milliseconds=millis))
    except OverflowError:
        stats.note("date_out_of_range", path)
        return f"{millis}ms"


def _oid_hex(value: ObjectId) -> str:
    """``str(ObjectId)`` at half the cost: the 12 bytes PyMongo keeps in a slot, as hex."""
    try:
        return value._ObjectId__id.hex()  # type: ignore[attr-defined, no-any-return]
    except AttributeError:  # a PyMongo without the slot
        return str(value)


def canonical_id(value: Any) -> str:
    """The ``_id`` column value: ObjectId as 24 hex chars, strings as is, others as JSON."""
    if type(value) is ObjectId:
        return _oid_hex(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000")
    jsonable = to_jsonable(value, ValuePolicy(), ConversionStats(), "_id")
    return orjson.dumps(jsonable, option=orjson.OPT_SORT_KEYS).decode()


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _regex_options(value: Regex[Any] | re.Pattern[Any]) -> str:
    flags = int(value.flags)
    if isinstance(value, re.Pattern) and isinstance(value.pattern, str):
        flags &= ~re.UNICODE  # implied by every str pattern, not an option someone chose
    return "".join(letter for flag, letter in _REGEX_LETTERS if flags & flag)


def _regex(
    value: Regex[Any] | re.Pattern[Any], policy: ValuePolicy, stats: ConversionStats, path: str
) -> dict[str, Any]:
    pattern = value.pattern
    if isinstance(pattern, bytes):
        pattern = pattern.decode("utf-8", errors="replace")
    return {"$regex": to_jsonable(pattern, policy, stats, path), "$options": _regex_options(value)}


def landed_names(keys: list[str]) -> list[tuple[str, PolicyCase | None]]:
    """The names the fields of one object land under (policy ``nul_in_strings: strip``), in
    order, with the policy case each name change is counted as (``None``: unchanged).

    A NUL is stripped from a name; a stripped name that another field of the object already
    has (or that an earlier stripped name took) gets :data:`NUL_KEY_SUFFIX` (``~nul``, then
    ``~nul2``, …): no field ever lands on top of another."""
    taken = {k for k in keys if "\x00" not in k}
    out: list[tuple[str, PolicyCase | None]] = []
    for key in keys:
        if "\x00" not in key:
            out.append((key, None))
            continue
        stripped = name = key.replace("\x00", "")
        case: PolicyCase = "nul_key_stripped"
        n = 1
        while name in taken:
            case = "nul_key_renamed"
            name = f"{stripped}{NUL_KEY_SUFFIX}{n if n > 1 else ''}"
            n += 1
        taken.add(name)
        out.append((name, case))
    return out


def _object(
    value: Mapping[Any, Any], policy: ValuePolicy, stats: ConversionStats, path: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = [str(k) for k in value]
    if not any("\x00" in k for k in keys):
        for key, item in zip(keys, value.values(), strict=True):
            out[key] = to_jsonable(item, policy, stats, _child(path, key))
        return out
    # A NUL in a field name: strip it, never onto the name of another field of this object.
    if policy.nul_in_strings == "dead_letter":
        key = next(k for k in keys if "\x00" in k)
        raise UnlandableDocument(
            f"the field name {key!r} under {path or '(root)'!r} contains a NUL character",
            path=path,
            reason="nul_in_key",
        )
    for (name, case), item in zip(landed_names(keys), value.values(), strict=True):
        if case is not None:
            stats.note(case, _child(path, name))
        out[name] = to_jsonable(item, policy, stats, _child(path, name))
    return out


def to_jsonable(value: Any, policy: ValuePolicy, stats: ConversionStats, path: str = "") -> Any:
    """Convert one BSON value (recursively) to JSON-able Python: the reference conversion."""
    if isinstance(value, Code):  # a str subclass: before str, or its scope is lost
        text = to_jsonable(str(value), policy, stats, path)
        if value.scope is None:
            return text
        return {"$code": text, "$scope": _object(value.scope, policy, stats, f"{path}.$scope")}
    if isinstance(value, str):
        if "\x00" in value:
            if policy.nul_in_strings == "dead_letter":
                raise UnlandableDocument(
                    f"field {path or '(root)'!r} contains a NUL character",
                    path=path,
                    reason="nul_in_string",
                )
            stats.note("nul_stripped", path)
            return value.replace("\x00", "")
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):  # Int64 is an int
        return int(value)
    if isinstance(value, float):
        if value == 0.0 and math.copysign(1.0, value) < 0:
            stats.note("negative_zero", path)
            return 0.0
        if math.isfinite(value):
            return value
        return _non_finite(str(value), policy, stats, path)
    if isinstance(value, DBRef):  # $ref, $id, then $db and extra fields, in that order
        return _object(value.as_doc(), policy, stats, path)
    if isinstance(value, dict):
        return _object(value, policy, stats, path)
    if isinstance(value, list | tuple):
        child = f"{path}[]"
        return [to_jsonable(item, policy, stats, child) for item in value]
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, Decimal128):
        return _decimal(value.to_decimal(), policy, stats, path)
    if isinstance(value, Decimal):
        return _decimal(value, policy, stats, path)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Binary):
        if value.subtype in (3, 4) and len(value) == 16:
            return str(uuid.UUID(bytes=bytes(value)))
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, DatetimeMS):
        return _datetime_ms(value, stats, path)
    if isinstance(value, Timestamp):
        return {"t": value.time, "i": value.inc}
    if isinstance(value, Regex | re.Pattern):
        return _regex(value, policy, stats, path)
    if isinstance(value, MinKey):
        return {"$minKey": 1}
    if isinstance(value, MaxKey):
        return {"$maxKey": 1}
    if isinstance(value, Mapping):
        return _object(value, policy, stats, path)
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _decimal(dec: Decimal, policy: ValuePolicy, stats: ConversionStats, path: str) -> Any:
    if not dec.is_finite():
        text = "NaN" if dec.is_nan() else ("-Infinity" if dec.is_signed() else "Infinity")
        return _non_finite(text, policy, stats, path)
    if dec.is_signed() and dec.is_zero():
        stats.note("negative_zero", path)
        dec = dec.copy_abs()
    return orjson.Fragment(str(dec))


def _decimal_text(dec: Decimal) -> str:
    """A finite, non-negative-zero ``Decimal`` as a JSON number: its ``str`` (``1E+3`` is
    valid JSON)."""
    return str(dec)


def _non_finite(text: str, policy: ValuePolicy, stats: ConversionStats, path: str) -> Any:
    if policy.non_finite_numbers == "dead_letter":
        raise UnlandableDocument(
            f"field {path or '(root)'!r} holds {text}, which JSON cannot represent",
            path=path,
            reason="non_finite_number",
        )
    stats.note("non_finite", path)
    if policy.non_finite_numbers == "null":
        return None
    return text.replace("inf", "Infinity").replace("nan", "NaN")


class _NeedsPolicy(Exception):
    """The fast path met a value a policy must decide on: use the full conversion."""


_D128_SPECIAL = 3 << 61
_D128_MAX_COEFFICIENT = 10**34 - 1


def _decimal128_parts(value: Decimal128) -> tuple[int, int]:
    """(high, low) 64-bit halves; PyMongo keeps them in slots (``bid`` packs them to bytes)."""
    try:
        return value._Decimal128__high, value._Decimal128__low  # type: ignore[attr-defined]
    except AttributeError:  # a PyMongo without the slots: the public (slower) way
        low, high = _UNPACK_QQ(value.bid)
        return high, low


def _decimal128_text(value: Decimal128) -> str:
    """``Decimal128`` → the same text as ``str(value.to_decimal())``, without PyMongo's slow
    pure-Python ``to_decimal`` for the common (finite, canonical) encodings.

    Plain notation (what ``Decimal.__str__`` prints when the exponent is <= 0 and the adjusted
    exponent >= -6: prices, quantities, amounts) is formatted here; other forms go through
    ``Decimal``."""
    high, low = _decimal128_parts(value)
    if high & _D128_SPECIAL == _D128_SPECIAL:
        raise _NeedsPolicy  # NaN, Infinity, or the rare large-coefficient form
    coefficient = ((high & 0x1FFFFFFFFFFFF) << 64) | low
    if coefficient > _D128_MAX_COEFFICIENT:
        raise _NeedsPolicy
    exponent = ((high >> 49) & 0x3FFF) - 6176
    sign = "-" if high >> 63 else ""
    if sign and not coefficient:
        raise _NeedsPolicy  # -0: the negative-zero policy counts it
    digits = str(coefficient)
    size = len(digits)
    if exponent <= 0 and exponent + size > -6:
        if exponent == 0:
            text = digits
        elif size > -exponent:
            text = f"{digits[:exponent]}.{digits[exponent:]}"
        else:
            text = "0." + "0" * (-exponent - size) + digits
        return sign + text
    return _decimal_text(Decimal(f"{sign}{coefficient}E{exponent}"))


def _binary_text(value: Binary) -> str:
    if value.subtype in (3, 4) and len(value) == 16:
        return str(uuid.UUID(bytes=bytes(value)))
    return base64.b64encode(bytes(value)).decode("ascii")


def _decimal128_fragment(value: Decimal128) -> Any:
    return orjson.Fragment(_decimal128_text(value))


_FAST_TYPES: dict[type, Any] = {
    Int64: int,  # orjson hands subclasses to ``default`` (OPT_PASSTHROUGH_SUBCLASS)
    ObjectId: _oid_hex,
    dt.datetime: _iso,
    Decimal128: _decimal128_fragment,
    Binary: _binary_text,
    bytes: lambda v: base64.b64encode(v).decode("ascii"),
    Timestamp: lambda v: {"t": v.time, "i": v.inc},
}


def _fast_default(value: Any) -> Any:
    """orjson's ``default`` for BSON types; anything a policy must see goes the slow way."""
    convert = _FAST_TYPES.get(type(value))
    if convert is not None:
        return convert(value)
    if (
        isinstance(value, Decimal)
        and value.is_finite()
        and not (value.is_signed() and value.is_zero())
    ):
        return orjson.Fragment(_decimal_text(value))
    # Subclasses of str (Code: its scope must not vanish) and anything else rare: the
    # reference conversion decides.
    raise _NeedsPolicy


def _special_float(value: float) -> bool:
    """NaN, ±Infinity or -0.0: ``x - x`` is NaN for the first three, ``0.0`` for every finite
    float, and ``copysign`` tells the zeros apart."""
    return bool(value - value != 0.0) or (value == 0.0 and math.copysign(1.0, value) < 0)


def _has_special_float(value: Any) -> bool:
    """Whether a float a policy must see (NaN, ±Infinity, -0.0) hides anywhere in ``value``
    (dicts and lists walked; scalars are never pushed on a stack)."""
    kind = type(value)
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    elif kind is float:
        return _special_float(value)
    elif isinstance(value, dict):
        items = value.values()
    else:
        return False
    for item in items:
        kind = type(item)
        if kind is float:
            if (item - item != 0.0) or (item == 0.0 and math.copysign(1.0, item) < 0):
                return True
        elif kind in _SCALARS:
            continue
        elif _has_special_float(item):
            return True
    return False


#: Types that can hold no float: the walk skips them without a call.
_SCALARS = frozenset(
    {str, int, bool, type(None), ObjectId, dt.datetime, Decimal128, Binary, bytes, uuid.UUID}
)


#: ``datetime`` and subclasses of ``str``/``int``/``dict``/``list`` go through ``default``:
#: ``Code`` is a ``str`` whose scope orjson would drop, ``Int64`` an ``int``.
_FAST_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def document_json(
    document: dict[str, Any],
    policy: ValuePolicy | None = None,
    stats: ConversionStats | None = None,
) -> bytes:
    """The ``document`` column value (JSON bytes) for one BSON document.

    Fast path: orjson walks the document natively (BSON types through ``default``; rarer types
    and values a policy must see raise to leave it); the output is only kept when no policy
    applies: no ``\u0000`` escape (a NUL in a string or key) and, when the output has a
    ``null`` (orjson writes NaN/Infinity as null) or a ``-0.0``, no such float in the document.
    Otherwise the reference conversion (:func:`to_jsonable`) runs, applies the policies and
    counts. Both give the same bytes for documents the fast path accepts.
    """
    try:
        out = orjson.dumps(document, default=_fast_default, option=_FAST_OPTIONS)
    except (_NeedsPolicy, orjson.JSONEncodeError, TypeError):
        out = None
    if (
        out is not None
        and b"\\u0000" not in out
        and ((b"null" not in out and b"-0.0" not in out) or not _has_special_float(document))
    ):
        return out
    stats = stats if stats is not None else ConversionStats()
    return orjson.dumps(to_jsonable(document, policy or ValuePolicy(), stats))


def raw_document_json(raw: bytes | memoryview) -> tuple[str, bytes] | None:
    """``(canonical_id(_id), document_json(document))`` straight from BSON bytes, or ``None``.

    The C fast path (``_bsonjson.c``) for documents read raw (PyMongo's ``RawBSONDocument``):
    no Python objects are built for the document. It writes the bytes :func:`document_json`
    writes for the common BSON types and returns ``None`` for anything a policy or the Python
    conversion must decide (NUL, NaN, rarer types, dates out of range, an unusual ``_id``);
    the caller then decodes with :data:`DECODE_OPTIONS` and converts in Python.
    """
    if _bsonjson is None:
        return None
    return _bsonjson.convert(raw)


def raw_copy_rows(
    docs: Sequence[bytes | memoryview], tail: bytes, max_bytes: int
) -> tuple[bytes, int, list[int]] | None:
    """A page of raw BSON documents as rows of PostgreSQL's binary COPY format, in C: for each
    document :func:`raw_document_json` converts whose JSON is at most ``max_bytes`` long, the
    fields ``_id`` (its canonical text), ``document`` (``jsonb``: version 1, then that JSON)
    and then ``tail`` (the page's other fields, already in COPY's format). Returns the rows (no
    header or trailer), how many, and the indexes of the documents left to the Python
    conversion, in order; ``None`` without the extension."""
    if _bsonjson is None:
        return None
    return _bsonjson.copy_rows(docs, tail, max_bytes)


def split_documents(array: bytes) -> list[bytes] | None:
    """The documents of a BSON array (a cursor reply's batch) as their own BSON bytes, in
    order, cut in C (elements that are not documents skipped); ``None`` without the extension
    or when the array does not frame exactly."""
    if _bsonjson is None:
        return None
    return _bsonjson.documents(array)


def split_event(raw: bytes | memoryview) -> tuple[bytes, bytes | None, bytes | None] | None:
    """A change event's BSON → (the event without ``fullDocument`` and
    ``fullDocumentBeforeChange``, those documents' BSON or ``None``), in C; ``None`` without
    the extension or for BSON it cannot walk."""
    if _bsonjson is None:
        return None
    return _bsonjson.split_event(raw)


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        return orjson.Fragment(format(value.normalize(), "f"))
    if isinstance(value, float):
        return _canonical(Decimal(repr(value)))
    return value


def canonical_hash(json_text: str | bytes) -> str:
    """SHA-256 of a JSON document in canonical form (sorted keys, normalised numbers).

    The same document gives the same digest whether it comes from :func:`document_json` or is
    read back from PostgreSQL's ``jsonb`` (which reorders keys and keeps numbers exactly).
    """
    parsed = json.loads(json_text, parse_float=Decimal, parse_int=Decimal)
    canonical = orjson.dumps(_canonical(parsed), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()

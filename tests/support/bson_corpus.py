"""MongoDB's BSON corpus (``../shared/specs/bson-corpus/``) and an oracle for the landing contract.

The oracle reads a case's canonical Extended JSON by hand (plain ``json``, no PyMongo and none of
Cartridge's converters) and says what the landed JSON must mean: numbers exact, dates the same
instant, strings equal (NUL stripped), DBRef fields kept, code with scope kept, regex options as
MongoDB's letters, and which value policy must count what at which field path.

The corpus lives beside the repository (``<parent>/shared/specs``: CI clones the repository as
``<x>/main`` next to ``<x>/shared``). A missing corpus is an error, never a skip.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.support.services import REPO

SPECS = Path(REPO).parent / "shared" / "specs"
CORPUS = SPECS / "bson-corpus"

__all__ = [
    "CORPUS",
    "Case",
    "DecodeError",
    "Expectation",
    "check_meaning",
    "decode_errors",
    "expect",
    "valid_cases",
    "with_id",
]


class CorpusMissing(RuntimeError):
    pass


def _files() -> list[Path]:
    files = sorted(CORPUS.glob("*.json"))
    if not files:
        raise CorpusMissing(
            f"MongoDB's BSON corpus is not at {CORPUS} (expected <repo>/../shared/specs/"
            "bson-corpus/*.json, see shared/specs/README.md)"
        )
    return files


@dataclass(frozen=True)
class Case:
    file: str
    description: str
    bson: bytes
    extjson: str  # canonical Extended JSON
    degenerate: bool = False

    @property
    def id(self) -> str:
        return f"{self.file}: {self.description}{' (degenerate)' if self.degenerate else ''}"


@dataclass(frozen=True)
class DecodeError:
    file: str
    description: str
    bson: bytes

    @property
    def id(self) -> str:
        return f"{self.file}: {self.description}"


def valid_cases() -> list[Case]:
    out = []
    for path in _files():
        data = json.loads(path.read_text(encoding="utf-8"))
        for case in data.get("valid", []):
            ext = case["canonical_extjson"]
            out.append(
                Case(path.stem, case["description"], bytes.fromhex(case["canonical_bson"]), ext)
            )
            if "degenerate_bson" in case:
                out.append(
                    Case(
                        path.stem,
                        case["description"],
                        bytes.fromhex(case["degenerate_bson"]),
                        ext,  # a degenerate encoding means the canonical Extended JSON
                        degenerate=True,
                    )
                )
    return out


def decode_errors() -> list[DecodeError]:
    out = []
    for path in _files():
        data = json.loads(path.read_text(encoding="utf-8"))
        for case in data.get("decodeErrors", []):
            out.append(DecodeError(path.stem, case["description"], bytes.fromhex(case["bson"])))
    return out


def with_id(raw: bytes, value: int = 1) -> bytes:
    """``raw`` with an ``_id: value`` (int32) element first; the stated length moves by the
    same amount, so a framing error stays exactly as wrong as it was."""
    (stated,) = struct.unpack("<i", raw[:4])
    element = b"\x10_id\x00" + struct.pack("<i", value)
    return struct.pack("<i", stated + len(element)) + element + raw[4:]


# --------------------------------------------------------------------------- the oracle


@dataclass(frozen=True)
class Exact:
    value: Any  # str, int, bool, None: equal, type included


@dataclass(frozen=True)
class Double:
    value: float  # the same double (the landed text parses back to it)


@dataclass(frozen=True)
class Dec:
    value: Decimal  # the same digits and exponent


@dataclass(frozen=True)
class Instant:
    millis: int  # an ISO-8601 UTC string naming this millisecond


@dataclass(frozen=True)
class Bytes:
    data: bytes  # a base64 string of these bytes


@dataclass
class Expectation:
    tree: Any
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: every value is of a type the C path converts itself (and no policy applies)
    c_handles: bool = True


_MIN_MS = -62135596800000  # 0001-01-01T00:00:00.000Z
_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
_REGEX_LETTERS = "ilmsux"  # what PyMongo keeps of MongoDB's options (alphabetical)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def expect(extjson: str) -> Expectation:
    """What the landed JSON of a document with this canonical Extended JSON must mean."""
    out = Expectation(tree=None)
    parsed = json.loads(extjson, object_pairs_hook=_Pairs)
    out.tree = _document(parsed, "", out)
    return out


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, in order (duplicates and all)."""


def _document(pairs: list[tuple[str, Any]], path: str, out: Expectation) -> dict[str, Any]:
    return {key: _value(value, _child(path, key), out) for key, value in pairs}


def _string(text: str, path: str, out: Expectation) -> Exact:
    if "\x00" in text:
        out.counts[("nul_stripped", path)] += 1
        out.c_handles = False
    return Exact(text.replace("\x00", ""))


def _value(value: Any, path: str, out: Expectation) -> Any:
    if isinstance(value, str):
        return _string(value, path, out)
    if isinstance(value, bool) or value is None:
        return Exact(value)
    if not isinstance(value, _Pairs):
        assert isinstance(value, list), value
        return [_value(v, f"{path}[]", out) for v in value]
    keys = [k for k, _ in value]
    v = dict(value)
    if keys == ["$oid"]:
        return Exact(v["$oid"])
    if keys in (["$numberInt"], ["$numberLong"]):
        return Exact(int(v[keys[0]]))
    if keys == ["$numberDouble"]:
        text = v["$numberDouble"]
        if text in ("NaN", "Infinity", "-Infinity"):
            out.counts[("non_finite", path)] += 1
            out.c_handles = False
            return Exact(text)
        if text == "-0.0":
            out.counts[("negative_zero", path)] += 1
            out.c_handles = False
            return Double(0.0)
        return Double(float(text))
    if keys == ["$numberDecimal"]:
        dec = Decimal(v["$numberDecimal"])
        if not dec.is_finite():
            out.counts[("non_finite", path)] += 1
            out.c_handles = False
            text = "NaN" if dec.is_nan() else ("-Infinity" if dec.is_signed() else "Infinity")
            return Exact(text)
        if dec.is_zero() and dec.is_signed():
            out.counts[("negative_zero", path)] += 1
            out.c_handles = False
            dec = dec.copy_abs()
        exponent = int(dec.as_tuple().exponent)
        if not (exponent <= 0 and dec.adjusted() >= -6):
            out.c_handles = False  # the C path writes plain notation only
        return Dec(dec)
    if keys == ["$date"]:
        millis = int(dict(v["$date"])["$numberLong"])
        if not _MIN_MS <= millis <= _MAX_MS:
            out.counts[("date_out_of_range", path)] += 1
            out.c_handles = False
            return Exact(f"{millis}ms")
        return Instant(millis)
    if keys == ["$binary"]:
        b = dict(v["$binary"])
        data = base64.b64decode(b["base64"])
        subtype = int(b["subType"], 16)
        if subtype == 2:
            out.c_handles = False
        if subtype in (3, 4) and len(data) == 16:
            return Exact(str(uuid.UUID(bytes=data)))
        return Bytes(data)
    if keys == ["$timestamp"]:
        ts = dict(v["$timestamp"])
        out.c_handles = False
        return {"t": Exact(ts["t"]), "i": Exact(ts["i"])}
    if keys == ["$regularExpression"]:
        rx = dict(v["$regularExpression"])
        out.c_handles = False
        options = "".join(c for c in _REGEX_LETTERS if c in rx["options"])
        return {"$regex": _string(rx["pattern"], path, out), "$options": Exact(options)}
    if keys == ["$code"]:
        out.c_handles = False
        return _string(v["$code"], path, out)
    if keys == ["$code", "$scope"]:
        out.c_handles = False
        return {
            "$code": _string(v["$code"], path, out),
            "$scope": _document(v["$scope"], f"{path}.$scope", out),
        }
    if keys == ["$symbol"]:
        out.c_handles = False
        return _string(v["$symbol"], path, out)
    if keys == ["$undefined"]:
        out.c_handles = False
        return Exact(None)
    if keys in (["$minKey"], ["$maxKey"]):
        out.c_handles = False
        return {keys[0]: Exact(1)}
    if keys == ["$dbPointer"]:
        out.c_handles = False
        ref = dict(v["$dbPointer"])
        return {
            "$ref": _string(ref["$ref"], f"{path}.$ref", out),
            "$id": Exact(dict(ref["$id"])["$oid"]),
        }
    return _document(value, path, out)  # a plain sub-document (DBRefs included)


def check_meaning(expected: Any, landed: Any, where: str = "", *, stored: bool = False) -> None:
    """Assert that ``landed`` (``json.loads(..., parse_float=Decimal)``) means ``expected``.

    ``stored``: ``landed`` was read back from PostgreSQL's ``jsonb`` (and parsed with
    ``parse_int=Decimal`` too: ``1E+6144`` comes back as 6,145 digits), which orders keys its own
    way and prints numbers as ``numeric`` does (``1e+16`` → ``10000000000000000``): keys are
    compared as sets and numbers by value."""
    if isinstance(expected, dict):
        assert isinstance(landed, dict), (where, landed)
        if stored:
            assert set(landed) == set(expected), (where, sorted(landed), sorted(expected))
        else:
            assert list(landed) == list(expected), (where, list(landed), list(expected))
        for key in expected:
            check_meaning(expected[key], landed[key], _child(where, key), stored=stored)
    elif isinstance(expected, list):
        assert isinstance(landed, list) and len(landed) == len(expected), (where, landed)
        for i, (e, got) in enumerate(zip(expected, landed, strict=True)):
            check_meaning(e, got, f"{where}[{i}]", stored=stored)
    elif isinstance(expected, Exact) and stored and type(expected.value) is int:
        assert isinstance(landed, Decimal) and landed == expected.value, (where, landed)
    elif isinstance(expected, Exact):
        assert type(landed) is type(expected.value) and landed == expected.value, (
            where,
            landed,
            expected.value,
        )
    elif isinstance(expected, Double):
        # a double lands as a JSON number with a fraction or an exponent (never as an int)
        assert isinstance(landed, Decimal), (where, landed)
        assert float(landed) == expected.value, (where, landed, expected.value)
        assert str(landed)[0] != "-" or expected.value < 0, (where, landed)
    elif isinstance(expected, Dec):
        assert isinstance(landed, Decimal | int) and not isinstance(landed, bool), (where, landed)
        got = Decimal(landed)
        if stored:
            assert got == expected.value, (where, landed, expected.value)
        else:
            assert got.as_tuple() == expected.value.as_tuple(), (where, landed, expected.value)
    elif isinstance(expected, Instant):
        assert isinstance(landed, str) and landed.endswith("Z"), (where, landed)
        when = dt.datetime.fromisoformat(landed.removesuffix("Z") + "+00:00")
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        assert when == epoch + dt.timedelta(milliseconds=expected.millis), (where, landed)
    elif isinstance(expected, Bytes):
        assert isinstance(landed, str), (where, landed)
        assert base64.b64decode(landed, validate=True) == expected.data, (where, landed)
    else:  # pragma: no cover - the oracle builds only the kinds above
        raise AssertionError(f"unknown expectation {expected!r}")

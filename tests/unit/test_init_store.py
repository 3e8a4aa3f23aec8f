"""Versioned schema store: deterministic bytes, one version per change, diffs, approvals."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from cartridge_dagster.errors import CartridgeError
from cartridge_dagster.init import store
from cartridge_dagster.init.inference import InferenceOptions, Profiler, finalize


def _scan(docs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    collections = {}
    for name, items in docs.items():
        p = Profiler(InferenceOptions())
        p.add_many(items)
        collections[name] = finalize(name, p, total_documents=len(items), method="full", rounds=1)
    return {"schema": "s", "database": "db", "source_kind": "mongodb", "collections": collections}


BASE = {"users": [{"_id": i, "age": i, "tier": ["a", "b"][i % 2]} for i in range(20)]}


def test_first_scan_is_v1_and_rescan_writes_nothing(tmp_path: Path) -> None:
    out = store.record(tmp_path, _scan(BASE))
    assert out.status == "created" and out.version == 1
    v1 = (tmp_path / "v0001.json").read_bytes()
    assert (tmp_path / "latest.json").read_bytes() == v1
    mtime = (tmp_path / "latest.json").stat().st_mtime_ns
    again = store.record(tmp_path, _scan(BASE))
    assert again.status == "unchanged" and again.version == 1
    assert (tmp_path / "latest.json").stat().st_mtime_ns == mtime
    assert store.versions(tmp_path) == [1]
    assert set(store.load_latest(tmp_path)["collections"]) == {"users"}  # type: ignore[index]


def test_same_input_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    store.record(a, _scan(BASE))
    store.record(b, _scan(copy.deepcopy(BASE)))
    assert (a / "v0001.json").read_bytes() == (b / "v0001.json").read_bytes()


def test_change_creates_version_with_diff(tmp_path: Path) -> None:
    store.record(tmp_path, _scan(BASE))
    changed = {
        "users": [
            {"_id": i, "age": str(i) if i == 3 else i, "tier": ["a", "b"][i % 2], "lang": "en"}
            for i in range(20)
        ],
        "orders": [{"_id": 1}],
    }
    out = store.record(tmp_path, _scan(changed))
    assert out.status == "created" and out.version == 2
    d = out.diff
    assert d.collections_added == ["orders"]
    assert d.fields_added == {"users": ["lang"]}
    assert d.types_widened == {"users": {"age": [["int"], ["int", "string"]]}}
    assert d.column_types_changed == {"users": {"age": ["integer", "numeric"]}}
    md = d.markdown()
    assert "field added" in md and "type widened" in md
    assert store.load_latest(tmp_path)["diff"]["fields_added"] == {"users": ["lang"]}  # type: ignore[index]
    # back to the old shape: narrowing + removal
    back = store.record(tmp_path, _scan(BASE))
    assert back.version == 3
    assert back.diff.fields_removed == {"users": ["lang"]}
    assert back.diff.types_narrowed == {"users": {"age": [["int", "string"], ["int"]]}}
    assert back.diff.collections_removed == ["orders"]


def test_presence_change(tmp_path: Path) -> None:
    store.record(tmp_path, _scan(BASE))
    sparse = {
        "users": [{"_id": i, "tier": "a", **({"age": i} if i % 2 else {})} for i in range(20)]
    }
    out = store.record(tmp_path, _scan(sparse))
    assert out.diff.presence_changed == {"users": {"age": ["required", "optional"]}}


def test_approve_policy(tmp_path: Path) -> None:
    store.record(tmp_path, _scan(BASE), policy="approve")  # first version needs no approval
    changed = {"users": [{**d, "new": 1} for d in BASE["users"]]}
    out = store.record(tmp_path, _scan(changed), policy="approve")
    assert out.status == "pending" and out.version == 1
    assert store.versions(tmp_path) == [1] and (tmp_path / "pending.json").exists()
    approved = store.approve(tmp_path)
    assert approved.status == "created" and approved.version == 2
    assert approved.diff.fields_added == {"users": ["new"]}
    assert not (tmp_path / "pending.json").exists()
    with pytest.raises(CartridgeError, match="nothing to approve"):
        store.approve(tmp_path)


def test_corrupt_latest_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text("{not json")
    with pytest.raises(CartridgeError, match=r"latest\.json"):
        store.record(tmp_path, _scan(BASE))

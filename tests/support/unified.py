"""A runner for MongoDB's unified test format, for the change-stream specification files.

Enough of the format (https://github.com/mongodb/specifications, ``unified-test-format``) to run
``../shared/specs/change-streams/*.json`` through real PyMongo against a server: entities
(clients with command monitoring, databases, collections, change streams), ``initialData``,
the operations those files use, ``expectResult``/``expectError`` and ``expectEvents``, and the
matching rules (extra fields only in root documents; ``$$exists``, ``$$type``,
``$$unsetOrMatches``; numbers compared by value). Tests whose ``runOnRequirements`` the server
does not meet are not applicable; :func:`applicable` says which, and why not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
import pymongo
from bson import json_util
from pymongo import monitoring
from pymongo.errors import OperationFailure, PyMongoError

__all__ = ["SpecTest", "applicable", "load_spec_tests", "run_spec_test"]

_TYPES: dict[str, tuple[type, ...]] = {
    "double": (float,),
    "string": (str,),
    "object": (dict, Mapping),
    "array": (list,),
    "binData": (bytes, bson.Binary),
    "objectId": (bson.ObjectId,),
    "bool": (bool,),
    "date": (__import__("datetime").datetime,),
    "null": (type(None),),
    "int": (int,),
    "long": (int, bson.Int64),
    "timestamp": (bson.Timestamp,),
    "decimal": (bson.Decimal128,),
}


@dataclass
class SpecTest:
    file: str
    description: str
    spec: dict[str, Any]  # the whole file (entities, initial data)
    test: dict[str, Any]

    @property
    def id(self) -> str:
        return (
            f"{self.file.removeprefix('change-streams-').removesuffix('.json')}: {self.description}"
        )


def load_spec_tests(directory: Path) -> list[SpecTest]:
    tests = []
    for path in sorted(directory.glob("*.json")):
        spec = json_util.loads(path.read_text())
        for test in spec["tests"]:
            tests.append(SpecTest(path.name, test["description"], spec, test))
    return tests


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _meets(requirements: list[dict[str, Any]] | None, version: str, topology: str) -> bool:
    if not requirements:
        return True
    have = _version(version)
    for req in requirements:
        if "minServerVersion" in req and have < _version(req["minServerVersion"]):
            continue
        if "maxServerVersion" in req and have > _version(req["maxServerVersion"]):
            continue
        if "topologies" in req and topology not in req["topologies"]:
            continue
        if req.get("serverless") == "require":
            continue
        return True
    return False


def applicable(
    test: SpecTest, *, version: str, topology: str = "replicaset", unsupported: Mapping[str, str]
) -> str | None:
    """None when ``test`` applies to the server, else why it does not."""
    if not _meets(test.spec.get("runOnRequirements"), version, topology):
        return f"file requires {test.spec.get('runOnRequirements')}"
    if not _meets(test.test.get("runOnRequirements"), version, topology):
        return f"test requires {test.test.get('runOnRequirements')}"
    for key, reason in unsupported.items():
        if key in test.id:
            return reason
    return None


# --------------------------------------------------------------------------- matching


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, bson.Int64)) and not isinstance(value, bool)


def match(expected: Any, actual: Any, path: str = "", *, root: bool = True) -> None:
    """Raise AssertionError unless ``actual`` matches ``expected`` (unified-format rules)."""
    if isinstance(expected, Mapping) and len(expected) == 1:
        ((op, arg),) = expected.items()
        if op == "$$exists":  # reached with a value: the field is there
            if not arg:
                raise AssertionError(f"{path}: expected no value, got {actual!r}")
            return
        if op == "$$type":
            names = arg if isinstance(arg, list) else [arg]
            kinds = tuple(t for n in names for t in _TYPES[n])
            if isinstance(actual, bool) and "bool" not in names:
                raise AssertionError(f"{path}: {actual!r} is not of type {names}")
            if not isinstance(actual, kinds):
                raise AssertionError(f"{path}: {actual!r} is not of type {names}")
            return
        if op == "$$unsetOrMatches":
            match(arg, actual, path, root=False)
            return
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            raise AssertionError(f"{path}: expected a document, got {actual!r}")
        for key, want in expected.items():
            sub = f"{path}.{key}" if path else key
            if isinstance(want, Mapping) and len(want) == 1 and "$$exists" in want:
                if bool(want["$$exists"]) != (key in actual):
                    raise AssertionError(f"{sub}: $$exists {want['$$exists']}, got {actual!r}")
                continue
            if isinstance(want, Mapping) and len(want) == 1 and "$$unsetOrMatches" in want:
                if key not in actual:
                    continue
                match(want["$$unsetOrMatches"], actual[key], sub, root=False)
                continue
            if key not in actual:
                raise AssertionError(f"{sub}: missing in {dict(actual)!r}")
            match(want, actual[key], sub, root=False)
        if not root:
            extra = set(actual) - set(expected)
            if extra:
                raise AssertionError(f"{path}: unexpected field(s) {sorted(extra)} in {actual!r}")
        return
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            raise AssertionError(f"{path}: expected {expected!r}, got {actual!r}")
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            match(want, got, f"{path}.{i}", root=False)
        return
    if _is_number(expected) and _is_number(actual):
        if float(expected) != float(actual):
            raise AssertionError(f"{path}: expected {expected!r}, got {actual!r}")
        return
    if expected != actual:
        raise AssertionError(f"{path}: expected {expected!r}, got {actual!r}")


# --------------------------------------------------------------------------- running


class _Recorder(monitoring.CommandListener):
    def __init__(self, ignore: set[str]) -> None:
        self.ignore = ignore | {"hello", "isMaster", "ismaster", "endSessions", "saslStart"}
        self.events: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in self.ignore:
            return
        self.events.append(
            {
                "commandName": event.command_name,
                "databaseName": event.database_name,
                "command": bson.decode(bson.encode(event.command)),
            }
        )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


@dataclass
class _Run:
    uri: str
    entities: dict[str, Any] = field(default_factory=dict)
    recorders: dict[str, _Recorder] = field(default_factory=dict)
    clients: list[pymongo.MongoClient[Any]] = field(default_factory=list)

    def close(self) -> None:
        for entity in self.entities.values():
            if isinstance(entity, pymongo.change_stream.ChangeStream):
                entity.close()
        for client in self.clients:
            client.close()


def _create_entities(run: _Run, spec: dict[str, Any]) -> None:
    for item in spec.get("createEntities", []):
        ((kind, conf),) = item.items()
        if kind == "client":
            recorder = _Recorder(set(conf.get("ignoreCommandMonitoringEvents", [])))
            client: pymongo.MongoClient[Any] = pymongo.MongoClient(
                run.uri, event_listeners=[recorder], serverSelectionTimeoutMS=10_000
            )
            run.clients.append(client)
            run.entities[conf["id"]] = client
            run.recorders[conf["id"]] = recorder
        elif kind == "database":
            run.entities[conf["id"]] = run.entities[conf["client"]][conf["databaseName"]]
        elif kind == "collection":
            run.entities[conf["id"]] = run.entities[conf["database"]][conf["collectionName"]]
        else:
            raise NotImplementedError(f"entity kind {kind}")


def _initial_data(run: _Run, spec: dict[str, Any]) -> None:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(run.uri)
    run.clients.append(client)
    for data in spec.get("initialData") or []:
        db = client[data["databaseName"]]
        db.drop_collection(data["collectionName"])
        if data["documents"]:
            db[data["collectionName"]].insert_many(data["documents"])
        else:
            db.create_collection(data["collectionName"])


def _watch_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    names = {
        "fullDocument": "full_document",
        "fullDocumentBeforeChange": "full_document_before_change",
        "resumeAfter": "resume_after",
        "startAfter": "start_after",
        "startAtOperationTime": "start_at_operation_time",
        "batchSize": "batch_size",
        "comment": "comment",
        "showExpandedEvents": "show_expanded_events",
        "maxAwaitTimeMS": "max_await_time_ms",
    }
    out = {"pipeline": args.get("pipeline", [])}
    for key, value in args.items():
        if key == "pipeline":
            continue
        out[names[key]] = value
    return out


def _operate(run: _Run, op: dict[str, Any]) -> Any:
    name, target = op["name"], op["object"]
    args = op.get("arguments", {})
    if target == "testRunner":
        if name == "failPoint":
            run.entities[args["client"]].admin.command(args["failPoint"])
            return None
        raise NotImplementedError(f"testRunner.{name}")
    obj = run.entities[target]
    if name == "createChangeStream":
        return obj.watch(**_watch_kwargs(args))
    if name == "iterateUntilDocumentOrError":
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            doc = obj.try_next()
            if doc is not None:
                return doc
        raise AssertionError("no change event within 10 s")
    if name == "iterateOnce":
        return obj.try_next()
    if name == "close":
        obj.close()
        return None
    if name == "insertOne":
        return obj.insert_one(args["document"])
    if name == "updateOne":
        return obj.update_one(args["filter"], args["update"])
    if name == "replaceOne":
        return obj.replace_one(args["filter"], args["replacement"])
    if name == "deleteOne":
        return obj.delete_one(args["filter"])
    if name == "rename":
        return obj.rename(
            args["to"], **({"dropTarget": args["dropTarget"]} if "dropTarget" in args else {})
        )
    if name == "createIndex":
        return obj.create_index(list(args["keys"].items()), name=args.get("name"))
    if name == "dropIndex":
        return obj.drop_index(args["name"])
    if name == "dropCollection":
        return obj.drop_collection(args["collection"])
    if name == "createCollection":
        extra = {k: v for k, v in args.items() if k != "collection"}
        return obj.create_collection(args["collection"], **extra)
    if name == "runCommand":
        return obj.command(args["command"])
    raise NotImplementedError(f"operation {name}")


def _check_error(expect: dict[str, Any], exc: BaseException) -> None:
    server_error = isinstance(exc, OperationFailure)
    if "isClientError" in expect:
        assert expect["isClientError"] == (not server_error), f"client error? {exc!r}"
    if "errorCode" in expect:
        assert isinstance(exc, OperationFailure) and exc.code == expect["errorCode"], repr(exc)
    if "errorCodeName" in expect:
        details = getattr(exc, "details", None) or {}
        assert details.get("codeName") == expect["errorCodeName"], repr(exc)
    for label in expect.get("errorLabelsContain", []):
        assert isinstance(exc, PyMongoError) and exc.has_error_label(label), repr(exc)
    for label in expect.get("errorLabelsOmit", []):
        assert not (isinstance(exc, PyMongoError) and exc.has_error_label(label)), repr(exc)


def run_spec_test(uri: str, case: SpecTest) -> None:
    """Run ``case`` against the server at ``uri``; AssertionError when it does not pass."""
    run = _Run(uri)
    try:
        _initial_data(run, case.spec)
        _create_entities(run, case.spec)
        for recorder in run.recorders.values():
            recorder.events.clear()
        for op in case.test["operations"]:
            try:
                result = _operate(run, op)
            except (PyMongoError, TypeError, ValueError) as exc:
                if "expectError" not in op:
                    raise AssertionError(f"{op['name']} failed: {exc!r}") from exc
                _check_error(op["expectError"], exc)
                continue
            if "expectError" in op:
                raise AssertionError(f"{op['name']} succeeded; expected {op['expectError']}")
            if "saveResultAsEntity" in op:
                run.entities[op["saveResultAsEntity"]] = result
            if "expectResult" in op:
                match(op["expectResult"], result, op["name"])
        for expected in case.test.get("expectEvents", []):
            recorder = run.recorders[expected["client"]]
            got = recorder.events
            want = [e["commandStartedEvent"] for e in expected["events"]]
            if not expected.get("ignoreExtraEvents"):
                assert len(got) == len(want), f"events: {json.dumps(got, default=str)[:2000]}"
            assert len(got) >= len(want), f"too few events: {json.dumps(got, default=str)[:2000]}"
            for i, w in enumerate(want):
                w = dict(w)
                command = w.pop("command", None)
                match(w, got[i], f"event {i}")
                if command is not None:  # a root document: extra fields allowed
                    match(command, got[i]["command"], f"event {i}.command")
    finally:
        run.close()

"""One warp run in a process of its own, for ``bench_warp``'s plain-process vs Dagster rows.

``python -m tests.performance.warp_child plain|dagster CONFIG`` runs schema ``bench`` of CONFIG
until idle — as the plain runner (what ``cartridge warp run`` does) or through the ``warp_bench``
job executed in this process's main thread, as Dagster's run worker executes it — and prints one
JSON line: ``whole`` (seconds from the start of the run to its end, Dagster's run launch
included), ``busy`` (the runner's start to its last batch with rows), ``cpu`` (the process's CPU
seconds over that span) and ``applied``. Imports happen before any clock starts, the embedded
engine's included (the runner imports it on connecting; with ``PYTHONDONTWRITEBYTECODE`` set, as
on the development machine, compiling it took ~1.7 s of a 4 s run).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path

import dagster as dg
from mongoeco import AsyncMongoClient  # noqa: F401  # imported before any clock, as the rest
from mongoeco.engines import SQLiteEngine  # noqa: F401

from cartridge_dagster.assets.warp import build_warp_defs
from cartridge_dagster.config import load_settings
from cartridge_dagster.observability import configure_logging
from cartridge_dagster.resources.warp import WarpResource
from cartridge_dagster.runtime import young_gc_threshold
from cartridge_dagster.warp.runner import WarpRunner

IDLE = 0.3


def plain(cfg: Path) -> dict[str, float]:
    settings = load_settings(cfg)
    runner = WarpRunner(settings, settings.get_schema("bench"), stop_when_idle=IDLE)
    t = time.perf_counter()
    with young_gc_threshold():  # what `cartridge warp run` sets around warp
        summary = asyncio.run(runner.run())
    whole = time.perf_counter() - t
    return {
        "whole": whole,
        "busy": summary.busy_seconds,
        "cpu": summary.busy_cpu_seconds,
        "applied": summary.total_applied,
    }


def dagster(cfg: Path) -> dict[str, float]:
    defs = dg.Definitions.merge(
        build_warp_defs(load_settings(cfg)),
        dg.Definitions(resources={"warp": WarpResource(config_path=str(cfg))}),
    )
    job = defs.resolve_job_def("warp_bench")
    with dg.instance_for_test() as instance:
        t = time.perf_counter()
        result = job.execute_in_process(
            run_config={"ops": {"warp_bench_run": {"config": {"stop_when_idle_seconds": IDLE}}}},
            instance=instance,
            raise_on_error=True,
        )
        whole = time.perf_counter() - t
        assert result.success
        found = None
        for entry in instance.all_logs(result.run_id):
            found = found or re.search(
                r"stopped \(\w+\): (\d+) changes.*busy ([0-9.]+)s, cpu ([0-9.]+)s\)",
                entry.user_message or "",
            )
    assert found, "the warp op did not report its busy time"
    return {
        "whole": whole,
        "busy": float(found.group(2)),
        "cpu": float(found.group(3)),
        "applied": int(found.group(1)),
    }


def main() -> None:
    mode, cfg = sys.argv[1], Path(sys.argv[2])
    configure_logging("console", "warning")
    out = plain(cfg) if mode == "plain" else dagster(cfg)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

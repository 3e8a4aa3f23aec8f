"""The demo's first start: every source seeded and the whole graph built once, through Dagster,
in one process, before the UI starts (``make demo`` runs it when nothing is generated yet).

1. each schema's demo source is seeded by a ``cartridge demo seed --if-empty --schema S``
   process of its own, all at once (the embedded engine's inserts are CPU-bound: one core each);
2. as each seed ends, one run materializes that schema's ``catalog``, ``schema`` and
   ``dbt_models`` (scan, schema version and component state recorded, models generated and
   parsed), while the other seeds go on;
3. the definitions are built again (now with the raw tables and the dbt models), and one
   ``warp_<S>`` run per schema copies the snapshot and stops once its source has been idle for
   a second (the live traffic starts after this; the supervisor's long-lived run resumes from
   the checkpoint);
4. one run builds the staging models and the summaries and executes every asset check.

Every step is a run in ``$DAGSTER_HOME``'s instance: the UI shows them, and the assets are
materialized when it first answers. A failed step stops here with its run's error and the
path of the seed logs; nothing is started after it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


_out = sys.stdout


def _say(message: str) -> None:
    print(f"==> {message}", file=_out, flush=True)


def _progress_only() -> None:
    """This process's stdout for progress lines only: what dbt and Dagster print to stdout goes
    to stderr (the log)."""
    global _out
    _out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)


class _Seeds:
    """One ``cartridge demo seed`` process per schema, started together. A schema whose seed has
    not completed before (no ``demo-seeded-<schema>`` marker: a first start, or one stopped
    mid-seed) is emptied and seeded again (``--reset``: the seed is deterministic), so a seed
    cut short is never taken for the whole dataset."""

    def __init__(self, schemas: Sequence[str], scale: float, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).with_name("cartridge")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cartridge_dagster"]
        self.logs = {s: log_dir / f"demo-seed-{s}.log" for s in schemas}
        self.markers = {s: log_dir / f"demo-seeded-{s}" for s in schemas}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for schema in schemas:
            mode = "--if-empty" if self.markers[schema].exists() else "--reset"
            with self.logs[schema].open("wb") as out:
                self.procs[schema] = subprocess.Popen(
                    [*cmd, "demo", "seed", mode, "--schema", schema, "--scale", str(scale)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )

    def next_done(self, pending: set[str]) -> str:
        """The next schema (of ``pending``) whose seed has ended; raises if it failed."""
        while True:
            for schema in sorted(pending):
                code = self.procs[schema].poll()
                if code is None:
                    continue
                text = self.logs[schema].read_text(encoding="utf-8", errors="replace")
                if code != 0:
                    sys.stderr.write(text[-2000:])
                    raise SystemExit(f"error: seeding {schema!r} failed (log: {self.logs[schema]})")
                self.markers[schema].write_text("seeded\n")
                for line in text.splitlines():
                    if ("seeded" in line or "emptied" in line) and "━" not in line:
                        print(f"    {line.strip()}", file=_out, flush=True)  # not the progress bar
                return schema
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


def _execute(job: Any, instance: Any, what: str, **kwargs: Any) -> None:
    started = time.perf_counter()
    result = job.execute_in_process(instance=instance, raise_on_error=False, **kwargs)
    if not result.success:
        failures = result.get_step_failure_events()
        error = failures[0].step_failure_data.error if failures else None
        while error is not None and error.cause is not None:  # the step's own error, unwrapped
            error = error.cause
        detail = error.message.strip() if error is not None else "see the run in the UI"
        raise SystemExit(f"error: {what} failed (run {result.run_id}): {detail}")
    _say(f"{what}: {time.perf_counter() - started:.1f} s (run {result.run_id[:8]})")


def run(schemas: Sequence[str], scale: float, log_dir: Path) -> None:
    seeds = _Seeds(schemas, scale, log_dir)
    try:
        _build(seeds, schemas)
    finally:
        seeds.stop()
    # what `make demo` looks for: the next start is a later start (refresh what changed)
    (log_dir / "demo-first-run.done").write_text("the demo's first build completed\n")


def _build(seeds: _Seeds, schemas: Sequence[str]) -> None:
    import dagster as dg
    from dagster_dbt.dbt_manifest import read_manifest_path

    from cartridge_dagster.assets.keys import catalog_key, dbt_models_key, raw_key, schema_key
    from cartridge_dagster.definitions import build_definitions
    from cartridge_dagster.sensors.warp import warp_job_name

    with dg.DagsterInstance.get() as instance:
        defs = build_definitions()
        landed: set[dg.AssetKey] = set()  # raw tables warp has copied
        built: set[dg.AssetKey] = set()
        pending = set(schemas)
        while pending:
            # each schema's whole chain as soon as its seed ends, while the others seed
            schema = seeds.next_done(pending)
            pending.discard(schema)
            generation = [catalog_key(schema), schema_key(schema), dbt_models_key(schema)]
            _execute(
                defs.resolve_implicit_global_asset_job_def(),
                instance,
                f"{schema}: scan and generate",
                asset_selection=generation,
            )
            built.update(generation)
            # built again: the collections recorded and the models generated by that run
            # (dagster-dbt keeps each manifest it read, by path, for the process's lifetime)
            read_manifest_path.cache_clear()
            defs = build_definitions()
            name = warp_job_name(schema)
            _execute(
                defs.resolve_job_def(name),
                instance,
                f"{schema}: warp snapshot",
                run_config={"ops": {f"{name}_run": {"config": {"stop_when_idle_seconds": 0.5}}}},
            )
            graph = defs.resolve_asset_graph()
            prefix = raw_key(schema, "-").path[:-1]
            raw = {k for k in graph.get_all_asset_keys() if k.path[:-1] == prefix}
            landed.update(raw)
            _downstream(
                defs,
                instance,
                landed,
                raw,
                built,
                what=f"{schema}: staging models, summaries and checks",
            )


def _downstream(
    defs: Any, instance: Any, landed: set[Any], raw: set[Any], built: set[Any], *, what: str
) -> None:
    """One run: every materializable asset not built yet whose raw tables have all landed, the
    checks of those assets and those of ``raw`` (the raw tables just landed)."""
    graph = defs.resolve_asset_graph()
    assets = set()
    for key in graph.materializable_asset_keys - built:
        upstream = graph.get_ancestor_asset_keys(key)
        sources = {k for k in upstream if not graph.get(k).is_materializable}
        if sources and sources <= landed:
            assets.add(key)
    checks = {c for c in graph.asset_check_keys if c.asset_key in assets | raw}
    if not assets and not checks:
        return
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=assets, asset_check_selection=checks
    )
    _execute(job, instance, what)
    built.update(assets)


def _settings() -> Any:
    from cartridge_dagster.config import load_settings

    return load_settings(None)  # $CARTRIDGE_CONFIG or ./cartridge.yaml, as the code location


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cartridge_dagster.demo.first_run")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--log-dir", type=Path, default=Path(".cartridge"))
    args = parser.parse_args(argv)
    schemas = [s.name for s in _settings().schemas]
    _progress_only()
    # no webserver yet: the generation steps have no code location to reload
    os.environ["CARTRIDGE_CODE_LOCATION_RELOAD"] = "off"
    try:
        run(schemas, args.scale, args.log_dir)
    except KeyboardInterrupt:
        raise SystemExit(
            "stopped (interrupted): the next make demo builds the graph again"
        ) from None


if __name__ == "__main__":
    main()

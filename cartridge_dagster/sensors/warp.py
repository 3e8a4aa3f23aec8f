"""``warp_<S>_supervisor``: keeps exactly one long-lived warp run per schema alive.

Each tick (every 30 s) the sensor looks at the runs of job ``warp_<S>``:

- one is queued, starting, started or canceling → skip (and say which run);
- the last runs failed → back off exponentially after the last failure (30 s, 60 s, … 15 min),
  and say until when;
- otherwise → request a new run. The run key counts launches (kept in the JSON cursor), so a
  request is never deduplicated away after the previous run ended.

The decision is the pure function :func:`decide`, tested without a Dagster instance; the sensor
itself is tested by ticking it against a real instance.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from cartridge_dagster.config import SchemaConfig

__all__ = ["ALIVE", "Decision", "build_warp_supervisor", "decide", "warp_job_name"]

ALIVE = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 900.0


def warp_job_name(schema: str) -> str:
    return f"warp_{schema}"


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: dg.DagsterRunStatus
    end_time: float | None


@dataclass(frozen=True)
class Decision:
    launch: bool
    reason: str


def decide(runs: Sequence[RunInfo], now: float) -> Decision:
    """``runs`` newest first. Launch unless one is alive or we are backing off failures."""
    for run in runs:
        if run.status in ALIVE:
            return Decision(False, f"warp run {run.run_id} is {run.status.value.lower()}")
    failures = 0
    for run in runs:
        if run.status == dg.DagsterRunStatus.FAILURE:
            failures += 1
        else:
            break
    if failures:
        wait = min(BACKOFF_BASE_SECONDS * 2 ** (failures - 1), BACKOFF_MAX_SECONDS)
        last_end = runs[0].end_time or now
        if now < last_end + wait:
            return Decision(
                False,
                f"backing off after {failures} failed run(s) (last {runs[0].run_id}): "
                f"next launch in {last_end + wait - now:.0f}s",
            )
        return Decision(True, f"relaunching after {failures} failed run(s)")
    if runs:
        return Decision(True, f"the last warp run {runs[0].run_id} ended ({runs[0].status.value})")
    return Decision(True, "no warp run yet")


def build_warp_supervisor(schema: SchemaConfig, job: dg.JobDefinition) -> dg.SensorDefinition:
    name = warp_job_name(schema.name)

    # By name, not by definition: a sensor holding a job whose resources the Definitions bind
    # is rebuilt by Dagster on load, which warns (beta `owners`) on every load.
    @dg.sensor(
        name=f"{name}_supervisor",
        job_name=job.name,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Keeps exactly one `{name}` run alive (backs off after failures).",
    )
    def supervisor(context: dg.SensorEvaluationContext) -> Any:
        records = context.instance.get_run_records(filters=dg.RunsFilter(job_name=name), limit=10)
        runs = [RunInfo(r.dagster_run.run_id, r.dagster_run.status, r.end_time) for r in records]
        decision = decide(runs, time.time())
        if not decision.launch:
            return dg.SkipReason(decision.reason)
        state = json.loads(context.cursor) if context.cursor else {}
        launches = int(state.get("launches", 0)) + 1
        context.update_cursor(json.dumps({"launches": launches}))
        context.log.info(decision.reason)
        return dg.RunRequest(
            run_key=f"{name}-{launches}",
            tags={"cartridge/launch_reason": decision.reason[:200]},
        )

    return supervisor

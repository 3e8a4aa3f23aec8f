"""Stopping a run calmly: a stop signal or a termination ends the run CANCELED, not FAILURE.

Dagster's run worker turns SIGINT and SIGTERM (and a termination requested from the UI or
GraphQL, which reaches the worker as a SIGINT sent by its cancellation thread) into an
exception raised wherever the op is: the step fails ("Execution was interrupted"), with a
traceback. An op that is stopped this way in practice (warp, a dbt build, the analytics) instead
takes the signals while it works, stops its work cleanly, and returns; the
:data:`end_canceled` success hook, attached to their op in every job (``with_hooks`` on an
asset applies to implicit asset jobs too), then reports the run CANCELED and ends its execution
with the interrupt Dagster itself uses for cancellation: no failure event, no traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_taken(on_signal: Callable[[str], None]) -> Iterator[bool]:
    """Within the block, SIGINT/SIGTERM call ``on_signal(name)`` instead of interrupting; the
    previous handlers are put back afterwards (a signal after that interrupts as usual). Yields
    whether the signals could be taken: only the main thread can (not an in-process test)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous: list[tuple[signal.Signals, Any]] = []

    def handler(signum: int, _frame: Any) -> None:
        on_signal(signal.Signals(signum).name)

    try:
        for sig in STOP_SIGNALS:
            old = signal.signal(sig, handler)
            previous.append((sig, signal.SIG_DFL if old is None else old))
        yield True
    finally:
        for sig, old in previous:
            signal.signal(sig, old)


def run_stopping(context: dg.OpExecutionContext | dg.AssetExecutionContext) -> bool:
    """Whether the run is being canceled (a termination was requested) or already is."""
    run = context.instance.get_run_by_id(context.run_id)
    return run is not None and run.status in (
        dg.DagsterRunStatus.CANCELING,
        dg.DagsterRunStatus.CANCELED,
    )


def report_canceling(context: dg.OpExecutionContext | dg.AssetExecutionContext, why: str) -> None:
    """Mark the run CANCELING (a signaled worker: make demo stopped, a pod evicted): it did
    not finish its work, it was stopped, and it stopped cleanly. A run already canceling (a
    termination requested) is left as it is."""
    run = context.instance.get_run_by_id(context.run_id)
    if run is not None and run.status not in (
        dg.DagsterRunStatus.CANCELING,
        dg.DagsterRunStatus.CANCELED,
    ):
        context.instance.report_run_canceling(run, message=why)


@dg.success_hook(name="cartridge_end_canceled")
def end_canceled(context: dg.HookContext) -> None:
    """End a run whose step stopped cleanly because it was canceled (or signaled) as CANCELED.

    The op returns normally once its work has stopped, and a returning op would make Dagster
    mark the run SUCCESS. Here, after the step's success, a run in CANCELING is reported
    CANCELED and the run's execution is ended by the interrupt Dagster itself uses for
    cancellation; for a run already CANCELED Dagster records only that its resources were
    cleaned up, so the run shows no failure and no traceback."""
    run = context.instance.get_run_by_id(context.run_id)
    if run is None or run.status != dg.DagsterRunStatus.CANCELING:
        return
    message = f"{context.op.name} stopped cleanly on request; run {run.run_id} canceled"
    context.instance.report_run_canceled(run, message=message)
    raise dg.DagsterExecutionInterruptedError(message)

"""Interpreter-wide settings for processes that run warp, applied by their entry points.

Library code never changes the interpreter; ``cartridge warp run`` (the CLI) and the warp op
(Dagster's run worker) enter :func:`young_gc_threshold` around warp. ``CARTRIDGE_GC_TUNING=0``
leaves the interpreter as it is; ``make bench`` (``bench_e2e``) prints what the setting buys as
warp's CPU without it ÷ with it: in process (the embedded engine hands over a dict per
document) ~1.05 at 10k and ~1.1 at 100k, where the cyclic GC took 1.2–1.7 s of a 7 s run
without it and 0.4–0.5 s with it; over the wire (raw BSON, few allocations) ~1.0.

``cartridge warp run`` also turns pydantic's plugin scan off (:func:`skip_pydantic_plugins`,
before the configuration is imported): looking for plugins reads the entry points of every
installed distribution (~220 here). ``bench_e2e`` prints the configuration's load with and
without the scan in fresh processes: 13–20 ms of CPU saved of ~170–200, on a start-up of
~0.3 s. ``PYDANTIC_DISABLE_PLUGINS`` set to anything, the empty string included, is left as
it is.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from typing import Any

__all__ = ["GC_YOUNG_THRESHOLD", "gc_tuning_enabled", "skip_pydantic_plugins", "young_gc_threshold"]

#: Allocations between two young-generation collections while warp runs (CPython's default is
#: 2,000). warp allocates and frees documents by the thousand, nearly all freed by reference
#: counting; at the default, the cyclic GC ran ~350 times over 10,000 documents from the
#: embedded engine and took most of the run, at this threshold ~20 times.
GC_YOUNG_THRESHOLD = 50_000
_gc_lock = threading.Lock()
_gc_state: dict[str, Any] = {"users": 0, "saved": None}


def skip_pydantic_plugins() -> None:
    """No pydantic plugins in this process unless ``PYDANTIC_DISABLE_PLUGINS`` is set
    (``PYDANTIC_DISABLE_PLUGINS=`` keeps them). Call it before any pydantic model exists:
    pydantic looks for plugins when it builds the first one."""
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


def gc_tuning_enabled() -> bool:
    return os.environ.get("CARTRIDGE_GC_TUNING", "1") != "0"


@contextlib.contextmanager
def young_gc_threshold(threshold: int = GC_YOUNG_THRESHOLD) -> Any:
    """While any runner of this process runs: raise the cyclic GC's young threshold, and
    freeze what the process held before (imports, Dagster's definitions: left out of every
    later collection, where a full one otherwise scans them all and costs ~0.5 s here).
    Only the young generation is collected first: a full collection of the host's heap took
    0.14 s (plain process, 284,000 objects) to 0.20 s (Dagster run worker, 349,000) of each
    warp start and found 20 and ~1,500 garbage objects; those few stay frozen, a bounded
    one-off. Process-wide settings: the last runner to stop restores the threshold; what was
    frozen stays frozen (it was alive before warp started, and unfreezing would also undo
    freezes the host made)."""
    with _gc_lock:
        if _gc_state["users"] == 0:
            saved = gc.get_threshold()
            _gc_state["saved"] = saved
            if saved[0] and saved[0] < threshold:  # 0: collection disabled, leave it so
                gc.set_threshold(threshold, *saved[1:])
            gc.collect(0)
            gc.freeze()
        _gc_state["users"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_state["users"] -= 1
            if _gc_state["users"] == 0 and _gc_state["saved"] is not None:
                gc.set_threshold(*_gc_state["saved"])
                _gc_state["saved"] = None

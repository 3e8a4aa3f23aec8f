"""warp's entry points raise the cyclic GC's young threshold while warp runs, then restore it."""

from __future__ import annotations

import gc

from cartridge_dagster.runtime import GC_YOUNG_THRESHOLD, young_gc_threshold


def test_threshold_raised_while_running_and_restored_by_the_last_runner() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with young_gc_threshold():
            assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
            with young_gc_threshold():  # a second runner in the process (multi mode)
                assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
            assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, "the first runner still runs"
        assert gc.get_threshold() == (700, 10, 10)
        gc.set_threshold(100_000, 5, 5)  # already higher: left alone
        with young_gc_threshold():
            assert gc.get_threshold() == (100_000, 5, 5)
        assert gc.get_threshold() == (100_000, 5, 5)
    finally:
        gc.set_threshold(*before)


def test_what_lived_before_is_frozen_out_of_collections() -> None:
    kept = [[i] for i in range(1000)]  # lists are always tracked by the GC
    frozen_before = gc.get_freeze_count()
    with young_gc_threshold():
        assert gc.get_freeze_count() >= frozen_before + len(kept)
    assert gc.get_freeze_count() >= frozen_before + len(kept), "left frozen (never unfrozen)"
    del kept


def test_restored_when_the_runner_fails() -> None:
    before = gc.get_threshold()
    try:
        with young_gc_threshold():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before


def test_start_collects_only_the_young_generation() -> None:
    """A full collection of the host's heap (a Dagster run worker's: ~350,000 objects, ~0.2 s
    here) is not paid at each warp start; young cyclic garbage is still collected, not frozen."""
    import weakref

    class Node:
        other: object = None

    gc.collect()  # nothing older pending, so what follows is in the young generation
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    generations: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        with young_gc_threshold():
            assert gone() is None, "the young cycle was collected before the freeze"
    finally:
        gc.callbacks.remove(seen)
    assert generations and max(generations) == 0, generations

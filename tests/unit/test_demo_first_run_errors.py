"""A failed step of the demo's first build ends it with one line naming the step's own error."""

from __future__ import annotations

import dagster as dg
import pytest

from cartridge_dagster.demo.first_run import _execute


def test_a_failed_step_is_one_line_with_its_own_error() -> None:
    @dg.asset
    def boom() -> None:
        raise ValueError("bad value in field 'amount'")

    job = dg.Definitions(assets=[boom]).resolve_implicit_global_asset_job_def()
    with pytest.raises(SystemExit) as raised:
        _execute(job, dg.DagsterInstance.ephemeral(), "shop: scan and generate")
    message = str(raised.value)
    assert message.startswith("error: shop: scan and generate failed (run ")
    assert message.endswith("ValueError: bad value in field 'amount'")
    assert "\n" not in message and "DagsterExecutionStepExecutionError" not in message

"""Run the real ``cartridge`` command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.services import REPO


def cartridge(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 300,
    columns: int | None = 200,
) -> subprocess.CompletedProcess[str]:
    """``columns=None`` leaves ``COLUMNS`` unset, as in a plain pipe."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CARTRIDGE_") and k not in ("COLUMNS", "LINES")
    }
    full_env["NO_COLOR"] = "1"
    if columns is not None:
        full_env["COLUMNS"] = str(columns)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cartridge_dagster", *args],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

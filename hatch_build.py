"""Hatch build hook: compile ``cartridge_dagster/_bsonjson.c`` (the BSON → JSON fast path).

Editable installs (``make install-dev``) get the extension next to its source; wheels (the
container image) get it as a platform file. Without a C compiler the build still succeeds and
warns: Cartridge then converts every document in Python (correct, about 2-3x slower)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("cartridge_dagster") / "_bsonjson.c"


def compile_extension(root: Path) -> Path | None:
    source = root / SOURCE
    target = source.with_name("_bsonjson" + str(sysconfig.get_config_var("EXT_SUFFIX")))
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    cc = shlex.split(str(sysconfig.get_config_var("CC") or "cc"))
    cmd = [
        *cc,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        f"-I{sysconfig.get_paths()['include']}",
        str(source),
        "-o",
        str(target),
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        print(
            f"warning: could not compile {SOURCE} ({detail.strip()[:500]}); documents will be "
            "converted in Python",
            file=sys.stderr,
        )
        return None
    return target


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        built = compile_extension(Path(self.root))
        if built is None or version == "editable":
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        build_data["force_include"][str(built)] = f"cartridge_dagster/{built.name}"

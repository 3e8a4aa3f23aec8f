"""``python -m cartridge_dagster`` is the ``cartridge`` command."""

from cartridge_dagster.cli import main

main()

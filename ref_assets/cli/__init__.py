"""The command line, ``ref-assets`` (`main`): a thin layer over the core library and the
Dagster face. ``main.py`` parses and dispatches; ``config.py`` and ``provenance.py`` hold the
configuration and provenance subcommands; ``common.py`` what every subcommand shares (its help,
``--json``, `CommandError`) and ``progress.py`` the progress line of long commands."""

from ref_assets.cli.main import main

__all__ = ["main"]

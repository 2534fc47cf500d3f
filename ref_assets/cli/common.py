"""What every ``ref-assets`` subcommand shares.

- `add_command`: a subcommand with its one-line summary, a description and examples in its help,
  and ``--json`` when it prints data.
- `json_output` and `print_json`: a ``--json`` command prints exactly one JSON document on stdout
  (keys fixed per command, whatever the data); anything else goes to stderr.
- `CommandError`: a failure shown as one line without a traceback.
- `dataset_spec`: a DATASET argument checked against the catalogue, the same way by every command.

This module imports nothing heavy: ``ref-assets --help`` and ``--version`` build every parser.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ref_assets.config import Settings
    from ref_assets.specs import DatasetSpec


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Fills each paragraph of a description on its own (argparse's default runs them together)
    and keeps paragraphs with indented lines, such as examples, as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if paragraph.startswith(" ") or "\n " in paragraph:
                paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(paragraphs)


def add_command(
    commands: argparse._SubParsersAction,
    name: str,
    *,
    summary: str,
    description: str,
    examples: Sequence[str],
    prints_data: bool = True,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``: ``summary`` in its parent's list of commands, ``description``
    and ``examples`` (command lines, shown under "Example:") in its own ``--help``, and
    ``--json`` if it ``prints_data``."""
    heading = "Example:" if len(examples) == 1 else "Examples:"
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog="\n".join([heading, *(f"  {example}" for example in examples)]),
        formatter_class=HelpFormatter,
        **kwargs,
    )
    if prints_data:
        parser.add_argument(
            "--json",
            action="store_true",
            help="print one JSON document on stdout (progress and messages go to stderr)",
        )
    return parser


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` for commands that report progress."""
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress line (--json implies it)"
    )


def wants_progress(args: argparse.Namespace) -> bool:
    return not (getattr(args, "json", False) or getattr(args, "quiet", False))


# The real stdout while a --json command runs (sys.stdout then points to stderr).
_json_stdout: ContextVar[TextIO | None] = ContextVar("json_stdout", default=None)


@contextlib.contextmanager
def json_output(enabled: bool) -> Iterator[None]:
    """While a ``--json`` command runs, whatever else would reach stdout (a library's print, a
    log handler bound to stdout) goes to stderr, so stdout carries only `print_json`'s
    document."""
    if not enabled:
        yield
        return
    token = _json_stdout.set(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stdout.reset(token)


def print_json(document: Any) -> None:
    """Print ``document`` as the command's one JSON document."""
    stream = _json_stdout.get() or sys.stdout
    stream.write(json.dumps(document, indent=2) + "\n")
    stream.flush()


def dataset_spec(
    dataset_id: str, settings: Settings, *, store_may_outlive_spec: bool = False
) -> DatasetSpec | None:
    """The spec of a command's DATASET, checked against the catalogue first so that every
    command answers an unknown id alike: ``no dataset 'x' (known: ...)`` (`UnknownDatasetError`),
    rather than a store's "no store ... materialize first". With ``store_may_outlive_spec`` (a
    command that reads or annotates the store alone), an id the catalogue lacks whose store
    exists is still a dataset: None, no spec."""
    from ref_assets.catalog import load_catalog

    catalog = load_catalog(settings)
    if dataset_id not in catalog.specs and store_may_outlive_spec:
        from ref_assets.store.repository import DatasetStore

        if DatasetStore(settings.storage_root, dataset_id).exists():
            return None
    return catalog.get(dataset_id)

"""Writing one benchmark's section of benchmarks/RESULTS.md without touching the others."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(heading: str, text: str, *, path: Path = RESULTS) -> None:
    """Put ``text`` (starting with ``heading``, a ``#`` or ``##`` line) in place of the section
    under that heading, up to the next heading of the same or a higher level, or append it."""
    level = len(heading) - len(heading.lstrip("#"))
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(
        rf"^{re.escape(heading)}\n.*?(?=^#{{1,{level}}} |\Z)", flags=re.MULTILINE | re.DOTALL
    )
    body = text.rstrip("\n") + "\n\n"
    if pattern.search(old):
        new = pattern.sub(lambda _: body, old, count=1)
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + body
    path.write_text(new.rstrip("\n") + "\n")

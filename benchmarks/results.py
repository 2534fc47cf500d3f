"""Writing one benchmark's section of benchmarks/RESULTS.md without touching the others."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(heading: str, text: str, *, path: Path = RESULTS, first: bool = False) -> None:
    """Put ``text`` (starting with ``heading``, a ``#`` or ``##`` line) in place of the section
    under that heading, up to the next heading of the same or a higher level, or add it: at the
    end, or with ``first`` before the first section of its level."""
    level = len(heading) - len(heading.lstrip("#"))
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(
        rf"^{re.escape(heading)}\n.*?(?=^#{{1,{level}}} |\Z)", flags=re.MULTILINE | re.DOTALL
    )
    body = text.rstrip("\n") + "\n\n"
    first_section = re.search(rf"^{'#' * level} ", old, flags=re.MULTILINE)
    if pattern.search(old):
        new = pattern.sub(lambda _: body, old, count=1)
    elif first and first_section:
        new = old[: first_section.start()] + body + old[first_section.start() :]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + body
    path.write_text(new.rstrip("\n") + "\n")


def machine_load() -> str:
    """How busy the machine was as a result is written, for its header: ratios measured beside
    other work drift, and a reader should know whether they were."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def timed[T](work: Callable[[], T]) -> tuple[float, T]:
    """Seconds ``work()`` took, and what it returned."""
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def synthetic_daily_spec(
    dataset_id: str, title: str, params: dict, *, start: str = "2000-01-01", **fields
) -> dict:
    """The fields of a spec of daily synthetic air temperature (t2m in degC), as the
    benchmarks declare one; ``fields`` adds top-level keys (storage, runs, end, timeseries)."""
    return {
        "id": dataset_id,
        "title": title,
        "provider": "synthetic",
        "params": params,
        "period": "daily",
        "start": start,
        "variables": [
            {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
        ],
        **fields,
    }

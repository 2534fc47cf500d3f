"""Every benchmark in one command, one after another, then a summary of the targets.

    .venv/bin/python benchmarks/all.py            # or ./dev bench; about 30 minutes, quiet machine
    .venv/bin/python benchmarks/all.py --quick    # each script's small sizes: checks they run
    .venv/bin/python benchmarks/all.py write_path scale   # only these

Each script runs in its own process (its memory and imports its own), replaces its own section
of RESULTS.md, and compares side by side within its run (ratios, not seconds). The machine is
shared by nothing else while they run only if you make it so: two scripts never run at once.
At the end the "Targets" section at the top of RESULTS.md is rebuilt from every section's
"Target" lines, so the file opens with what was met and what was missed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from results import RESULTS, replace_section

HERE = Path(__file__).resolve().parent
TARGETS_HEADING = "## Targets (collected from the sections below by `benchmarks/all.py`)"

# In the order they run: the quick ones first, so a broken script shows early.
SCRIPTS = [
    "write_path",
    "scale",
    "previews",
    "serving",
    "checks",
    "provenance",
    "sensor_tick",
    "backfill",
    "extraction",
]


def optional_scripts() -> list[str]:
    """Benchmarks of features that may not be present in every checkout, run when they are."""
    return [
        path.stem
        for path in sorted(HERE.glob("*.py"))
        if path.stem not in {*SCRIPTS, "all", "results"} and not path.stem.startswith("_")
    ]


def run(name: str, quick: bool) -> tuple[int, float]:
    command = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if quick else [])]
    print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    status = subprocess.run(command, cwd=HERE.parent).returncode
    return status, time.perf_counter() - start


def collect_targets(text: str) -> list[tuple[str, str]]:
    """``(section, target)`` from RESULTS.md: every line starting "Target:" and every row of a
    table under a "### Targets" heading (the convention the benchmark scripts follow)."""
    found, heading, in_table = [], "", False
    for line in text.splitlines():
        if line.startswith("## "):
            heading, in_table = line[3:], False
        elif line.startswith("### "):
            in_table = line.startswith("### Targets")
        elif heading == TARGETS_HEADING[3:]:
            continue
        elif line.startswith("Target:"):
            found.append((heading, line.removeprefix("Target:").strip()))
        elif in_table and line.startswith("|") and not re.match(r"^\|[\s|:-]*\|$", line):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if cells[0] != "target":
                found.append((heading, ": ".join(cell for cell in cells if cell)))
    return found


def targets_section(text: str) -> str:
    rows = [f"| {heading.split(' (`')[0]} | {line} |" for heading, line in collect_targets(text)]
    return "\n".join(
        [TARGETS_HEADING, "", "| benchmark | target and result |", "| --- | --- |", *rows, ""]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; RESULTS.md untouched")
    parser.add_argument("only", nargs="*", help="run only these scripts (names without .py)")
    args = parser.parse_args()
    names = args.only or [*SCRIPTS, *optional_scripts()]
    unknown = [name for name in names if not (HERE / f"{name}.py").exists()]
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)} (see benchmarks/*.py)")
    outcomes = {name: run(name, args.quick) for name in names}
    for name, (status, seconds) in outcomes.items():
        state = "ok" if status == 0 else f"FAILED (exit {status})"
        print(f"{name:>12}: {state}, {seconds:.0f} s", file=sys.stderr)
    if not args.quick and RESULTS.exists():
        replace_section(TARGETS_HEADING, targets_section(RESULTS.read_text()), first=True)
    sys.exit(1 if any(status for status, _ in outcomes.values()) else 0)


if __name__ == "__main__":
    main()

"""A progress line for long commands (``materialize``, ``verify``), on stderr.

>>> with Progress("demo", total=91) as progress:  # doctest: +SKIP
...     progress.advance(32)
demo: 32/91 periods (35%), 24.5 periods/s, ETA 2 s
demo: 91/91 periods in 3.7 s (24.6 periods/s)

On a terminal the line is rewritten in place (carriage return) at most every 0.2 s; otherwise
(a log file, CI) a plain line is printed for the first update and then at most every 10 s, so logs
stay short. The final line is always printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

TTY_INTERVAL_SECONDS = 0.2
PLAIN_INTERVAL_SECONDS = 10.0


class Progress:
    """``done/total``, the rate and the time left, for ``total`` items of ``unit``."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "periods",
        enabled: bool = True,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = TTY_INTERVAL_SECONDS if self.tty else PLAIN_INTERVAL_SECONDS
        self.clock = clock
        self.started = clock()
        self.done = 0
        self._first: tuple[float, int] | None = None  # when the first items were done, how many
        self._shown_at: float | None = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    def advance(self, count: int = 1) -> None:
        self.update(self.done + count)

    def update(self, done: int) -> None:
        """``done`` of ``total`` items are done; show it unless shown very recently."""
        self.done = done
        if not self.enabled or done == 0 or done >= self.total:
            return  # nothing to measure yet, or the final line says it
        now = self.clock()
        if self._first is None:
            self._first = (now, done)
        if self._shown_at is not None and now - self._shown_at < self.interval:
            return
        self._shown_at = now
        rate = self._rate(now)
        eta = format_duration((self.total - done) / rate)
        self._write(
            f"{self.label}: {done}/{self.total} {self.unit} ({100 * done // self.total}%), "
            f"{format_rate(rate)} {self.unit}/s, ETA {eta}",
            final=False,
        )

    def _rate(self, now: float) -> float:
        """Items per second since the first ones were done, so that a slow start (Dagster
        launching a run, a store opened) does not inflate the ETA; until then, since the start."""
        first_at, first_done = self._first
        if self.done > first_done and now > first_at:
            return (self.done - first_done) / (now - first_at)
        return self.done / max(now - self.started, 1e-9)

    def finish(self) -> None:
        """The final line: how many were done, in how long, at what rate."""
        if not self.enabled:
            return
        elapsed = max(self.clock() - self.started, 1e-9)
        self._write(
            f"{self.label}: {self.done}/{self.total} {self.unit} in {format_duration(elapsed)} "
            f"({format_rate(self.done / elapsed)} {self.unit}/s)",
            final=True,
        )

    def _write(self, line: str, *, final: bool) -> None:
        if self.tty:
            # Back to the line's start, and clear what a longer earlier line left.
            self.stream.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def format_rate(rate: float) -> str:
    """``0.31``, ``24.5``, ``1,530``: two decimals below 1, one below 100, whole numbers above."""
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.1f}" if rate >= 1 else f"{rate:.2f}"


def format_duration(seconds: float) -> str:
    """``4 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"

"""PeriodStream: fetching goes on while the consumer is busy, within a bounded read-ahead."""

import threading
import time

import pytest

import ref_assets.batch as batch_module
from ref_assets.batch import PeriodBatch, PeriodFailure, PeriodStream
from ref_assets.periods import Period, PeriodType
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict


class CountingProvider(SyntheticProvider):
    """Counts finished fetches; fails the periods named in ``failing``."""

    def __init__(self, spec, failing=()):
        super().__init__(spec)
        self.fetched = 0
        self.failing = set(failing)
        self.lock = threading.Lock()

    def fetch(self, period: Period):
        if period.key in self.failing:
            raise ConnectionError(f"{period.key} is gone")
        fetched = super().fetch(period)
        with self.lock:
            self.fetched += 1
        return fetched


def _periods(count: int) -> tuple[Period, ...]:
    return tuple(
        Period.from_key(PeriodType.DAILY, f"2024-01-{day:02d}") for day in range(1, count + 1)
    )


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _spec(commit_every: int) -> DatasetSpec:
    return DatasetSpec.model_validate(
        spec_dict(runs={"commit_every": commit_every, "fetch_workers": 2})
    )


def test_fetches_a_commits_worth_ahead_while_the_consumer_is_busy():
    spec = _spec(commit_every=6)
    provider = CountingProvider(spec)
    stream = iter(PeriodStream(spec, provider, _periods(20), workers=2))
    first = next(stream)
    assert isinstance(first, PeriodBatch)
    # The consumer is now "writing": the threads keep fetching, up to a commit's worth ahead.
    _wait_for(lambda: provider.fetched >= 1 + 6)
    time.sleep(0.3)  # would any more be fetched?
    assert provider.fetched == 1 + 6
    rest = list(stream)
    assert [b.period.key for b in [first, *rest]] == [p.key for p in _periods(20)]
    assert provider.fetched == 20


def test_large_periods_are_fetched_only_workers_ahead(monkeypatch: pytest.MonkeyPatch):
    spec = _spec(commit_every=6)
    monkeypatch.setattr(batch_module, "AHEAD_BYTES", 1)  # every period "too large" to hold many
    provider = CountingProvider(spec)
    stream = iter(PeriodStream(spec, provider, _periods(10), workers=2))
    next(stream)
    _wait_for(lambda: provider.fetched >= 3)
    time.sleep(0.3)
    assert provider.fetched == 3  # the one consumed and the workers' two
    assert len(list(stream)) == 9


def test_a_failed_period_keeps_the_others_coming_in_order():
    spec = _spec(commit_every=4)
    provider = CountingProvider(spec, failing={"2024-01-03"})
    items = list(PeriodStream(spec, provider, _periods(8), workers=2))
    assert [item.period.key for item in items] == [p.key for p in _periods(8)]
    [failure] = [item for item in items if isinstance(item, PeriodFailure)]
    assert failure.period.key == "2024-01-03"
    assert "is gone" in failure.error

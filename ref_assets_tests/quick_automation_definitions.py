"""The code location of ``ref_assets.definitions`` with the time-series copies' automation sensor
evaluated every 5 s (the asset daemon's own loop) instead of every 30 s: test_sensor_daemon waits
for that sensor's next evaluation, and nothing else differs."""

from ref_assets.defs import timeseries

timeseries.AUTOMATION_INTERVAL_SECONDS = 5

from ref_assets.definitions import defs  # noqa: E402  (after the interval is set)

__all__ = ["defs"]

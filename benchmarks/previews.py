"""Map preview cost per period: `prepare_batch` with and without its preview, side by side.

    .venv/bin/python benchmarks/previews.py           # prints a markdown section for RESULTS.md
    .venv/bin/python benchmarks/previews.py --quick   # fewer repeats, to check the script works

Each grid's period is fetched once from the synthetic provider (its noise dominates a real
fetch's cost and is not what is measured here); then `prepare_batch` (checks, casting, checksum,
statistics) runs with and without a preview style, interleaved, and the medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

from ref_assets.batch import prepare_batch
from ref_assets.preview import PreviewStyle
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec

GRIDS = {
    "demo, 0.5 degree Africa (150 x 150)": ([-20.0, -35.0, 55.0, 40.0], 0.5),
    "0.25 degree, 100 x 100 degrees (400 x 400)": ([-50.0, -50.0, 50.0, 50.0], 0.25),
    "0.1 degree global, ERA5-Land's grid (1800 x 3600)": ([-180.0, -90.0, 180.0, 90.0], 0.1),
}
STYLE = PreviewStyle("t2m", "RdYlBu_r", (-40.0, 45.0))


def measure(bbox: list[float], resolution: float, repeats: int) -> dict:
    spec = DatasetSpec.model_validate(
        {
            "id": "preview_bench",
            "title": "Preview benchmark",
            "provider": "synthetic",
            "params": {"bbox": bbox, "resolution": resolution, "seed": 3, "land_only": True},
            "period": "daily",
            "start": "2024-01-01",
            "variables": [
                {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
            ],
        }
    )
    provider = SyntheticProvider(spec)
    description = provider.describe()
    period = spec.period_for_key("2024-07-01")
    fetched = provider.fetch(period)

    def prepare(style: PreviewStyle | None):
        started = time.process_time()
        batch = prepare_batch(
            spec,
            description,
            period,
            fetched,
            provider="synthetic",
            provider_version="bench",
            fetched_at=datetime.now(UTC),
            preview_style=style,
        )
        return time.process_time() - started, batch

    prepare(STYLE)  # the colour map's first use imports matplotlib
    plain, drawn = [], []
    for _ in range(repeats):
        plain.append(prepare(None)[0])
        seconds, batch = prepare(STYLE)
        drawn.append(seconds)
    without, with_preview = statistics.median(plain), statistics.median(drawn)
    return {
        "without": without * 1000,
        "with": with_preview * 1000,
        "preview": (with_preview - without) * 1000,
        "ratio": with_preview / without,
        "size": f"{batch.preview.width} x {batch.preview.height}",
        "bytes": len(batch.preview.png),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 15")
    repeats = 3 if parser.parse_args().quick else 15
    print("## Map previews: cost per period\n")
    print(
        f"`benchmarks/previews.py`: `prepare_batch` of one period without and with its map "
        f"preview, interleaved, median of {repeats} (CPU time of the process: the 2-core machine "
        "is shared with other work).\n"
    )
    print("| grid | prepare ms | prepare + preview ms | preview ms | ratio | PNG | bytes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (bbox, resolution) in GRIDS.items():
        r = measure(bbox, resolution, repeats)
        print(
            f"| {name} | {r['without']:.1f} | {r['with']:.1f} | {r['preview']:.1f} | "
            f"{r['ratio']:.2f} | {r['size']} | {r['bytes']} |"
        )


if __name__ == "__main__":
    main()

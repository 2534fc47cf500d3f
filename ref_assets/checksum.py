"""The output checksum of a period: a digest of its values and coordinates as stored.

Independent of compression and chunking (it digests decoded values, not stored bytes), and of NaN
payload bits (every NaN is hashed as the same canonical NaN). Format ``sha256:<hex>`` over, in
order: the tag ``ref-assets/period-v1``; the period start (ISO 8601); the ``y`` and ``x``
coordinates as little-endian float64; for each extra dimension (pressure level, ensemble member)
sorted by name, if there are any, its name and its coordinate values (numbers as little-endian
float64, strings as UTF-8, each followed by a NUL); then for each variable sorted by name its name,
dtype, shape and values in C order, little-endian.

>>> import numpy as np
>>> from datetime import datetime
>>> a = period_checksum(datetime(2024, 1, 1), np.arange(2.0), np.arange(3.0),
...                     {"t": np.zeros((2, 3), "float32")})
>>> a == period_checksum(datetime(2024, 1, 1), np.arange(2.0), np.arange(3.0),
...                      {"t": np.zeros((2, 3), "float32")})
True
>>> a.startswith("sha256:")
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime

import numpy as np

_TAG = b"ref-assets/period-v1"


def period_checksum(
    start: datetime,
    y: np.ndarray,
    x: np.ndarray,
    variables: Mapping[str, np.ndarray],
    dimensions: Mapping[str, np.ndarray] | None = None,
) -> str:
    digest = hashlib.sha256(_TAG)
    digest.update(start.isoformat().encode())
    for coordinate in (y, x):
        digest.update(np.ascontiguousarray(coordinate, dtype="<f8").tobytes())
    for name in sorted(dimensions or {}):
        values = np.asarray(dimensions[name])
        digest.update(f"\0{name}\0".encode())
        if values.dtype.kind in "iuf":
            digest.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
        else:
            digest.update("".join(f"{value}\0" for value in values.tolist()).encode())
    for name in sorted(variables):
        values = np.asarray(variables[name])
        canonical = np.where(np.isnan(values), np.nan, values).astype(
            values.dtype.newbyteorder("<")
        )
        digest.update(f"\0{name}\0{values.dtype.str[1:]}\0{values.shape}\0".encode())
        digest.update(np.ascontiguousarray(canonical).tobytes())
    return f"sha256:{digest.hexdigest()}"

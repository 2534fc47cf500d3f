"""What an extraction asks for: a typed request, checked before anything is read.

>>> request = ExtractionRequest(dataset="demo_air_temperature", bbox=(170, -20, 190, -10))
>>> request.bbox, request.crosses_antimeridian
((170.0, -20.0, -170.0, -10.0), True)
>>> ExtractionRequest(dataset="demo_air_temperature", points=((36.8, -1.3),)).points
((36.8, -1.3),)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

Format = Literal["netcdf", "zarr", "csv"]
FORMATS: dict[str, str] = {"netcdf": ".nc", "zarr": ".zarr", "csv": ".csv"}


class ExtractionError(ValueError):
    """A request that cannot be served (outside the store's extent, an unknown variable, too
    large, malformed); the message names the dataset and says what is available or what to do."""


def _longitude(value: float, what: str) -> float:
    """A longitude in -180..180 (0..360 accepted: 190 is -170)."""
    if not -180.0 <= value <= 360.0:
        raise ValueError(f"{what} longitude {value} is outside -180..360")
    return value - 360.0 if value > 180.0 else value


def _latitude(value: float, what: str) -> float:
    if not -90.0 <= value <= 90.0:
        raise ValueError(f"{what} latitude {value} is outside -90..90")
    return value


class ExtractionRequest(BaseModel):
    """A subset of one dataset's store, at ``main``'s tip, a ``snapshot`` or a release ``tag``.

    - ``bbox``: west, south, east, north in degrees (cells whose centres lie inside, edges
      included); west > east crosses the antimeridian (170, -20, -170, -10: 20 degrees wide).
      Or ``points``: (lon, lat) pairs, each read at its nearest cell. Neither: the whole grid.
    - ``start``, ``end``: period keys (or ISO times), both included; default: the first and the
      newest period the snapshot holds.
    - ``variables``: default every variable of the store.
    - ``format``: ``netcdf`` (.nc), ``zarr`` (.zarr directory) or ``csv`` (a row per time, cell
      or point).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    bbox: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] | None = None
    start: str | None = None
    end: str | None = None
    variables: tuple[str, ...] | None = None
    format: Format = "netcdf"
    snapshot: str | None = None
    tag: str | None = None

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, bbox: tuple[float, float, float, float] | None):
        if bbox is None:
            return None
        west, south, east, north = bbox
        west, east = _longitude(west, "bbox west"), _longitude(east, "bbox east")
        south, north = _latitude(south, "bbox south"), _latitude(north, "bbox north")
        if south > north:
            raise ValueError(f"bbox south {south} is north of bbox north {north}")
        if west == east:
            raise ValueError(f"bbox west and east are the same longitude ({west})")
        return (west, south, east, north)

    @field_validator("points")
    @classmethod
    def _points(cls, points: tuple[tuple[float, float], ...] | None):
        if points is None:
            return None
        if not points:
            raise ValueError("points is empty: give at least one lon,lat (or leave it out)")
        return tuple((_longitude(lon, "point"), _latitude(lat, "point")) for lon, lat in points)

    @field_validator("variables")
    @classmethod
    def _variables(cls, variables: tuple[str, ...] | None):
        if variables is None:
            return None
        if not variables:
            raise ValueError("variables is empty: name at least one (or leave it out for all)")
        return tuple(dict.fromkeys(variables))  # duplicates once, the order as given

    @model_validator(mode="after")
    def _one_of_each(self) -> ExtractionRequest:
        if self.bbox is not None and self.points is not None:
            raise ValueError("give a bbox or points, not both")
        if self.snapshot is not None and self.tag is not None:
            raise ValueError("give a snapshot or a tag, not both (a tag names a snapshot)")
        return self

    @property
    def crosses_antimeridian(self) -> bool:
        return self.bbox is not None and self.bbox[0] > self.bbox[2]

    @property
    def suffix(self) -> str:
        return FORMATS[self.format]

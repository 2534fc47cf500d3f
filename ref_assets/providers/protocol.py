"""The provider contract: how a source of periods plugs into ref_assets.

A provider is a class registered under the entry-point group ``ref_assets.providers``. It is built
from a validated `DatasetSpec` (reading its own parameters from ``spec.params``) and then answers
four questions: what grid and variables it delivers, which periods exist in a range, which is the
latest, and what one period holds. Providers never touch the store; the store never calls them.
A constructor checks the params and does no I/O: ``ref-assets config validate`` builds every
dataset's provider, offline, to report what a run would refuse.

Example (a provider serving a constant field; register it in your ``pyproject.toml``)::

    [project.entry-points."ref_assets.providers"]
    constant = "my_package.constant:ConstantProvider"

.. code-block:: python

    class ConstantProvider:
        name = "constant"
        version = "1.0"

        def __init__(self, spec: DatasetSpec) -> None:
            self.spec = spec
            self.grid = Grid.regular(west=0, south=0, east=10, north=5, resolution=1.0)

        def describe(self) -> Description:
            return Description.from_spec(self.spec, self.grid)

        def available_periods(self, first: Period, last: Period) -> list[Period]:
            return periods_between(first, last)

        def latest_available(self) -> Period | None:
            return last_complete_period(self.spec.period)

        def fetch(self, period: Period) -> FetchedPeriod:
            payload = b"42"
            values = np.full(self.grid.shape, 42.0, dtype="float32")
            data = xr.Dataset({"v": (("y", "x"), values)}, coords=self.grid.coords())
            return FetchedPeriod(data, (SourceItem.from_bytes(f"const://{period}", payload),))
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, ClassVar, Protocol, runtime_checkable

import numpy as np
import xarray as xr
from pydantic import AfterValidator, BaseModel, FiniteFloat, ValidationError

# last_complete_period is re-exported: providers take the whole contract from this module.
from ref_assets.periods import Period
from ref_assets.periods import last_complete_period as last_complete_period
from ref_assets.secrets import redact

if TYPE_CHECKING:
    from ref_assets.specs import DatasetSpec

WGS84_WKT = (
    'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,'
    '298.257223563,LENGTHUNIT["metre",1]]],PRIMEM["Greenwich",0,ANGLEUNIT["degree",'
    '0.0174532925199433]],CS[ellipsoidal,2],AXIS["geodetic latitude (Lat)",north,ORDER[1],'
    'ANGLEUNIT["degree",0.0174532925199433]],AXIS["geodetic longitude (Lon)",east,ORDER[2],'
    'ANGLEUNIT["degree",0.0174532925199433]],ID["EPSG",4326]]'
)


class ProviderError(RuntimeError):
    """A provider could not deliver a period; the message names the dataset, period and source."""


class ProviderParamsError(ProviderError):
    """A spec's ``params`` that its provider refuses: every bad field with its problem (secrets
    masked), not just the first."""

    def __init__(self, dataset_id: str, problems: list[tuple[str, str]]) -> None:
        self.dataset_id = dataset_id
        self.problems = [(where, redact(problem)) for where, problem in problems]
        super().__init__(
            f"{dataset_id}: " + "; ".join(f"{where}: {problem}" for where, problem in self.problems)
        )


def _ordered_bbox(bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    west, south, east, north = bbox
    if not (west < east and south < north):
        raise ValueError(
            f"{list(bbox)} is not [west, south, east, north]: need west < east and south < north"
        )
    return bbox


# A bounding box in a provider's params: [west, south, east, north], finite and not reversed.
BoundingBox = Annotated[
    tuple[FiniteFloat, FiniteFloat, FiniteFloat, FiniteFloat], AfterValidator(_ordered_bbox)
]


@dataclass(frozen=True)
class SourceItem:
    """One input a period was built from: where it came from and a checksum of its bytes."""

    uri: str
    size: int
    sha256: str
    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def from_bytes(cls, uri: str, payload: bytes, **extra: str | None) -> SourceItem:
        return cls(uri=uri, size=len(payload), sha256=hashlib.sha256(payload).hexdigest(), **extra)


@dataclass(frozen=True)
class Grid:
    """A regular grid: cell-centre coordinates along ``y`` and ``x`` and its CRS (WKT)."""

    y: np.ndarray
    x: np.ndarray
    crs_wkt: str = WGS84_WKT

    @classmethod
    def regular(
        cls, *, west: float, south: float, east: float, north: float, resolution: float
    ) -> Grid:
        """Cell centres of a north-up lat/lon grid covering the box (y descending, as rasters)."""
        if not (west < east and south < north and resolution > 0):
            raise ValueError(
                f"bad grid box west={west} south={south} east={east} north={north} "
                f"resolution={resolution}: need west < east, south < north, resolution > 0"
            )
        nx = round((east - west) / resolution)
        ny = round((north - south) / resolution)
        if nx == 0 or ny == 0:
            raise ValueError(
                f"the box west={west} south={south} east={east} north={north} holds no whole "
                f"cell of {resolution} degrees: make the box larger or the resolution finer"
            )
        x = west + resolution * (np.arange(nx) + 0.5)
        y = north - resolution * (np.arange(ny) + 0.5)
        return cls(y=y, x=x)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y.size, self.x.size)

    def coords(self) -> dict[str, xr.Variable]:
        """CF coordinate variables for ``y`` and ``x`` (geographic axes are named lat/lon in CF
        attributes; the dimensions stay ``y``/``x`` as rioxarray expects)."""
        return {
            "y": xr.Variable(
                "y",
                self.y,
                {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"},
            ),
            "x": xr.Variable(
                "x",
                self.x,
                {"standard_name": "longitude", "units": "degrees_east", "axis": "X"},
            ),
        }


@dataclass(frozen=True)
class VariableDescription:
    units: str
    attributes: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Description:
    """What a provider delivers for every period: the grid and the variables."""

    grid: Grid
    variables: dict[str, VariableDescription]

    @classmethod
    def from_spec(cls, spec: DatasetSpec, grid: Grid) -> Description:
        """A description delivering exactly the spec's variables (typical of simple providers)."""
        return cls(
            grid=grid,
            variables={
                v.name: VariableDescription(units=v.units, attributes=dict(v.attributes))
                for v in spec.variables
            },
        )


@dataclass(frozen=True)
class SourceFingerprint:
    """What a source says of a period's published version without it being downloaded (an
    HTTP HEAD, a file's stat): when it differs from the fingerprint in the period's record,
    the source was republished and the period is fetched again (a revision).

    ``stage`` names the product stage where a source has several (CHIRPS ``prelim``/``final``);
    ``preliminary`` marks data the source will replace (CHIRPS prelim, ERA5T). Two fingerprints
    are the same version when their ETag, Last-Modified, size and stage agree (`identity`):
    ``preliminary`` describes a version, it does not tell two apart.

    >>> a = SourceFingerprint(etag='"abc"', size=10, stage="prelim", preliminary=True)
    >>> a.same_version(SourceFingerprint(etag='"abc"', size=10, stage="prelim"))
    True
    """

    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None
    stage: str | None = None
    preliminary: bool = False

    @property
    def identity(self) -> tuple:
        return (self.etag, self.last_modified, self.size, self.stage)

    def same_version(self, other: SourceFingerprint) -> bool:
        return self.identity == other.identity

    def to_dict(self) -> dict[str, str | int | bool]:
        """As a record stores it (unset fields left out)."""
        fields = {
            "etag": self.etag,
            "last_modified": self.last_modified,
            "size": self.size,
            "stage": self.stage,
        }
        stored: dict[str, str | int | bool] = {k: v for k, v in fields.items() if v is not None}
        if self.preliminary:
            stored["preliminary"] = True
        return stored

    @classmethod
    def from_dict(cls, stored: dict) -> SourceFingerprint:
        return cls(
            **{k: stored.get(k) for k in ("etag", "last_modified", "size", "stage")},
            preliminary=bool(stored.get("preliminary", False)),
        )


@dataclass(frozen=True)
class FetchedPeriod:
    """One period as the provider read it: variables on ``(y, x)`` or ``(time, y, x)`` with one
    time step, every source item read to build it, the source's per-step flags, kept in the
    period's record (such as ERA5's ``expver``: ``0001`` final, ``0005`` preliminary ERA5T), and
    the fingerprint of the version read (from the very responses or stat of the fetch), which a
    later `Provider.fingerprint` is compared with to find revisions."""

    data: xr.Dataset
    sources: tuple[SourceItem, ...]
    flags: dict[str, str] = field(default_factory=dict)
    fingerprint: SourceFingerprint | None = None


@runtime_checkable
class Provider(Protocol):
    """The contract every provider satisfies (see the module docstring for an example).

    Optional: a class attribute ``extra_dimensions = True`` says the provider delivers the spec's
    extra dimensions (pressure levels...) on variables shaped ``(*dimensions, y, x)``; without
    it, a spec declaring `dimensions` is refused when the provider is built.

    Optional: a class attribute ``pool_limit = N`` says how many runs may fetch from the
    provider's upstream at once without being refused or banned (each fetching
    ``runs.fetch_workers`` periods); the dataset's Dagster pool gets it as its limit (see
    `ref_assets.pools`). None or absent: no limit of the provider's own.

    Optional: ``fingerprint(period) -> SourceFingerprint | None``, the published version of a
    period found cheaply (a HEAD, a stat; never a download), None when it is not published. A
    provider that has it, and sets `FetchedPeriod.fingerprint` when fetching, gets revisions:
    the dataset's sensor re-materializes a stored period whose fingerprint changed (see
    `source_fingerprint`)."""

    name: ClassVar[str]
    version: ClassVar[str]

    def describe(self) -> Description:
        """The grid and variables every fetched period must match."""
        ...

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        """The periods in ``[first, last]`` that the source has published, in order."""
        ...

    def latest_available(self) -> Period | None:
        """The newest published period, or None when the source has none yet."""
        ...

    def fetch(self, period: Period) -> FetchedPeriod:
        """Read one period; raise ProviderError naming the period and source on failure."""
        ...


def source_fingerprint(provider: Provider, period: Period) -> SourceFingerprint | None:
    """The provider's fingerprint of ``period``; None when the provider has no `fingerprint`
    method (its periods are never revised) or the period is not published."""
    fingerprint = getattr(provider, "fingerprint", None)
    return fingerprint(period) if fingerprint is not None else None


def has_fingerprints(provider: Provider) -> bool:
    return callable(getattr(provider, "fingerprint", None))


def parse_params[Params: BaseModel](model: type[Params], spec: DatasetSpec) -> Params:
    """``spec.params`` validated by a provider's params model; a `ProviderParamsError` naming the
    dataset and every bad field otherwise (an unknown one with the parameter it may mean)."""
    try:
        return model.model_validate(spec.params)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            where = ".".join(map(str, ("params", *error["loc"])))
            problem = error["msg"]
            if error["type"] == "missing":
                problem += f" (provider {spec.provider!r} needs it)"
            elif error["type"] == "extra_forbidden":
                problem += f": provider {spec.provider!r} has no such parameter" + _known_hint(
                    model, error["loc"]
                )
            problems.append((where, problem))
        raise ProviderParamsError(spec.id, problems) from None


def _known_hint(model: type[BaseModel], loc: tuple) -> str:
    """For an unknown top-level parameter: the known one it may be a typo of, or all of them."""
    if len(loc) != 1:
        return ""
    known = sorted(model.model_fields)
    close = difflib.get_close_matches(str(loc[0]), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def periods_between(first: Period, last: Period) -> list[Period]:
    """Every period from ``first`` to ``last`` inclusive."""
    count = first.type.index(last.start, origin=first.start) + 1
    return [Period(first.type, first.type.at(i, first.start)) for i in range(max(count, 0))]

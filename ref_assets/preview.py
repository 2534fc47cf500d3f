"""Map previews: a small PNG of one period's main variable, for the Dagster UI.

The colour map and range come from the variable vocabulary (``colormap``, ``display_range`` per
units); NaN is transparent and north is up. The image is a palette PNG of `LEVELS` colour steps
(4 bits a pixel) made as large as fits `INLINE_PNG_BYTES`: Dagster's UI draws a markdown
metadata value in place only below 1,000 characters (longer ones hide behind "Show Markdown"),
and every byte is kept in the event log once per partition.

>>> style = PreviewStyle("t2m", "RdYlBu_r", (-40.0, 45.0))
>>> preview = render_preview(values, y, x, style)  # doctest: +SKIP
>>> preview.png[:4], preview.caption  # doctest: +SKIP
(b"\x89PNG", "t2m, RdYlBu_r -40 to 45")
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ref_assets.specs import DatasetSpec
from ref_assets.vocabulary import VariableVocabulary

DEFAULT_COLORMAP = "viridis"
LEVELS = 15  # colour steps; with the transparent one, 16 colours: a 4-bit PNG
MAX_SIDE = 256  # pixels on the long side, at most
# base64 of this many bytes plus the markdown around it stays under Dagster's 1,000 characters.
INLINE_PNG_BYTES = 700
# Pixels on the long side, tried largest first; the smallest (32 x 32 at 4 bits, 512 bytes
# before compression) always fits. The one chosen is then drawn larger if that fits too.
SAMPLED_SIDES = (128, 96, 64, 48, 32)
# Cells averaged into a pixel along each axis, at most: a finer grid is strided first, so a
# 0.1 degree global field costs about what a small one does.
_CELLS_PER_PIXEL = 4


@dataclass(frozen=True)
class PreviewStyle:
    """How a dataset's previews are drawn: which variable, colour map and value range (None:
    each period's own finite range)."""

    variable: str
    colormap: str = DEFAULT_COLORMAP
    display_range: tuple[float, float] | None = None

    @classmethod
    def for_spec(cls, spec: DatasetSpec, vocabulary: VariableVocabulary) -> PreviewStyle:
        """The style of ``spec``'s first variable, from its vocabulary entry and units."""
        variable = spec.variables[0]
        entry = vocabulary.variables.get(variable.name)
        if entry is None:
            return cls(variable.name)
        return cls(
            variable.name,
            entry.colormap or DEFAULT_COLORMAP,
            entry.display_range.get(variable.units),
        )


@dataclass(frozen=True)
class Preview:
    """A rendered preview: the PNG and what it shows."""

    png: bytes
    width: int
    height: int
    caption: str  # variable, selection of extra dimensions, range


def render_preview(
    values: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    style: PreviewStyle,
    *,
    selection: str = "",
    budget: int = INLINE_PNG_BYTES,
) -> Preview:
    """Draw ``values`` (``(y, x)``, on the axes ``y`` and ``x``) as a PNG of at most
    `MAX_SIDE` pixels on its long side, as large as fits ``budget`` bytes (else the smallest).

    Cells are averaged into blocks (a block with more NaN than values is transparent); values
    beyond the range take its end colours; without a display range, the (strided) field's own
    range is used. Raises ValueError for an unknown colour map."""
    if values.ndim != 2:
        raise ValueError(f"a preview draws a 2-D (y, x) field, got shape {values.shape}")
    if y.size > 1 and y[0] < y[-1]:
        values = values[::-1]  # north up
    if x.size > 1 and x[0] > x[-1]:
        values = values[:, ::-1]  # west left
    step = max(1, max(values.shape) // (SAMPLED_SIDES[0] * _CELLS_PER_PIXEL))
    values = values[::step, ::step]
    low, high = style.display_range or _finite_range(values)
    palette = _palette(style.colormap)
    finite = np.isfinite(values)
    # One pass over the field; each smaller size adds up these blocks.
    blocks = _BlockSums.of(np.where(finite, values, 0.0), finite, SAMPLED_SIDES[0])
    for sampled in SAMPLED_SIDES:
        indices = _colour_indices(blocks.coarsened(sampled).means(), low, high)
        png = _encode(indices, palette)
        if len(png) <= budget:
            break
    # Drawn larger, each pixel a square of pixels, as far as MAX_SIDE and the budget allow: a
    # small grid would otherwise be a few pixels wide.
    scale = MAX_SIDE // max(indices.shape)
    while scale > 1:
        larger = np.repeat(np.repeat(indices, scale, axis=0), scale, axis=1)
        larger_png = _encode(larger, palette)
        if len(larger_png) <= budget:
            png, indices = larger_png, larger
            break
        scale //= 2
    height, width = indices.shape
    where = f" {selection}" if selection else ""
    caption = f"{style.variable}{where}, {style.colormap} {_number(low)} to {_number(high)}"
    return Preview(png, width, height, caption)


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0, 1.0)
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if low < high else (low - 0.5, high + 0.5)


@dataclass(frozen=True)
class _BlockSums:
    """A field cut into blocks: per block the sum of its finite values, their count and the
    number of cells."""

    sums: np.ndarray
    counts: np.ndarray
    cells: np.ndarray

    @classmethod
    def of(cls, filled: np.ndarray, finite: np.ndarray, long_side: int) -> _BlockSums:
        """``filled`` (0 where not ``finite``) in at most ``long_side`` blocks along its long
        axis, and as many in proportion along the other."""
        blocks, shape = _block_ids(filled.shape, long_side)
        size = shape[0] * shape[1]
        return cls(
            np.bincount(blocks, weights=filled.ravel(), minlength=size).reshape(shape),
            np.bincount(blocks, weights=finite.ravel(), minlength=size).reshape(shape),
            np.bincount(blocks, minlength=size).reshape(shape).astype(float),
        )

    def coarsened(self, long_side: int) -> _BlockSums:
        if max(self.sums.shape) <= long_side:
            return self
        blocks, shape = _block_ids(self.sums.shape, long_side)
        size = shape[0] * shape[1]
        return _BlockSums(
            *(
                np.bincount(blocks, weights=a.ravel(), minlength=size).reshape(shape)
                for a in (self.sums, self.counts, self.cells)
            )
        )

    def means(self) -> np.ndarray:
        """Block means; NaN where a block has more NaN cells than values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts * 2 >= self.cells, self.sums / self.counts, np.nan)


def _block_ids(shape: tuple[int, int], long_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Each cell's block (flat index, row-major) and the blocks' shape."""
    ny, nx = shape
    factor = min(1.0, long_side / max(ny, nx))
    oy, ox = max(1, round(ny * factor)), max(1, round(nx * factor))
    ids = (np.arange(ny) * oy // ny)[:, None] * ox + np.arange(nx) * ox // nx
    return ids.ravel(), (oy, ox)


def _colour_indices(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Palette indices: 0..LEVELS-1 from ``low`` to ``high``, LEVELS (transparent) for NaN."""
    finite = np.isfinite(values)
    scaled = (np.where(finite, values, low) - low) / (high - low) * LEVELS
    steps = np.clip(scaled, 0, LEVELS - 1).astype(np.uint8)
    return np.where(finite, steps, LEVELS).astype(np.uint8)


def _encode(indices: np.ndarray, palette: list[int]) -> bytes:
    image = Image.fromarray(np.ascontiguousarray(indices), "P")
    image.putpalette(palette, "RGB")
    buffer = io.BytesIO()
    # zlib's default level: level 9 (``optimize``) saved 10 % here and took 5 times as long.
    image.save(buffer, "PNG", bits=4, transparency=LEVELS)
    return buffer.getvalue()


@functools.cache
def _palette(colormap: str) -> list[int]:
    """`LEVELS` colours sampled at the middle of each step, then the transparent one (black)."""
    # Imported here: matplotlib takes a second or more to import, which the code location's
    # load (in every run worker and the webserver) should not pay.
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(
            f"unknown colour map {colormap!r}: the vocabulary's `colormap` must name a "
            "matplotlib colour map (such as viridis, RdYlBu_r, YlGnBu)"
        ) from None
    colours = cmap((np.arange(LEVELS) + 0.5) / LEVELS)[:, :3]
    return [*np.round(colours * 255).astype(int).ravel().tolist(), 0, 0, 0]


def _number(value: float) -> str:
    return f"{value:.4g}"

"""Map previews: a small PNG of one period's main variable, for the Dagster UI.

The colour map and range come from the variable vocabulary (``colormap``, ``display_range`` per
units); NaN is transparent and north is up. The image is a palette PNG of `LEVELS` colour steps
(4 bits a pixel) made as large as fits `INLINE_PNG_BYTES`: Dagster's UI draws a markdown
metadata value in place only below 1,000 characters (longer ones hide behind "Show Markdown"),
and every byte is kept in the event log once per partition.

>>> style = PreviewStyle("t2m", "RdYlBu_r", (-40.0, 45.0))
>>> png = render_preview(values, y, style)  # doctest: +SKIP
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
# (pixels sampled on the long side, times each is drawn), tried largest first; the last one
# (32 x 32 at 4 bits, 512 bytes before compression) always fits.
_RUNGS = ((128, 2), (96, 2), (64, 2), (128, 1), (48, 2), (64, 1), (32, 2), (48, 1), (32, 1))


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
    beyond the range take its end colours. Raises ValueError for an unknown colour map."""
    if values.ndim != 2:
        raise ValueError(f"a preview draws a 2-D (y, x) field, got shape {values.shape}")
    if y.size > 1 and y[0] < y[-1]:
        values = values[::-1]  # north up
    if x.size > 1 and x[0] > x[-1]:
        values = values[:, ::-1]  # west left
    low, high = style.display_range or _finite_range(values)
    palette = _palette(style.colormap)
    png = b""
    for sampled, scale in _RUNGS:
        indices = _colour_indices(_block_mean(values, sampled), low, high)
        if scale > 1:
            indices = np.repeat(np.repeat(indices, scale, axis=0), scale, axis=1)
        png = _encode(indices, palette)
        if len(png) <= budget:
            break
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


def _block_mean(values: np.ndarray, long_side: int) -> np.ndarray:
    """``values`` averaged into at most ``long_side`` blocks along the long axis (and as many,
    in proportion, along the other); NaN where a block is mostly NaN."""
    ny, nx = values.shape
    factor = min(1.0, long_side / max(ny, nx))
    oy, ox = max(1, round(ny * factor)), max(1, round(nx * factor))
    y_edges = np.linspace(0, ny, oy + 1).astype(int)[:-1]
    x_edges = np.linspace(0, nx, ox + 1).astype(int)[:-1]
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.add.reduceat(np.where(finite, values, 0.0), y_edges, 0), x_edges, 1)
    counts = np.add.reduceat(np.add.reduceat(finite.astype(np.int32), y_edges, 0), x_edges, 1)
    sizes = np.diff([*y_edges, ny])[:, None] * np.diff([*x_edges, nx])[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts * 2 >= sizes, sums / counts, np.nan)


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
    image.save(buffer, "PNG", optimize=True, bits=4, transparency=LEVELS)
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

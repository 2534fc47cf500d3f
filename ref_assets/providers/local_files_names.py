"""File-name patterns of a `local_files` archive: date placeholders (``{year}``, ``{month}``,
``{day}``, ``{hour}``) or a plain glob, relative to the archive root.

>>> pattern = FileNamePattern.parse("{year}/t2m_{year}{month}.nc")
>>> pattern.glob, pattern.granularity.value
('*/t2m_*.nc', 'monthly')
>>> pattern.period_of("2024/t2m_202402.nc").key
'2024-02'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from ref_assets.periods import Period, PeriodType

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# Placeholders from coarsest to finest: the period type each names and its digits.
_FIELDS = {
    "year": (PeriodType.YEARLY, 4),
    "month": (PeriodType.MONTHLY, 2),
    "day": (PeriodType.DAILY, 2),
    "hour": (PeriodType.HOURLY, 2),
}
FINENESS = {period_type: rank for rank, (period_type, _) in enumerate(_FIELDS.values())}


@dataclass(frozen=True)
class FileNamePattern:
    """A pattern relative to the archive root: date placeholders (``{year}/t2m_{year}{month}.nc``,
    each from ``{year}`` down without gaps) or a plain glob (``*.nc``)."""

    text: str
    fields: tuple[str, ...]
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> FileNamePattern:
        used = _PLACEHOLDER.findall(text)
        unknown = sorted(set(used) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown placeholders {unknown}: use {{year}}, {{month}}, ...")
        fields = tuple(name for name in _FIELDS if name in used)
        if fields != tuple(_FIELDS)[: len(fields)]:
            raise ValueError(f"placeholders {list(fields)} skip a field: go from {{year}} down")
        pieces, seen = [], set()
        for position, part in enumerate(_PLACEHOLDER.split(text)):
            if position % 2 == 0:
                pieces.append(re.escape(part))
            elif part in seen:  # the same field again (a year folder and a year in the name)
                pieces.append(f"(?P={part})")
            else:
                seen.add(part)
                pieces.append(f"(?P<{part}>\\d{{{_FIELDS[part][1]}}})")
        return cls(text, fields, re.compile("".join(pieces)))

    @property
    def granularity(self) -> PeriodType | None:
        """The period type a file name spells (None for a glob)."""
        return _FIELDS[self.fields[-1]][0] if self.fields else None

    @property
    def glob(self) -> str:
        """The pattern as a glob (adjacent placeholders are one ``*``: ``**`` means folders)."""
        return re.sub(f"(?:{_PLACEHOLDER.pattern})+", "*", self.text)

    def period_of(self, relative_path: str) -> Period | None:
        """The period a file name spells, or None when it does not fit the placeholders."""
        match = self.regex.fullmatch(relative_path)
        if self.granularity is None or match is None:
            return None
        values = {name: int(match[name]) for name in self.fields}
        try:
            start = datetime(
                values["year"], values.get("month", 1), values.get("day", 1), values.get("hour", 0)
            )
        except ValueError:  # "2023-02-30": not a file of this archive
            return None
        return Period(self.granularity, start)

    def name_for(self, period: Period) -> str:
        start = period.start
        return self.text.format(
            year=f"{start.year:04d}",
            month=f"{start.month:02d}",
            day=f"{start.day:02d}",
            hour=f"{start.hour:02d}",
        )

"""The controlled vocabulary of variable names and units that dataset specs are validated against.

The vocabulary is a TOML file (``[paths] variables_cv`` in ref.toml; by default the packaged
``packaged:ref_assets/data/variables_cv.toml``). An operator's own file may ``extends`` another
vocabulary (a packaged reference or a path) and add or replace entries::

    format = "ref-assets/variables-cv-v1"
    extends = "packaged:ref_assets/data/variables_cv.toml"

    [variables.ndvi]
    units = ["1"]
    long_name = "Normalized difference vegetation index"
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    model_validator,
)

from ref_assets.config import ConfigError
from ref_assets.specs import DatasetSpec, VariableName

VOCABULARY_FORMAT = "ref-assets/variables-cv-v1"


class VocabularyError(ConfigError):
    """A vocabulary file that cannot be read or is malformed; the message names the file."""


def _ordered_range(value: tuple[float, float]) -> tuple[float, float]:
    if not value[0] < value[1]:
        raise ValueError(f"{list(value)} is not [low, high] with low < high")
    return value


# [low, high] of a variable in given units, finite and not reversed.
ValueRange = Annotated[tuple[FiniteFloat, FiniteFloat], AfterValidator(_ordered_range)]


class VocabularyEntry(BaseModel):
    """One allowed variable. ``valid_range`` (per units) bounds every stored value: a value
    outside is implausible, and the partitioned check fails. ``display_range`` and ``colormap``
    (a matplotlib colour map) draw the map previews."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    units: list[str] = Field(min_length=1)
    standard_name: str | None = None
    long_name: str | None = None
    valid_range: dict[str, ValueRange] = Field(default_factory=dict)
    display_range: dict[str, ValueRange] = Field(default_factory=dict)
    colormap: str | None = None

    @model_validator(mode="after")
    def _ranges_name_allowed_units(self) -> VocabularyEntry:
        for field in ("valid_range", "display_range"):
            unknown = sorted(set(getattr(self, field)) - set(self.units))
            if unknown:
                raise ValueError(
                    f"{field} is given for units {unknown} that are not among the allowed "
                    f"units {self.units}"
                )
        return self


class _VocabularyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["ref-assets/variables-cv-v1"]
    extends: str | None = None
    variables: dict[VariableName, VocabularyEntry] = Field(default_factory=dict)


@dataclass(frozen=True)
class VariableVocabulary:
    """Allowed variables by name, and the files they were read from (the first is the one the
    configuration names)."""

    variables: dict[str, VocabularyEntry]
    sources: tuple[str, ...]

    def problems(self, spec: DatasetSpec) -> list[tuple[str, str]]:
        """``(field, message)`` for every variable of ``spec`` the vocabulary does not allow."""
        found = []
        for index, variable in enumerate(spec.variables):
            entry = self.variables.get(variable.name)
            if entry is None:
                close = difflib.get_close_matches(variable.name, self.variables, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                found.append(
                    (
                        f"variables.{index}.name",
                        f"{variable.name!r} is not in the variable vocabulary {self.sources[0]}"
                        f"{hint} To add it, write a vocabulary that extends this one and point "
                        "[paths] variables_cv in ref.toml at it",
                    )
                )
                continue
            if variable.units not in entry.units:
                found.append(
                    (
                        f"variables.{index}.units",
                        f"{variable.name}: units {variable.units!r} are not allowed by the "
                        f"vocabulary (allowed: {', '.join(entry.units)})",
                    )
                )
            standard_name = variable.attributes.get("standard_name")
            if entry.standard_name and standard_name and standard_name != entry.standard_name:
                found.append(
                    (
                        f"variables.{index}.attributes.standard_name",
                        f"{variable.name}: standard_name {standard_name!r} differs from the "
                        f"vocabulary's {entry.standard_name!r}",
                    )
                )
        return found


def load_vocabulary(
    reference: str, resolve: Callable[[str], Path], *, _seen: tuple[str, ...] = ()
) -> VariableVocabulary:
    """Read the vocabulary ``reference`` names, following ``extends`` (a relative path there is
    taken from the extending file's directory); ``resolve`` turns a reference (``packaged:...``
    or a path) into a readable file."""
    if reference in _seen:
        chain = " -> ".join((*_seen, reference))
        raise VocabularyError(f"variable vocabulary extends itself: {chain}")
    path = resolve(reference)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        document = _VocabularyFile.model_validate(raw)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise VocabularyError(f"variable vocabulary {reference} ({path}): {err}") from err
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise VocabularyError(
            f"variable vocabulary {reference} ({path}): {key}: {first['msg']}"
        ) from None
    variables: dict[str, VocabularyEntry] = {}
    sources: tuple[str, ...] = (reference,)
    if document.extends:
        extends = document.extends
        if not extends.startswith("packaged:"):
            extends = str(path.parent / Path(extends).expanduser())
        try:
            base = load_vocabulary(extends, resolve, _seen=(*_seen, reference))
        except ConfigError as err:
            raise VocabularyError(f"{err} (named by `extends` in {path})") from None
        variables.update(base.variables)
        sources += base.sources
    variables.update(document.variables)
    return VariableVocabulary(variables, sources)

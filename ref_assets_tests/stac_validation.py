"""pystac's validator with every schema read from files: the core STAC schemas pystac ships, and
the extension schemas vendored in ``stac_schemas/`` (see its README). A schema that is neither
is an error naming its URL; nothing is fetched from the network.

>>> with offline_stac_validation():  # doctest: +SKIP
...     collection.validate()
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pystac.validation
from pystac.validation.stac_validator import JsonSchemaSTACValidator

SCHEMAS = Path(__file__).parent / "stac_schemas"


class MissingSchemaError(LookupError):
    pass


class OfflineValidator(JsonSchemaSTACValidator):
    """Schemas from pystac's own files and ``stac_schemas/``; any other URL is refused."""

    def __init__(self) -> None:
        super().__init__()
        for path in sorted(SCHEMAS.glob("*.json")):
            schema = json.loads(path.read_text(encoding="utf-8"))
            self.schema_cache[schema["$id"]] = schema

    def _get_schema(self, schema_uri: str) -> dict:
        if schema_uri not in self.schema_cache:
            raise MissingSchemaError(
                f"no schema file for {schema_uri}: add it to {SCHEMAS} (see its README)"
            )
        return self.schema_cache[schema_uri]


@contextlib.contextmanager
def offline_stac_validation() -> Iterator[None]:
    previous = pystac.validation.RegisteredValidator.get_validator()
    pystac.validation.set_validator(OfflineValidator())
    try:
        yield
    finally:
        pystac.validation.set_validator(previous)

"""Providers that exist only to be named in test ref.toml files (``[[providers]]``)."""

from typing import ClassVar

from ref_assets.providers.synthetic import SyntheticProvider


class InHouseProvider(SyntheticProvider):
    """An operator's own provider: the synthetic fields under another name and version."""

    name: ClassVar[str] = "in_house"
    version: ClassVar[str] = "2.1"


class NotAProvider:
    """Importable, but without the provider contract."""

    name = "not_a_provider"

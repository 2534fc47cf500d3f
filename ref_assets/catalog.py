"""The datasets a configuration defines: packaged and user specs, checked against the variable
vocabulary that ref.toml names.

>>> from ref_assets.config import load_settings
>>> catalog = load_catalog(load_settings())  # doctest: +SKIP
>>> sorted(catalog.specs)  # doctest: +SKIP
['demo_air_temperature']
"""

from __future__ import annotations

from ref_assets.config import Settings
from ref_assets.specs import SpecCatalog, load_specs, packaged_spec_dir
from ref_assets.vocabulary import VariableVocabulary, load_vocabulary


def configured_vocabulary(settings: Settings) -> VariableVocabulary:
    """The vocabulary ``[paths] variables_cv`` names; `ConfigError` if it cannot be read."""
    return load_vocabulary(settings.variables_cv, settings.resolve_path)


def load_catalog(settings: Settings, vocabulary: VariableVocabulary | None = None) -> SpecCatalog:
    """Every spec that loads; broken ones (including vocabulary violations) are in ``errors``.
    A vocabulary that cannot be read raises `ConfigError`: no spec could be checked."""
    vocabulary = vocabulary or configured_vocabulary(settings)
    return load_specs([packaged_spec_dir(), settings.user_spec_dir], check=vocabulary.problems)

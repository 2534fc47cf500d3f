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
from ref_assets.vocabulary import load_vocabulary


def load_catalog(settings: Settings) -> SpecCatalog:
    """Every spec that loads; broken ones (including vocabulary violations) are in ``errors``.
    A vocabulary that cannot be read raises `ConfigError`: no spec could be checked."""
    vocabulary = load_vocabulary(settings.variables_cv, settings.resolve_path)
    return load_specs([packaged_spec_dir(), settings.user_spec_dir], check=vocabulary.problems)

"""Where ref_assets keeps its configuration and its stores.

``REF_CONFIGURATION`` names the configuration directory (default: the platform's user config
directory, ``~/.config/ref_assets`` on Linux). It holds ``ref.toml``, the operator's dataset specs
in ``datasets/`` and, unless configured otherwise, the Icechunk stores in ``stores/``.

``ref.toml`` (optional; a missing file means defaults)::

    [storage]
    root = "/data/ref-stores"   # relative paths are taken from the configuration directory

``REF_STORAGE_ROOT`` overrides ``[storage] root``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import tomlkit
from pydantic import BaseModel, ConfigDict, ValidationError
from tomlkit.exceptions import TOMLKitError


class ConfigError(ValueError):
    """A configuration file or variable that cannot be used; the message says which and why."""


class _StorageSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str | None = None


class _RefToml(BaseModel):
    model_config = ConfigDict(extra="allow")
    storage: _StorageSection = _StorageSection()


@dataclass(frozen=True)
class Settings:
    """The effective settings: file values overridden by ``REF_*`` environment variables."""

    configuration_dir: Path
    storage_root: str

    @property
    def user_spec_dir(self) -> Path:
        return self.configuration_dir / "datasets"

    @property
    def config_file(self) -> Path:
        return self.configuration_dir / "ref.toml"


def default_configuration_dir() -> Path:
    return Path(platformdirs.user_config_dir("ref_assets", appauthor=False))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``$REF_CONFIGURATION/ref.toml`` (if present) and apply environment overrides."""
    env = os.environ if environ is None else environ
    configuration_dir = (
        Path(env.get("REF_CONFIGURATION") or default_configuration_dir()).expanduser().absolute()
    )
    file_config = _read_ref_toml(configuration_dir / "ref.toml")
    root = env.get("REF_STORAGE_ROOT") or file_config.storage.root or "stores"
    if "://" not in root:
        root = str((configuration_dir / Path(root).expanduser()).absolute())
    return Settings(configuration_dir=configuration_dir, storage_root=root)


def _read_ref_toml(path: Path) -> _RefToml:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _RefToml()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err
    try:
        document = tomlkit.parse(text).unwrap()
    except TOMLKitError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    try:
        return _RefToml.model_validate(document)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: [{key}] {first['msg']}") from None

"""Packaged data files (vocabularies, templates), served from a durable cache.

A file shipped inside a Python package lives under the virtual environment
(``.../lib/python3.12/site-packages/ref_assets/...``), a path that vanishes when the image, the
Python version or the venv layout changes. Configuration therefore names such a file durably, as
``packaged:<package>/<file>``, and every process reads it through a copy in
``$REF_CONFIGURATION/cache/<package>/<file>``. The copy is written atomically on first use and
rewritten whenever it differs from the packaged bytes (the package was upgraded, or the copy was
deleted or corrupted), so the cache heals itself on the next read.

>>> import tempfile; from pathlib import Path
>>> files = PackagedFiles(Path(tempfile.mkdtemp()))
>>> files.path("packaged:ref_assets/data/variables_cv.toml").name
'variables_cv.toml'
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from ref_assets.files import atomic_write_bytes

logger = logging.getLogger(__name__)

PACKAGED_SCHEME = "packaged:"
_PACKAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Directories that hold installed packages: a path inside one is tied to one interpreter and venv.
_INSTALL_DIRS = frozenset({"site-packages", "dist-packages"})


class PackagedFileError(ValueError):
    """A packaged-file reference that is malformed or names no packaged file."""


@dataclass(frozen=True, order=True)
class PackagedRef:
    """A file inside an installed package, named independently of where it is installed."""

    package: str
    file: str  # a relative POSIX path inside the package

    @classmethod
    def parse(cls, text: str) -> PackagedRef:
        """``packaged:<package>/<file>`` -> PackagedRef; refuses absolute paths and ``..``."""
        if not text.startswith(PACKAGED_SCHEME):
            raise PackagedFileError(f"{text!r} is not of the form packaged:<package>/<file>")
        package, _, file = text.removeprefix(PACKAGED_SCHEME).partition("/")
        parts = PurePosixPath(file).parts
        if not _PACKAGE_NAME.match(package) or not parts or ".." in parts or "\\" in file:
            raise PackagedFileError(
                f"{text!r} is not of the form packaged:<package>/<file> (a Python package name, "
                "then a relative path inside it without '..')"
            )
        return cls(package, "/".join(parts))

    def __str__(self) -> str:
        return f"{PACKAGED_SCHEME}{self.package}/{self.file}"


class PackagedFiles:
    """Reads packaged files through the cache in ``cache_dir``.

    ``known_packages`` are the packages whose files a stale venv path may be healed to (see
    `packaged_ref_for`): only these are imported when a path is examined.
    """

    def __init__(self, cache_dir: Path, known_packages: Iterable[str] = ("ref_assets",)):
        self.cache_dir = cache_dir
        self.known_packages = tuple(known_packages)

    def path(self, reference: PackagedRef | str) -> Path:
        """The cached copy of a packaged file, written or refreshed first if it is missing or
        differs from the packaged bytes."""
        ref = PackagedRef.parse(reference) if isinstance(reference, str) else reference
        packaged = self.packaged_bytes(ref)
        target = self.cache_path(ref)
        try:
            cached = target.read_bytes()
        except FileNotFoundError:
            cached = None
        except OSError as err:
            raise PackagedFileError(f"{ref}: cannot read the cached copy {target}: {err}") from err
        if cached is not None and _sha256(cached) == _sha256(packaged):
            return target
        state = "missing" if cached is None else "out of date or corrupt"
        try:
            atomic_write_bytes(target, packaged)
        except OSError as err:
            raise PackagedFileError(
                f"{ref}: the cached copy {target} is {state} and cannot be written ({err}); make "
                f"{self.cache_dir} writable, or set REF_CONFIGURATION to a writable directory"
            ) from err
        logger.info("%s: cached copy %s was %s; written from the package", ref, target, state)
        return target

    def packaged_bytes(self, ref: PackagedRef) -> bytes:
        """The file's bytes as the installed package ships them."""
        try:
            root = resources.files(ref.package)
        except ModuleNotFoundError:
            raise PackagedFileError(f"{ref}: package {ref.package!r} is not installed") from None
        resource = root.joinpath(*ref.file.split("/"))
        if not resource.is_file():
            raise PackagedFileError(f"{ref}: package {ref.package!r} has no file {ref.file!r}")
        return resource.read_bytes()

    def exists(self, ref: PackagedRef) -> bool:
        try:
            self.packaged_bytes(ref)
        except PackagedFileError:
            return False
        return True

    def cache_path(self, ref: PackagedRef) -> Path:
        return self.cache_dir.joinpath(ref.package, *ref.file.split("/"))

    def packaged_ref_for(self, path: Path) -> PackagedRef | None:
        """The packaged file that ``path`` stands for, if it stands for one that still exists:

        - a path in this cache (``<cache>/<package>/<file>``);
        - a path inside a ``site-packages`` or ``dist-packages`` directory, or one that no longer
          exists, ending in ``<known package>/<file>``: a path saved by another interpreter or
          venv layout, which would vanish (or has vanished) on an upgrade.
        """
        if path.is_relative_to(self.cache_dir):
            package, *file = path.relative_to(self.cache_dir).parts
            return PackagedRef(package, "/".join(file)) if file else None
        parts = path.parts
        if path.exists() and not _INSTALL_DIRS.intersection(parts):
            return None  # an operator's own file
        # The last occurrence of a known package name is the package directory itself.
        for index in range(len(parts) - 2, -1, -1):
            if parts[index] in self.known_packages:
                ref = PackagedRef(parts[index], "/".join(parts[index + 1 :]))
                if self.exists(ref):
                    return ref
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

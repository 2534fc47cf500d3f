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
import importlib.util
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

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
        """``packaged:<package>/<file>`` -> PackagedRef; refuses absolute paths, empty parts and
        ``..``."""
        if not text.startswith(PACKAGED_SCHEME):
            raise PackagedFileError(f"{text!r} is not of the form packaged:<package>/<file>")
        package, _, file = text.removeprefix(PACKAGED_SCHEME).partition("/")
        parts = file.split("/")
        if (
            not _PACKAGE_NAME.match(package)
            or "\\" in file
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise PackagedFileError(
                f"{text!r} is not of the form packaged:<package>/<file> (a Python package name, "
                "then a relative path inside it without '..' or empty parts)"
            )
        return cls(package, file)

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
        """The cached copy of a packaged file, written or refreshed first if it is missing,
        unreadable or differs from the packaged bytes. If the cache cannot be written (a
        read-only configuration directory), the installed package's own file is returned."""
        ref = PackagedRef.parse(reference) if isinstance(reference, str) else reference
        packaged = self.packaged_bytes(ref)
        target = self.cache_path(ref)
        try:
            cached = target.read_bytes()
        except OSError as err:  # missing, or something else in the way
            cached, state = None, "missing" if isinstance(err, FileNotFoundError) else str(err)
        else:
            if _sha256(cached) == _sha256(packaged):
                return target
            state = "out of date or corrupt"
        try:
            if target.is_dir():
                shutil.rmtree(target)
            atomic_write_bytes(target, packaged)
        except OSError as err:
            installed = resources.files(ref.package).joinpath(*ref.file.split("/"))
            if isinstance(installed, Path):
                logger.warning(
                    "%s: the cache copy %s is %s and cannot be written (%s); reading the "
                    "installed package's file %s instead",
                    ref,
                    target,
                    state,
                    err,
                    installed,
                )
                return installed
            raise PackagedFileError(
                f"{ref}: the cached copy {target} is {state} and cannot be written ({err}); make "
                f"{self.cache_dir} writable, or set REF_CONFIGURATION to a writable directory"
            ) from err
        logger.info("%s: cached copy %s was %s; written from the package", ref, target, state)
        return target

    def packaged_bytes(self, ref: PackagedRef) -> bytes:
        """The file's bytes as the installed package ships them."""
        try:
            spec = importlib.util.find_spec(ref.package)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise PackagedFileError(f"{ref}: package {ref.package!r} is not installed")
        if spec.submodule_search_locations is None:  # a module: importing it could run anything
            raise PackagedFileError(f"{ref}: {ref.package!r} is a module, not a package")
        root = resources.files(ref.package)
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
        """The packaged file that ``path`` stands for, if any:

        - a path in this cache, ``<cache>/<package>/<file>``;
        - a path inside a ``site-packages`` or ``dist-packages`` directory ending in
          ``<known package>/<file>`` that the installed package has: a path saved by this or
          another interpreter or venv layout, which breaks (or broke) on an upgrade.

        Anything else is the operator's own file, whether or not it exists.
        """
        path = Path(os.path.normpath(path.absolute()))
        if path.is_relative_to(self.cache_dir):
            package, _, file = path.relative_to(self.cache_dir).as_posix().partition("/")
            try:
                return PackagedRef.parse(f"{PACKAGED_SCHEME}{package}/{file}")
            except PackagedFileError:
                return None
        parts = path.parts
        if not _INSTALL_DIRS.intersection(parts):
            return None
        # The last occurrence of a known package name is the package directory itself.
        for index in range(len(parts) - 2, -1, -1):
            if parts[index] in self.known_packages:
                ref = PackagedRef(parts[index], "/".join(parts[index + 1 :]))
                if self.exists(ref):
                    return ref
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

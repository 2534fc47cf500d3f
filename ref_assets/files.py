"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

>>> from pathlib import Path; import tempfile
>>> target = Path(tempfile.mkdtemp()) / "ref.toml"
>>> atomic_write_bytes(target, b"[storage]\\n")
>>> target.read_bytes()
b'[storage]\\n'
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory (so the final
    rename is atomic), fsynced before the rename; on any failure no temporary file is left.

    The file keeps the permissions it had (a new one gets 0o666 less the umask, as any new file,
    not the private mode of a temporary file), and a symlink is followed, not replaced."""
    path = path.resolve() if path.is_symlink() else path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing_mode: int | None = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        existing_mode = None
    temporary = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            if existing_mode is not None:
                os.fchmod(handle.fileno(), existing_mode)
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (a crash right after could otherwise undo it)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

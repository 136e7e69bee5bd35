"""Content-addressed files for bodies and media too large for a database row.

A blob's name is its sha256, so writing the same bytes twice costs nothing and a path in the
database can never point at different bytes later. Files are fsynced and renamed into place, so a
crash leaves either the whole blob or none of it, never a torn file under a real name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path, spool_dir: Path | None = None) -> None:
        self.root = root
        # Spool files must live on the same filesystem as blobs so adopting one is a rename.
        self.spool_dir = spool_dir or root.parent / "spool"

    def ensure_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)

    def path(self, relpath: str) -> Path:
        resolved = (self.root / relpath).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError(f"blob path escapes the store: {relpath!r}")
        return resolved

    @staticmethod
    def relpath_for(sha256: str, suffix: str = "") -> str:
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}{suffix}"

    def new_spool_file(self) -> tuple[Path, BinaryIO]:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="body-", suffix=".part")
        return Path(name), os.fdopen(fd, "wb")

    def adopt(self, spooled: Path, sha256: str, suffix: str = "") -> str:
        """Make a fully written spool file durable under its content address; return its relpath."""
        relpath = self.relpath_for(sha256, suffix)
        target = self.root / relpath
        if target.exists():
            spooled.unlink(missing_ok=True)
            return relpath
        with open(spooled, "rb+") as fh:
            os.fsync(fh.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(spooled, target)
        fsync_dir(target.parent)
        return relpath

    def writer(self, suffix: str = "") -> BlobWriter:
        path, fh = self.new_spool_file()
        return BlobWriter(self, path, fh, suffix)


class BlobWriter:
    """Write a blob piece by piece (hashing as it goes); ``commit()`` gives its relpath."""

    def __init__(self, store: BlobStore, path: Path, fh: BinaryIO, suffix: str) -> None:
        self._store, self._path, self._fh, self._suffix = store, path, fh, suffix
        self._hash = hashlib.sha256()
        self.size = 0
        self.head = b""  # the first bytes, for content sniffing without re-reading the file

    def write(self, data: bytes) -> int:
        if len(self.head) < 64:
            self.head += data[: 64 - len(self.head)]
        self._hash.update(data)
        self.size += len(data)
        return self._fh.write(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> str:
        self._fh.close()
        return self._store.adopt(self._path, self.sha256, self._suffix)

    def discard(self) -> None:
        self._fh.close()
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self._fh.closed:
            self.discard()

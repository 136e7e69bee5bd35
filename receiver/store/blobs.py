"""Content-addressed files for bodies and media too large for a database row.

A blob's name is its sha256, so writing the same bytes twice costs nothing and a path in the
database can never point at different bytes later. Files are fsynced and renamed into place, so a
crash leaves either the whole blob or none of it, never a torn file under a real name.

``voicehooks gc`` (receiver/blob_gc.py) removes blobs that no row references once they are older
than a grace period. A blob is written (or, for bytes already stored, reused) before the row that
references it commits, so ``adopt`` gives it a fresh modification time, and does so under a
shared lock on the store that gc takes exclusively while it removes files: either gc sees the
fresh time and spares the blob, or gc removed it first and ``adopt`` writes it anew.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

LOCK_NAME = ".gc.lock"  # in the blob root; dot files are never blobs


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
        with self.locked(fcntl.LOCK_SH):
            try:
                # The same bytes are stored already. Touched, so that gc spares them while the
                # row that will reference them commits.
                os.utime(target)
            except FileNotFoundError:
                pass
            else:
                spooled.unlink(missing_ok=True)
                return relpath
            with open(spooled, "rb+") as fh:
                os.fsync(fh.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(spooled, target)
            os.utime(target)
            fsync_dir(target.parent)
        return relpath

    @contextlib.contextmanager
    def locked(self, mode: int) -> Iterator[None]:
        """Hold the store's lock: shared (``fcntl.LOCK_SH``) to add a blob, exclusive
        (``fcntl.LOCK_EX``) to remove some. A descriptor of its own per holder, because flock
        locks belong to an open file, which threads sharing one would share too."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # releases the lock

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

"""``voicehooks gc``: remove blob and spool files that nothing references any more.

Blobs outlive their rows when a delivery or a handler's row is deleted (``voicehooks prune``, an
operator's SQL), and spool files are left behind by a crash mid-request. Both only cost disk, so
gc is careful rather than quick. It removes a file only when

- no row references it: ``deliveries.blob_path`` (``jobs.delivery_blob_paths``) and whatever
  each installed plugin declares with ``Blueprint.blob_references`` (the core knows no plugin's
  tables), and
- it is older than the grace period, checked again just before removal, under the store's
  exclusive lock (see ``BlobStore.adopt``): a blob written or reused for a delivery whose row has
  not committed yet is younger than that, so gc never races ingest into removing it.

The files are listed before the references are read, so a blob that appears meanwhile is not a
candidate at all.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from receiver import jobs
from receiver.registry import Registry
from receiver.store.blobs import LOCK_NAME, BlobStore

DEFAULT_GRACE_SECONDS = 3600.0
BATCH = 200  # files removed per hold of the exclusive lock (ingest of large bodies waits on it)


@dataclass
class Candidate:
    path: Path
    kind: str  # "blob" or "spool"
    relpath: str  # relative to its directory
    size: int


@dataclass
class GcResult:
    dry_run: bool
    grace_seconds: float
    removed: list[Candidate] = field(default_factory=list)
    referenced: int = 0  # old enough, but a row points at it
    too_young: int = 0  # unreferenced, but within the grace period
    scanned: int = 0

    @property
    def removed_bytes(self) -> int:
        return sum(c.size for c in self.removed)

    def as_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "grace_seconds": self.grace_seconds,
            "scanned": self.scanned,
            "removed": [{"kind": c.kind, "path": c.relpath, "size": c.size} for c in self.removed],
            "removed_files": len(self.removed),
            "removed_bytes": self.removed_bytes,
            "kept_referenced": self.referenced,
            "kept_too_young": self.too_young,
        }


def referenced_blobs(engine: Engine, registry: Registry) -> set[str]:
    """Every blob path some row points at: deliveries' bodies and plugins' declared columns."""
    with engine.connect() as conn:
        paths = jobs.delivery_blob_paths(conn)
        for declared in registry.blob_references():
            paths.update(p for p in declared(conn) if p)
    return paths


def _files(root: Path, kind: str) -> Iterator[Candidate]:
    if not root.is_dir():
        return
    for directory, _dirs, names in os.walk(root):
        for name in names:
            if name.startswith(".") or name == LOCK_NAME:
                continue
            path = Path(directory, name)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            yield Candidate(path, kind, path.relative_to(root).as_posix(), size)


def collect(
    engine: Engine,
    blobs: BlobStore,
    registry: Registry,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> GcResult:
    """Remove (or with ``dry_run`` only list) unreferenced files older than ``grace_seconds``.

    ``progress`` is called with the number of files examined so far (for a progress line)."""
    result = GcResult(dry_run=dry_run, grace_seconds=grace_seconds)
    cutoff = time.time() - grace_seconds

    def old(path: Path) -> bool:
        try:
            return path.stat().st_mtime < cutoff
        except FileNotFoundError:
            return False  # gone already (another gc, or adopt replaced nothing)

    # 1. List the old files first: whatever is written after this is not a candidate.
    candidates: list[Candidate] = []
    for candidate in [*_files(blobs.root, "blob"), *_files(blobs.spool_dir, "spool")]:
        result.scanned += 1
        if old(candidate.path):
            candidates.append(candidate)
        else:
            result.too_young += 1
        if progress is not None and result.scanned % 1000 == 0:
            progress(result.scanned)
    # 2. Then what the rows reference.
    referenced = referenced_blobs(engine, registry) if candidates else set()
    unreferenced = []
    for candidate in candidates:
        if candidate.kind == "blob" and candidate.relpath in referenced:
            result.referenced += 1
        else:
            unreferenced.append(candidate)
    # 3. Remove, each file re-checked under the exclusive lock that adopt() respects.
    for start in range(0, len(unreferenced), BATCH):
        batch = unreferenced[start : start + BATCH]
        if dry_run:
            result.removed += [c for c in batch if old(c.path)]
            continue
        with blobs.locked(fcntl.LOCK_EX):
            for candidate in batch:
                if not old(candidate.path):
                    result.too_young += 1
                    continue
                candidate.path.unlink(missing_ok=True)
                result.removed.append(candidate)
    return result

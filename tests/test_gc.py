"""``voicehooks gc``: unreferenced old blob and spool files go, referenced or young ones stay.

Real files in a real blob store, rows in a real SQLite or Postgres (deliveries' bodies, and the
built-in plugins' audio, declared through ``Blueprint.blob_references``), the real command.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import insert, select
from typer.testing import CliRunner

from handlers.elevenlabs.tables import Conversation, ConversationAudio
from handlers.kie.tables import DialogueTask
from receiver import blob_gc
from receiver.cli.main import app as cli_app
from receiver.inbox import IncomingDelivery
from receiver.registry import load_registry
from receiver.service import Services
from receiver.settings import Settings
from receiver.sources.base import Authenticity, Identity
from receiver.store.models import Delivery
from tests.conftest import SECRET, LiveServer, event_body, make_settings

HOUR = 3600


def put_blob(services: Services, content: bytes, suffix: str, *, age: float = 0) -> str:
    """Store ``content`` as ingest and handlers do (spool file, then adopt); optionally age it."""
    with services.blobs.writer(suffix) as out:
        out.write(content)
        relpath = out.commit()
    if age:
        when = time.time() - age
        os.utime(services.blobs.path(relpath), (when, when))
    return relpath


def spool_file(services: Services, *, age: float) -> Path:
    path, fh = services.blobs.new_spool_file()
    fh.write(b"a request body that never finished")
    fh.close()
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def store_delivery(services: Services, key: str, blob_path: str, content: bytes) -> None:
    services.inbox.accept_now(
        IncomingDelivery(
            source="elevenlabs",
            identity=Identity("post_call_audio", key, key),
            auth=Authenticity("hmac", 0),
            sha256=hashlib.sha256(content).hexdigest(),
            size=len(content),
            blob_path=blob_path,
        )
    )


def gc_command(settings: Settings, *args: str) -> dict[str, object]:
    env = {
        "VOICEHOOKS_DATABASE_URL": settings.database_url,
        "VOICEHOOKS_DATA_DIR": str(settings.data_dir),
        "VOICEHOOKS_ELEVENLABS_SECRETS": SECRET,
    }
    result = CliRunner().invoke(cli_app, ["gc", "--json", *args], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_gc_removes_only_unreferenced_files_older_than_the_grace_period(
    database_url: str, tmp_path: Path, services_factory: Callable[..., Services]
) -> None:
    settings = make_settings(database_url, tmp_path / "data")
    services = services_factory(settings, load_registry())
    old = 2 * HOUR
    body = put_blob(services, b"a large delivery body", ".body", age=old)
    store_delivery(services, "audio-1", body, b"a large delivery body")
    # Referenced by the built-in plugins' tables: a call recording, and kie.ai task audio where
    # only the list of all result files names the second one.
    recording = put_blob(services, b"call recording", ".mp3", age=old)
    first_result = put_blob(services, b"kie result 1", ".mp3", age=old)
    second_result = put_blob(services, b"kie result 2", ".mp3", age=old)
    with services.engine.begin() as conn:
        conn.execute(insert(Conversation.__table__).values(conversation_id="c1"))  # type: ignore[attr-defined]
        conn.execute(
            insert(ConversationAudio.__table__).values(  # type: ignore[attr-defined]
                conversation_id="c1", blob_path=recording, size=14, sha256="0" * 64, delivery_id=1
            )
        )
        conn.execute(
            insert(DialogueTask.__table__).values(  # type: ignore[attr-defined]
                task_id="t1",
                state="success",
                audio_blob_path=first_result,
                audio_files=[{"blob_path": first_result}, {"blob_path": second_result}],
            )
        )
    orphan = put_blob(services, b"its row was pruned", ".body", age=old)
    young_orphan = put_blob(services, b"its row is about to commit", ".body")
    stale_spool = spool_file(services, age=old)
    fresh_spool = spool_file(services, age=60)
    kept = [body, recording, first_result, second_result, young_orphan]

    dry = gc_command(settings, "--dry-run")
    expected = {("blob", orphan), ("spool", stale_spool.name)}
    assert {(f["kind"], f["path"]) for f in dry["removed"]} == expected  # type: ignore[attr-defined]
    assert services.blobs.path(orphan).exists() and stale_spool.exists()  # nothing removed

    done = gc_command(settings)
    assert {(f["kind"], f["path"]) for f in done["removed"]} == expected  # type: ignore[attr-defined]
    assert done["kept_referenced"] == 4 and done["kept_too_young"] == 2
    assert not services.blobs.path(orphan).exists()
    assert not stale_spool.exists()
    assert fresh_spool.exists()
    for relpath in kept:
        assert services.blobs.path(relpath).exists(), relpath

    # With no grace period, the young orphan goes too; referenced blobs never do.
    gc_command(settings, "--grace-seconds", "0")
    assert not services.blobs.path(young_orphan).exists()
    for relpath in [body, recording, first_result, second_result]:
        assert services.blobs.path(relpath).exists(), relpath


def test_a_blob_reused_by_ingest_before_its_row_commits_survives_gc(
    database_url: str, tmp_path: Path, services_factory: Callable[..., Services]
) -> None:
    """The race: the bytes of an old unreferenced blob arrive again. Ingest adopts the spooled
    body (finding the blob already there), gc runs before the delivery's row commits, then the
    row commits. The blob must still be there."""
    settings = make_settings(database_url, tmp_path / "data")
    services = services_factory(settings, load_registry())
    content = b"the same recording, delivered again after its first delivery was pruned"
    relpath = put_blob(services, content, ".body", age=2 * HOUR)

    # Ingest: the body is spooled and adopted (receiver/app.py) ...
    spooled, fh = services.blobs.new_spool_file()
    fh.write(content)
    fh.close()
    assert services.blobs.adopt(spooled, hashlib.sha256(content).hexdigest(), ".body") == relpath
    # ... gc runs in between ...
    result = blob_gc.collect(services.engine, services.blobs, services.registry)
    # ... and the row commits.
    store_delivery(services, "again", relpath, content)

    assert result.removed == []
    assert services.blobs.path(relpath).read_bytes() == content


def test_gc_running_beside_ingest_keeps_every_acknowledged_body(
    database_url: str,
    tmp_path: Path,
    services_factory: Callable[..., Services],
    live_server: Callable[..., LiveServer],
) -> None:
    """gc in a loop while a real server spools and stores bodies, half of them bytes that an
    old unreferenced blob already holds: every acknowledged delivery's body is still there."""
    settings = make_settings(database_url, tmp_path / "data", spool_threshold_bytes=256)
    services = services_factory(settings)
    server = live_server(services, run_worker=False)
    bodies = [event_body(conversation_id=f"big-{n}", note="x" * 2000) for n in range(40)]
    for body in bodies[::2]:  # stored long ago, their rows since pruned
        sha = hashlib.sha256(body).hexdigest()
        path = services.blobs.root / services.blobs.relpath_for(sha, ".body")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        os.utime(path, (time.time() - 2 * HOUR,) * 2)

    stop = threading.Event()
    removed: list[str] = []

    def collect_in_a_loop() -> None:
        while not stop.is_set():
            result = blob_gc.collect(services.engine, services.blobs, services.registry)
            removed.extend(c.relpath for c in result.removed)
            time.sleep(0.005)

    collector = threading.Thread(target=collect_in_a_loop)
    collector.start()
    try:
        answers = [server.post_signed(body) for body in bodies]
    finally:
        stop.set()
        collector.join(30)
    assert [a.status_code for a in answers] == [200] * len(bodies)
    blob_gc.collect(services.engine, services.blobs, services.registry)  # once more, after
    deliveries = Delivery.__table__.c  # type: ignore[attr-defined]
    with services.engine.connect() as conn:
        rows = conn.execute(select(deliveries.blob_path, deliveries.sha256)).all()
    assert len(rows) == len(bodies)
    for blob_path, sha256 in rows:
        assert hashlib.sha256(services.blobs.path(blob_path).read_bytes()).hexdigest() == sha256


def test_every_plugin_table_that_points_at_blobs_is_declared_to_gc() -> None:
    """A plugin that stores blobs but forgets ``blob_references`` would have its files removed
    by the first ``gc``: each table with a ``*blob_path`` column must belong to a plugin whose
    blueprint declares blob references."""
    from sqlmodel import SQLModel

    registry = load_registry()
    declaring = {
        func.__module__.rsplit(".", 1)[0]
        for blueprint in registry.blueprints
        for func in blueprint.blob_refs
    }
    owners = {}
    for mapper in SQLModel._sa_registry.mappers:
        table = mapper.local_table
        if any(c.name.endswith("blob_path") for c in table.columns) and table.name != "deliveries":
            owners[table.name] = mapper.class_.__module__.rsplit(".", 1)[0]
    assert {"conversation_audio", "dialogue_tasks", "dialogue_renders"} <= set(owners)
    undeclared = sorted(name for name, package in owners.items() if package not in declaring)
    assert undeclared == []


def test_gc_keeps_a_dialogue_renders_audio(
    database_url: str, tmp_path: Path, services_factory: Callable[..., Services]
) -> None:
    from handlers.dialogue.tables import DialogueRender

    settings = make_settings(database_url, tmp_path / "data")
    services = services_factory(settings)
    kept = put_blob(services, b"ID3 render audio", ".mp3", age=2 * HOUR)
    gone = put_blob(services, b"ID3 nobody's audio", ".mp3", age=2 * HOUR)
    table = DialogueRender.__table__  # type: ignore[attr-defined]
    row = {"provider": "sonna", "state": "succeeded", "script": {"turns": []}}
    with services.engine.begin() as conn:
        conn.execute(insert(table).values(audio_blob_path=kept, **row))
    gc_command(settings)
    assert services.blobs.path(kept).exists()
    assert not services.blobs.path(gone).exists()

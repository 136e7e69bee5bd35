"""Reads and writes of renders: the submission (render + job, one transaction) and the views.

A submission is stored as a delivery of the ``local`` source (``receiver.sources.local``) whose
event type routes it to the render handler, written with ``receiver.jobs.store_local_delivery``
in the same transaction as the render row: there is never a render without its job, nor a job
without its render.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, or_, select, update

from handlers.dialogue.script import Script
from handlers.dialogue.tables import (
    FAILED,
    FINAL_STATES,
    QUEUED,
    dialogue_renders,
    dialogue_voice_segments,
)
from handlers.kie.tables import dialogue_tasks
from receiver import jobs
from receiver.jobs import IncomingDelivery
from receiver.registry import Registry
from receiver.sources.base import Identity
from receiver.sources.local import AUTH
from receiver.sources.local import NAME as LOCAL_SOURCE
from receiver.store.blobs import BlobStore
from receiver.store.db import writer
from receiver.store.types import utcnow

EVENT_TYPE = "dialogue_render"


def submit(engine: Engine, registry: Registry, script: Script, provider: str) -> int:
    """Store a render and the job that will run it, atomically; returns the render's id."""
    now = utcnow()
    with writer(engine).begin() as conn:
        render_id = conn.execute(
            insert(dialogue_renders)
            .values(
                provider=provider,
                state=QUEUED,
                title=script.title,
                script=script.as_dict(),
                submitted_at=now,
                updated_at=now,
            )
            .returning(dialogue_renders.c.id)
        ).scalar_one()
        body = json.dumps(
            {"type": EVENT_TYPE, "key": f"render:{render_id}", "subject_id": str(render_id)}
        ).encode()
        receipt = jobs.store_local_delivery(
            conn,
            registry,
            IncomingDelivery(
                source=LOCAL_SOURCE,
                identity=Identity(EVENT_TYPE, f"render:{render_id}", str(render_id)),
                auth=AUTH,
                sha256=hashlib.sha256(body).hexdigest(),
                size=len(body),
                body=body,
                content_type="application/json",
                received_at=now,
            ),
        )
        if receipt.jobs == 0:
            raise RuntimeError(
                "no handler is installed for dialogue renders (is the dialogue plugin loaded?)"
            )
        conn.execute(
            update(dialogue_renders)
            .where(dialogue_renders.c.id == render_id)
            .values(delivery_id=receipt.delivery_id)
        )
    return int(render_id)


def load(conn: Connection, render_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(dialogue_renders).where(dialogue_renders.c.id == render_id)).first()
    return row._asdict() if row is not None else None


def load_task(conn: Connection, task_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(dialogue_tasks).where(dialogue_tasks.c.task_id == task_id)).first()
    return row._asdict() if row is not None else None


def find_by_task(conn: Connection, task_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(dialogue_renders).where(dialogue_renders.c.task_id == task_id)
    ).first()
    return row._asdict() if row is not None else None


def change(conn: Connection, render_id: int, **values: Any) -> None:
    """Update a render that is not final yet (a final render never changes again)."""
    values["updated_at"] = utcnow()
    if values.get("state") in FINAL_STATES:
        values.setdefault("finished_at", values["updated_at"])
    conn.execute(
        update(dialogue_renders)
        .where(dialogue_renders.c.id == render_id, dialogue_renders.c.state.not_in(FINAL_STATES))
        .values(**values)
    )


def replace_segments(conn: Connection, render_id: int, segments: list[dict[str, Any]]) -> None:
    conn.execute(
        dialogue_voice_segments.delete().where(dialogue_voice_segments.c.render_id == render_id)
    )
    if segments:
        conn.execute(
            insert(dialogue_voice_segments),
            [{"render_id": render_id, "position": n, **s} for n, s in enumerate(segments)],
        )


# -- views for the commands --------------------------------------------------------------------


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _with_job(engine: Engine, render: dict[str, Any]) -> dict[str, Any]:
    """A render that is not final but whose job is dead (out of retries) is failed: say so,
    with the job's last error, instead of showing it waiting forever."""
    if render["state"] in FINAL_STATES or render["delivery_id"] is None:
        return render
    delivery = jobs.get_delivery(engine, render["delivery_id"])
    dead = [j for j in (delivery or {}).get("jobs", []) if j["status"] == "dead"]
    if dead:
        render = {**render, "state": FAILED, "error_code": render["error_code"] or "job_dead"}
        render["error"] = render["error"] or dead[0]["last_error"]
    return render


def as_dict(engine: Engine, row: dict[str, Any], *, full: bool) -> dict[str, Any]:
    render = _with_job(engine, dict(row))
    audio = None
    if render["audio_sha256"]:
        audio = {
            "sha256": render["audio_sha256"],
            "size": render["audio_size"],
            "content_type": render["audio_content_type"],
            "blob_path": render["audio_blob_path"],
            "seconds": render["audio_seconds"],
        }
    data: dict[str, Any] = {
        "id": render["id"],
        "provider": render["provider"],
        "state": render["state"],
        "title": render["title"],
        "task_id": render["task_id"],
        "delivery_id": render["delivery_id"],
        "submitted_at": _iso(render["submitted_at"]),
        "updated_at": _iso(render["updated_at"]),
        "finished_at": _iso(render["finished_at"]),
        "sha256": render["audio_sha256"],
        "size": render["audio_size"],
        "audio": audio,
        "warning": render["warning"],
        "error": (
            {"code": render["error_code"], "message": render["error"]}
            if render["state"] == FAILED
            else None
        ),
    }
    if full:
        data["script"] = render["script"]
        data["alignment"] = render["alignment"]
        data["normalized_alignment"] = render["normalized_alignment"]
        with engine.connect() as conn:
            rows = conn.execute(
                select(dialogue_voice_segments)
                .where(dialogue_voice_segments.c.render_id == render["id"])
                .order_by(dialogue_voice_segments.c.position)
            ).all()
        data["voice_segments"] = [
            {k: v for k, v in r._asdict().items() if k not in ("id", "render_id")} for r in rows
        ]
    return data


def get(engine: Engine, ident: str) -> dict[str, Any] | None:
    """A render by its id, or by the kie.ai taskId it is following."""
    condition = dialogue_renders.c.task_id == ident
    if ident.isdigit():
        condition = or_(condition, dialogue_renders.c.id == int(ident))
    with engine.connect() as conn:
        row = conn.execute(
            select(dialogue_renders).where(condition).order_by(dialogue_renders.c.id).limit(1)
        ).first()
    return as_dict(engine, row._asdict(), full=True) if row is not None else None


def show(engine: Engine, blobs: BlobStore, ident: str) -> dict[str, Any] | None:
    """``dialogue show --json`` and ``GET /api/v1/renders/{id}``: a render by id or kie.ai
    taskId, with the stored audio's file path."""
    render = get(engine, ident)
    if render is not None and render["audio"]:
        render["audio"]["file"] = str(blobs.path(render["audio"]["blob_path"]))
    return render


def list_renders(
    engine: Engine, *, limit: int = 50, state: str | None = None
) -> list[dict[str, Any]]:
    query = select(dialogue_renders).order_by(dialogue_renders.c.id.desc()).limit(limit)
    if state and state != FAILED:
        query = query.where(dialogue_renders.c.state == state)
    with engine.connect() as conn:
        rows = [r._asdict() for r in conn.execute(query)]
    renders = [as_dict(engine, r, full=False) for r in rows]
    if state == FAILED:
        renders = [r for r in renders if r["state"] == FAILED]
    return renders

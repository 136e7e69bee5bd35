"""This plugin's section of ``voicehooks demo``'s report, read from its own table."""

from __future__ import annotations

from rich.table import Table
from sqlalchemy import Engine, select

from handlers.kie.tables import dialogue_tasks
from receiver.cli.output import literal, short


def tasks_table(engine: Engine) -> tuple[str, Table]:
    with engine.connect() as conn:
        rows = conn.execute(select(dialogue_tasks).order_by(dialogue_tasks.c.task_id)).all()
    table = Table("task", "state", "turns", "audio", "failure")
    table.columns[0].overflow = "fold"  # a task id is copied into `tasks show`: never cut
    for row in rows:
        if row.audio_size:
            audio = f"{row.audio_size:,} B {row.audio_content_type or ''}".strip()
        else:
            audio = "error" if row.audio_error else "-"
        table.add_row(
            literal(row.task_id),
            short(row.state),
            str(len(row.dialogue or [])),
            literal(audio),
            short(row.fail_msg or row.audio_error, 40),
        )
    return "kie.ai dialogue tasks", table

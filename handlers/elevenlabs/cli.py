"""``voicehooks conversations list|show``: the ElevenLabs conversations the handlers stored.

The queries return plain dicts that ``--json`` prints as they are and the rich views render, so
scripts and people see the same facts.
Transcript text is rendered as ``Text`` objects, never as markup: a caller saying "[bold]" must
not restyle (or break) the output.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from handlers.elevenlabs.tables import (
    Conversation,
    ConversationAudio,
    ConversationDataCollection,
    ConversationEvaluation,
    ConversationTurn,
)
from receiver.cli.output import JsonFlag, literal
from receiver.store.blobs import BlobStore

conversations_app = typer.Typer(
    help="ElevenLabs conversations: metadata, analysis, transcript and stored audio.",
    no_args_is_help=True,
)
ROLE_STYLES = {"agent": "bold cyan", "user": "bold green"}
RESULT_STYLES = {"success": "green", "failure": "red", "unknown": "yellow"}


# -- queries --------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def list_conversations(
    engine: Engine, *, limit: int = 50, agent_id: str | None = None
) -> list[dict[str, Any]]:
    """Newest first (by call start; audio-only rows, with no start yet, by when they arrived)."""
    newest = func.coalesce(Conversation.start_time, Conversation.created_at)
    turns = (
        select(ConversationTurn.conversation_id, func.count().label("turns"))
        .group_by(ConversationTurn.conversation_id)
        .subquery()
    )
    query = (
        select(Conversation, ConversationAudio.size, turns.c.turns)
        .join(ConversationAudio, isouter=True)
        .join(turns, turns.c.conversation_id == Conversation.conversation_id, isouter=True)
        .order_by(newest.desc(), col(Conversation.conversation_id))
        .limit(limit)
    )
    if agent_id:
        query = query.where(Conversation.agent_id == agent_id)
    with Session(engine) as session:
        rows = session.exec(query).all()
    return [
        {
            "conversation_id": row.conversation_id,
            "agent_id": row.agent_id,
            "status": row.status,
            "start_time": _iso(row.start_time),
            "duration_secs": row.duration_secs,
            "call_successful": row.call_successful,
            "turns": turn_count or 0,
            "audio": audio_size is not None,
        }
        for row, audio_size, turn_count in rows
    ]


def get_conversation(
    engine: Engine, blobs: BlobStore, conversation_id: str
) -> dict[str, Any] | None:
    """Everything stored about one conversation, or None if there is no such conversation."""
    with Session(engine) as session:
        row = session.get(Conversation, conversation_id)
        if row is None:
            return None
        audio = session.get(ConversationAudio, conversation_id)
        turns = session.exec(
            select(ConversationTurn)
            .where(ConversationTurn.conversation_id == conversation_id)
            .order_by(col(ConversationTurn.turn_index))
        ).all()
        evaluations = session.exec(
            select(ConversationEvaluation)
            .where(ConversationEvaluation.conversation_id == conversation_id)
            .order_by(col(ConversationEvaluation.criteria_id))
        ).all()
        collected = session.exec(
            select(ConversationDataCollection)
            .where(ConversationDataCollection.conversation_id == conversation_id)
            .order_by(col(ConversationDataCollection.field_id))
        ).all()
    info: dict[str, Any] = {
        "conversation_id": row.conversation_id,
        "agent_id": row.agent_id,
        "user_id": row.user_id,
        "status": row.status,
        "start_time": _iso(row.start_time),
        "duration_secs": row.duration_secs,
        "cost": row.cost,
        "termination_reason": row.termination_reason,
        "call_successful": row.call_successful,
        "call_summary_title": row.call_summary_title,
        "transcript_summary": row.transcript_summary,
        "dynamic_variables": row.dynamic_variables or {},
        "has_audio": row.has_audio,
        "has_user_audio": row.has_user_audio,
        "has_response_audio": row.has_response_audio,
        "last_delivery_id": row.last_delivery_id,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "evaluations": [
            {"criteria_id": e.criteria_id, "result": e.result, "rationale": e.rationale}
            for e in evaluations
        ],
        "data_collection": [
            {"field_id": d.field_id, "value": d.value, "rationale": d.rationale} for d in collected
        ],
        "transcript": [
            {
                "index": t.turn_index,
                "role": t.role,
                "message": t.message,
                "time_in_call_secs": t.time_in_call_secs,
                "tool_calls": t.tool_calls or [],
                "tool_results": t.tool_results or [],
            }
            for t in turns
        ],
        "audio": {"stored": False},
        "data": row.data,
    }
    if audio is not None:
        info["audio"] = {
            "stored": True,
            "path": str(blobs.path(audio.blob_path)),
            "blob_path": audio.blob_path,
            "size": audio.size,
            "sha256": audio.sha256,
            "delivery_id": audio.delivery_id,
            "stored_at": _iso(audio.created_at),
        }
    return info


# -- rendering ------------------------------------------------------------------------------


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def _start(value: str | None) -> str:
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _compact(value: Any, limit: int = 160) -> str:
    """A JSON value on one line, shortened for the dialogue view (``--json`` has it all)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_list(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        "conversation", "agent", "status", "start (UTC)", "duration", "successful", "audio"
    )
    table.columns[0].overflow = table.columns[1].overflow = "fold"  # ids are never cut
    for r in rows:
        table.add_row(
            literal(r["conversation_id"]),
            literal(r["agent_id"]),
            literal(r["status"] or "unknown"),
            _start(r["start_time"]),
            _clock(r["duration_secs"]),
            literal(r["call_successful"]),
            "yes" if r["audio"] else "no",
        )
    return table


def _tool_lines(turn: dict[str, Any]) -> list[Text]:
    lines = []
    for call in turn["tool_calls"]:
        lines.append(
            Text.assemble(
                ("↳ calls ", "dim"),
                (call.get("tool_name") or "?", "magenta"),
                (" " + _compact(call.get("params_as_json") or "{}"), "dim"),
            )
        )
    for result in turn["tool_results"]:
        error = bool(result.get("is_error"))
        latency = result.get("tool_latency_secs")
        lines.append(
            Text.assemble(
                ("↳ ", "dim"),
                (result.get("tool_name") or "?", "magenta"),
                (" failed: " if error else " returned ", "red" if error else "dim"),
                (_compact(result.get("result_value") or result.get("result") or ""), "dim"),
                (f" ({latency:.2f} s)" if isinstance(latency, int | float) else "", "dim"),
            )
        )
    return lines


def render_transcript(turns: list[dict[str, Any]]) -> Table:
    """The transcript as a dialogue: time, speaker, what was said, tool calls inline."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column()
    for turn in turns:
        role = turn["role"] or "?"
        message = turn["message"]
        grid.add_row(
            _clock(turn["time_in_call_secs"]),
            Text(role.capitalize(), style=ROLE_STYLES.get(role, "bold")),
            Text(message) if message else Text("(no speech)", style="dim italic"),
        )
        for line in _tool_lines(turn):
            grid.add_row("", "", line)
    return grid


def render_show(info: dict[str, Any]) -> Group:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")  # a file path must stay whole, to be copied
    audio = info["audio"]
    if audio["stored"]:
        audio_text = Text(f"stored, {audio['size']:,} bytes: {audio['path']}")
    else:
        audio_text = Text("not stored")
        if info["has_audio"]:
            audio_text.append(" (ElevenLabs reports the call has audio)", style="dim")
    cost = info["cost"]
    for label, value in (
        ("agent", info["agent_id"]),
        ("user", info["user_id"]),
        ("status", info["status"] or "unknown (no transcription received yet)"),
        ("started", _start(info["start_time"]) + (" UTC" if info["start_time"] else "")),
        ("duration", _clock(info["duration_secs"])),
        ("cost", f"{cost:g}" if cost is not None else None),
        ("termination", info["termination_reason"]),
        ("call successful", info["call_successful"]),
        ("dynamic variables", json.dumps(info["dynamic_variables"], ensure_ascii=False)),
        ("last delivery", info["last_delivery_id"]),
    ):
        facts.add_row(label, Text(str(value) if value not in (None, "") else "-"))
    facts.add_row("audio", audio_text)

    parts: list[Any] = [Text(f"Conversation {info['conversation_id']}", style="bold"), facts]
    if info["transcript_summary"]:
        parts.append(
            Panel(
                Text(info["transcript_summary"]),
                title=Text(info["call_summary_title"] or "Summary"),
                title_align="left",
            )
        )
    if info["evaluations"]:
        table = Table("criterion", "result", "rationale", title="Evaluation", title_justify="left")
        for e in info["evaluations"]:
            result = e["result"] or "-"
            table.add_row(
                Text(e["criteria_id"]),
                Text(result, style=RESULT_STYLES.get(result, "")),
                Text(e["rationale"] or ""),
            )
        parts.append(table)
    if info["data_collection"]:
        table = Table("field", "value", "rationale", title="Data collected", title_justify="left")
        for d in info["data_collection"]:
            table.add_row(
                Text(d["field_id"]),
                Text(json.dumps(d["value"], ensure_ascii=False)),
                Text(d["rationale"] or ""),
            )
        parts.append(table)
    parts.append(Text("Transcript", style="bold"))
    if info["transcript"]:
        parts.append(render_transcript(info["transcript"]))
    else:
        parts.append(Text("(no transcript stored)", style="dim"))
    return Group(*parts)


# -- commands -------------------------------------------------------------------------------


@conversations_app.command("list")
def conversations_list(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    agent: Annotated[str | None, typer.Option(help="Only this agent_id.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List conversations, newest first, with their outcome and whether audio is stored."""
    from receiver.cli.output import console, print_json
    from receiver.cli.store import load_services

    services = load_services()
    try:
        rows = list_conversations(services.engine, limit=limit, agent_id=agent)
    finally:
        services.close()
    if as_json:
        print_json(rows)
    else:
        console.print(render_list(rows))


@conversations_app.command("show")
def conversations_show(conversation_id: str, as_json: JsonFlag = False) -> None:
    """Show one conversation: metadata, summary, analysis, transcript, where its audio is."""
    from receiver.cli.output import console, fail, print_json
    from receiver.cli.store import load_services

    services = load_services()
    try:
        info = get_conversation(services.engine, services.blobs, conversation_id)
    finally:
        services.close()
    if info is None:
        raise fail(f"no conversation with id {conversation_id}")
    if as_json:
        print_json(info)
    else:
        console.print(render_show(info))

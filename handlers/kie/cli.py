"""``voicehooks tasks list|show``: the kie.ai dialogue tasks the receiver has recorded.

Registered as a ``voicehooks`` command group through the entry-point group
``voicehooks.commands`` (pyproject.toml).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from receiver.cli.output import JsonFlag

tasks_app = typer.Typer(
    help="Look at kie.ai dialogue tasks: state, dialogue, result URLs, audio.",
    no_args_is_help=True,
)


def audio_word(task: dict[str, Any]) -> str:
    """The audio column: stored, an error, a download still being retried, or nothing."""
    if task["audio_blob_path"]:
        return "stored"
    if task.get("job_status") in ("pending", "running"):
        return "retrying" if task["audio_error"] else "pending"
    return "error" if task["audio_error"] else "-"


def _turns(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in task.get("dialogue") or [] if isinstance(t, dict)]


@tasks_app.command("list")
def tasks_list(
    limit: Annotated[int, typer.Option(help="How many, most recently updated first.")] = 50,
    state: Annotated[
        str | None, typer.Option(help="waiting, queuing, generating, success or fail.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List recorded dialogue tasks (a failed audio download shows as "error")."""
    from rich.table import Table

    from handlers.kie.callbacks import pending_tasks
    from handlers.kie.tables import list_tasks
    from receiver.cli.output import console, literal, print_json
    from receiver.cli.store import load_services

    services = load_services()
    try:
        # Tasks whose handler has not written them yet come first: they are the newest, and
        # their result URLs expire.
        waiting = pending_tasks(services.engine, services.blobs)
        tasks = [t for t in waiting if state is None or t["state"] == state]
        tasks += list_tasks(services.engine, limit=limit, state=state)
        tasks = tasks[:limit]
    finally:
        services.close()
    if as_json:
        print_json(tasks)
        return
    table = Table("task", "state", "model", "turns", "updated", "audio")
    # Ids are what people copy into `tasks show`: they fold, never get cut.
    table.columns[0].overflow = "fold"
    table.columns[2].overflow = "fold"
    for task in tasks:
        audio = audio_word(task)
        table.add_row(
            literal(task["task_id"]),
            literal(task["state"]),
            literal(task["model"]),
            str(len(_turns(task))),
            (task["updated_at"] or "")[:19].replace("T", " "),
            literal(audio),
        )
    console.print(table)


@tasks_app.command("show")
def tasks_show(task_id: str, as_json: JsonFlag = False) -> None:
    """Show one task: state, dialogue turns, result URLs, the download's error, the audio."""
    from rich.text import Text

    from handlers.kie.callbacks import pending_tasks
    from handlers.kie.tables import get_task
    from receiver.cli.output import console, fail, print_json
    from receiver.cli.store import load_services

    services = load_services()
    try:
        task = get_task(services.engine, task_id)
        if task is None:  # known only from its stored callback so far
            waiting = pending_tasks(services.engine, services.blobs)
            task = next((t for t in waiting if t["task_id"] == task_id), None)
        audio_file = (
            str(services.blobs.path(task["audio_blob_path"]))
            if task and task["audio_blob_path"]
            else None
        )
    finally:
        services.close()
    if task is None:
        raise fail(f"no kie.ai task with id {task_id!r}")
    task["audio_file"] = audio_file
    if as_json:
        print_json(task)
        return
    skip = {"dialogue", "result_urls", "raw_record", "audio_files"}
    for key, value in task.items():
        if key not in skip and value is not None:
            console.print(Text.assemble((key, "bold"), ": ", str(value)), soft_wrap=True)
    turns = _turns(task)
    if turns:
        console.print(Text.assemble(("dialogue", "bold"), f" ({len(turns)} turns):"))
        for turn in turns:
            console.print(Text(f"  {turn.get('voice') or '?'}: {turn.get('text') or ''}"))
    # Printed whole on their own lines (soft wrap): a URL must stay copyable at any width.
    for url in task.get("result_urls") or []:
        console.print(Text.assemble(("result url", "bold"), ": ", str(url)), soft_wrap=True)

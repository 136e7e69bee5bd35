"""The kie.ai tasks pages and API: ``/ui/tasks`` and ``/api/v1/tasks``.

Registered through the entry-point group ``voicehooks.pages`` (pyproject.toml); the data comes
from the queries behind ``voicehooks tasks list|show --json`` (``tables``). Result URLs are shown
as text, not links: they came from a provider answer, and the receiver has already fetched the
audio through its guarded download, which the page plays from the blob store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from handlers.kie.tables import get_task, list_tasks
from receiver.sources.kie import EVENT_TYPE
from receiver.ui.api import int_param
from receiver.ui.plugins import NavEntry, Pages
from receiver.ui.render import JSON, api_error, audio_file, not_found_page, render, services


def _task(request: Request) -> dict[str, Any] | None:
    task = get_task(services(request).engine, request.path_params["task_id"])
    if task is not None:
        task["audio_url"] = (
            f"/ui/tasks/{task['task_id']}/audio" if task["audio_blob_path"] else None
        )
    return task


def _rows(request: Request) -> list[dict[str, Any]]:
    return list_tasks(
        services(request).engine,
        limit=int_param(request, "limit", 50),
        state=request.query_params.get("state") or None,
    )


def tasks_page(request: Request) -> Response:
    return render(request, "kie/tasks.html", {"rows": _rows(request)})


def task_page(request: Request) -> Response:
    task = _task(request)
    if task is None:
        return not_found_page(request, "such kie.ai task")
    return render(request, "kie/task.html", {"t": task})


def task_audio(request: Request) -> Response:
    task = _task(request)
    if task is None or not task["audio_blob_path"]:
        return api_error(404, "not_found", "no stored audio for that task")
    path = services(request).blobs.path(task["audio_blob_path"])
    return audio_file(path, task["audio_content_type"])


def tasks_api(request: Request) -> Response:
    return JSON(_rows(request))


def task_api(request: Request) -> Response:
    task = _task(request)
    if task is None:
        return api_error(404, "not_found", "no kie.ai task with that id")
    return JSON(task)


pages = Pages(
    name="kie",
    routes=[
        Route("/tasks", tasks_page),
        Route("/tasks/{task_id}", task_page),
        Route("/tasks/{task_id}/audio", task_audio),
    ],
    api_routes=[
        Route("/tasks", tasks_api),
        Route("/tasks/{task_id}", task_api),
        Route("/tasks/{task_id}/audio", task_audio),
    ],
    templates=Path(__file__).parent / "templates",
    nav=[NavEntry("kie.ai tasks", "tasks")],
    subjects={("kie", EVENT_TYPE): "tasks/"},
)

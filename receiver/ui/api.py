"""``/api/v1/``: the CLI's ``--json`` data over HTTP, from the same query functions.

``GET deliveries`` is ``voicehooks deliveries list --json``, ``GET deliveries/{id}`` is
``deliveries show --json``, ``POST deliveries/{id}/retry`` and ``POST deliveries/retry-dead``
are ``deliveries retry [--dead] --json``. Plugins add theirs (``conversations``, ``tasks``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from receiver import jobs
from receiver.ui.render import JSON, api_error, services

MAX_LIMIT = 500


def int_param(request: Request, name: str, default: int, maximum: int = MAX_LIMIT) -> int:
    """A small positive integer from the query string, clamped; junk gives the default."""
    raw = request.query_params.get(name, "")
    return max(1, min(maximum, int(raw))) if raw.isdigit() else default


def list_filters(request: Request) -> dict[str, str | None]:
    """The deliveries filters, shared by the page and the API (empty means no filter)."""
    q = request.query_params
    return {
        "source": q.get("source") or None,
        "event_type": q.get("type") or None,
        "status": q.get("status") or None,
        "search": q.get("q") or None,
    }


def deliveries(request: Request) -> Response:
    rows = jobs.list_deliveries(
        services(request).engine, limit=int_param(request, "limit", 50), **list_filters(request)
    )
    return JSON([row.as_dict() for row in rows])


def delivery(request: Request) -> Response:
    delivery_id = request.path_params["delivery_id"]
    info = jobs.get_delivery(services(request).engine, delivery_id)
    if info is None:
        return api_error(404, "not_found", f"no delivery with id {delivery_id}")
    return JSON(info)


def delivery_retry(request: Request) -> Response:
    svc = services(request)
    try:
        count = jobs.requeue_delivery(svc.engine, svc.registry, request.path_params["delivery_id"])
    except LookupError as exc:
        return api_error(404, "not_found", str(exc))
    svc.worker.wake()
    return JSON({"requeued": count})


def retry_dead(request: Request) -> Response:
    svc = services(request)
    count = jobs.requeue_dead(svc.engine)
    svc.worker.wake()
    return JSON({"requeued": count})


def job_retry(request: Request) -> Response:
    svc = services(request)
    if not jobs.requeue_job(svc.engine, request.path_params["job_id"]):
        return api_error(404, "not_found", "no dead job with that id")
    svc.worker.wake()
    return JSON({"requeued": 1})


def dead(request: Request) -> Response:
    return JSON(jobs.dead_jobs(services(request).engine, limit=int_param(request, "limit", 200)))


def overview(request: Request) -> Response:
    return JSON(jobs.overview(services(request).engine).as_dict())


def body(request: Request) -> Response:
    """The exact bytes that were received, as a download (never rendered by the browser)."""
    svc = services(request)
    delivery_id = request.path_params["delivery_id"]
    stored = jobs.delivery_body(svc.engine, delivery_id)
    if stored is None:
        return api_error(404, "not_found", f"no delivery with id {delivery_id}")
    data, blob_path = stored
    headers = {"Content-Disposition": f'attachment; filename="delivery-{delivery_id}.json"'}
    if blob_path is not None:
        return FileResponse(
            svc.blobs.path(blob_path), media_type="application/octet-stream", headers=headers
        )
    return Response(data, media_type="application/octet-stream", headers=headers)


def no_such_endpoint(request: Request) -> Response:
    return api_error(404, "not_found", f"no API endpoint {request.url.path}")


routes = [
    Route("/deliveries", deliveries),
    Route("/deliveries/retry-dead", retry_dead, methods=["POST"]),
    Route("/deliveries/{delivery_id:int}", delivery),
    Route("/deliveries/{delivery_id:int}/body", body),
    Route("/deliveries/{delivery_id:int}/retry", delivery_retry, methods=["POST"]),
    Route("/jobs/dead", dead),
    Route("/jobs/{job_id:int}/retry", job_retry, methods=["POST"]),
    Route("/overview", overview),
]

"""The core's pages: overview, deliveries, one delivery, dead jobs, and signing in.

Reads go through ``receiver.jobs`` (the one owner of delivery and job SQL) and the API's
helpers, so a page shows exactly what ``/api/v1/`` and ``voicehooks ... --json`` return.
State changes are plain HTML forms (POST, with the CSRF field) that redirect back: they work
without JavaScript, and the gate checks them before they arrive here.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from receiver import jobs
from receiver.ui import api
from receiver.ui.auth import SESSION_COOKIE
from receiver.ui.render import TEMPLATES, not_found_page, render, services, ui

__all__ = ["TEMPLATES", "routes"]
# Bodies up to this size are shown pretty-printed; larger ones are cut (the download is whole).
SHOWN_BODY_BYTES = 256 * 1024
STATUSES = ["pending", "running", "done", "dead", "stored", "invalid"]


def overview(request: Request) -> Response:
    info = jobs.overview(services(request).engine).as_dict()
    top = max([point["count"] for point in info["per_minute"]] + [1])
    return render(request, "overview.html", {"info": info, "top": top})


def deliveries(request: Request) -> Response:
    filters = api.list_filters(request)
    rows = jobs.list_deliveries(
        services(request).engine, limit=api.int_param(request, "limit", 50), **filters
    )
    query = urlencode({k: v for k, v in request.query_params.items() if v})
    return render(
        request,
        "deliveries.html",
        {
            "rows": rows,
            "filters": filters,
            "sources": ui(request).sources,
            "statuses": STATUSES,
            "api_query": query,
            "subject_links": ui(request).subjects,
        },
    )


def shown_body(request: Request, size: int) -> tuple[str, bool]:
    """The body as text for the page: pretty JSON when whole and parseable; else the raw
    start, cut at ``SHOWN_BODY_BYTES`` (``True`` when cut)."""
    svc = services(request)
    stored = jobs.delivery_body(svc.engine, request.path_params["delivery_id"])
    if stored is None:
        return "", False
    data, blob_path = stored
    if blob_path is not None:
        with open(svc.blobs.path(blob_path), "rb") as fh:
            data = fh.read(SHOWN_BODY_BYTES)
    assert data is not None
    cut = size > SHOWN_BODY_BYTES
    data = data[:SHOWN_BODY_BYTES]
    if not cut:
        try:
            return json.dumps(json.loads(data), indent=2, ensure_ascii=False), False
        except ValueError:
            pass
    return data.decode("utf-8", errors="replace"), cut


def delivery(request: Request) -> Response:
    delivery_id = request.path_params["delivery_id"]
    info = jobs.get_delivery(services(request).engine, delivery_id)
    if info is None:
        return not_found_page(request, f"delivery {delivery_id}")
    body, cut = shown_body(request, info["size"])
    return render(
        request,
        "delivery.html",
        {
            "d": info,
            "body": body,
            "cut": cut,
            "shown_bytes": SHOWN_BODY_BYTES,
            "requeued": request.query_params.get("requeued"),
        },
    )


def delivery_retry(request: Request) -> Response:
    svc = services(request)
    delivery_id = request.path_params["delivery_id"]
    try:
        count = jobs.requeue_delivery(svc.engine, svc.registry, delivery_id)
    except LookupError:
        return not_found_page(request, f"delivery {delivery_id}")
    svc.worker.wake()
    return RedirectResponse(f"/ui/deliveries/{delivery_id}?requeued={count}", 303)


def dead(request: Request) -> Response:
    rows = jobs.dead_jobs(services(request).engine, limit=500)
    return render(
        request, "dead.html", {"rows": rows, "requeued": request.query_params.get("requeued")}
    )


def dead_retry_one(request: Request) -> Response:
    svc = services(request)
    count = int(jobs.requeue_job(svc.engine, request.path_params["job_id"]))
    svc.worker.wake()
    return RedirectResponse(f"/ui/dead?requeued={count}", 303)


def dead_retry_all(request: Request) -> Response:
    svc = services(request)
    count = jobs.requeue_dead(svc.engine)
    svc.worker.wake()
    return RedirectResponse(f"/ui/dead?requeued={count}", 303)


def safe_next(target: str | None) -> str:
    """Only a path inside the inspector: never another site (``//evil``, ``/\\evil``)."""
    if target and target.startswith("/ui/") and not any(c in target for c in "\\\r\n"):
        return target
    return "/ui/"


async def small_form(request: Request, max_bytes: int = 8192) -> dict[str, str]:
    """A URL-encoded form of a few short fields (the sign-in form); a larger body is cut off
    and reads as no fields. Each field's first value."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return {}
    return {key: values[0] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}


async def login(request: Request) -> Response:
    """GET: the form. POST: check ``token``; on success set the session cookie (never the
    token itself). The sign-in link ``serve`` prints carries the token in the URL fragment,
    which browsers never send, so it stays out of access logs; login.js submits it."""
    guard = ui(request).guard
    if request.method == "GET":
        return render(request, "login.html", {"next": safe_next(request.query_params.get("next"))})
    form = await small_form(request)
    token, target = form.get("token"), form.get("next")
    if token is None or not guard.token_matches(token.strip()):
        return render(
            request, "login.html", {"next": safe_next(target), "error": True}, status_code=401
        )
    response = RedirectResponse(safe_next(target), 303)
    response.set_cookie(
        SESSION_COOKIE,
        guard.session_value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


def logout(request: Request) -> Response:
    response = RedirectResponse("/ui/login", 303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def no_such_page(request: Request) -> Response:
    return not_found_page(request, "such page")


routes = [
    Route("/", overview),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/deliveries", deliveries),
    Route("/deliveries/{delivery_id:int}", delivery),
    Route("/deliveries/{delivery_id:int}/body", api.body),
    Route("/deliveries/{delivery_id:int}/retry", delivery_retry, methods=["POST"]),
    Route("/dead", dead),
    Route("/dead/retry", dead_retry_all, methods=["POST"]),
    Route("/dead/{job_id:int}/retry", dead_retry_one, methods=["POST"]),
]

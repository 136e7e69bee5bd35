"""The anchor: the fastest a Starlette endpoint on this uvicorn can answer a webhook.

It reads the whole body (as the receiver must) and answers 200 with a small JSON document, and
does nothing else: no authentication, no storage. Every other target is reported as a fraction of
this one, so the numbers say how much of the framework's limit the durable path keeps.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def receive(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"status": "received", "size": len(body)})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/webhooks/{source}", receive, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)

"""The HTTP surface: ``POST /webhooks/<source>``, health, readiness and metrics.

The ingest endpoint is the one rule in code: authenticate (while the body streams in), persist
(the inbox commits), acknowledge (only after the commit), and leave processing to the workers.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import anyio
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from receiver import jobs, metrics, ui
from receiver.body import asgi_body_chunks, read_body, too_large
from receiver.errors import WebhookError
from receiver.inbox import Inbox, IncomingDelivery, Receipt
from receiver.inbox_process import InboxProcess
from receiver.limits import CONNECTION_HEADROOM, ConcurrencyLimit, body_deadline
from receiver.service import Services
from receiver.settings import Settings
from receiver.sources.base import Source
from receiver.store import migrate
from receiver.store.db import StoreGone
from receiver.worker_process import WorkerProcess

log = structlog.get_logger(__name__)
_NO_QUERY = QueryParams()  # immutable, so one instance serves every request without a query
# Content types that are certainly not a JSON webhook; anything else is read and, if authentic,
# stored even when it does not parse, because an authentic event must never be lost.
NOT_JSON = ("multipart/", "application/x-www-form-urlencoded")


async def _send_received(send: Send, receipt: Receipt) -> None:
    """The 200 answer, sent as ASGI messages: the same status, headers and bytes as
    ``JSONResponse`` would send, without ``json.dumps`` or a Response object per delivery."""
    body = b'{"status":"received","delivery_id":%d,"duplicate":%s}' % (
        receipt.delivery_id,
        b"true" if receipt.duplicate else b"false",
    )
    headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_counters: dict[tuple[str, str], Any] = {}


def _count(source: str, outcome: str) -> None:
    """``DELIVERIES.labels(source, outcome).inc()``, with the labelled child looked up once."""
    counter = _counters.get((source, outcome))
    if counter is None:
        counter = _counters[(source, outcome)] = metrics.DELIVERIES.labels(source, outcome)
    counter.inc()


class WebhookEndpoint:
    """``POST /webhooks/<source>``, as a plain ASGI app (Starlette routes to it unchanged).

    This is the hot path, so it works on the ASGI messages directly: a function endpoint would
    cost a Request, a Response and two wrapper layers per delivery for nothing it needs.
    """

    def __init__(self, services: Services, inbox: Inbox | InboxProcess) -> None:
        self.services = services
        self.settings = services.settings
        self.inbox = inbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handle(scope, receive, send, scope["path_params"]["source"])

    async def handle(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """Answer one delivery for the source called ``name``."""
        source = self.services.sources.get(name)
        if source is None:
            error = WebhookError(404, "unknown_source", f"no webhook source named {name!r}")
            await error.response()(scope, receive, send)
            return
        try:
            receipt = await self._ingest(scope, receive, source)
        except WebhookError as exc:
            _count(name, exc.code)
            if exc.status >= 500:
                log.error("ingest_failed", source=name, error=exc.code)
            await exc.response()(scope, receive, send)
            return
        _count(name, "duplicate" if receipt.duplicate else "stored")
        await _send_received(send, receipt)

    async def _ingest(self, scope: Scope, receive: Receive, source: Source) -> Receipt:
        services, settings = self.services, self.settings
        headers = Headers(scope=scope)
        content_type = headers.get("content-type", "")
        if content_type.lower().startswith(NOT_JSON):
            raise WebhookError(415, "unsupported_media_type", "webhook bodies must be JSON")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise too_large(settings.max_body_bytes)
        query_string = scope["query_string"]
        verifier = source.begin(headers, QueryParams(query_string) if query_string else _NO_QUERY)
        async with body_deadline(settings.body_timeout_seconds):
            body = await read_body(
                asgi_body_chunks(receive),
                max_bytes=settings.max_body_bytes,
                spool_threshold=settings.spool_threshold_bytes,
                blobs=services.blobs,
                on_chunk=verifier.update,
            )
        try:
            auth = verifier.verify(body)
            blob_path = None
            if body.spooled:
                identity = await anyio.to_thread.run_sync(source.identify, body)
                assert body.path is not None
                blob_path = await anyio.to_thread.run_sync(
                    services.blobs.adopt, body.path, body.sha256, ".body"
                )
            else:
                identity = source.identify(body)
        except BaseException:
            body.discard()
            raise
        incoming = IncomingDelivery(
            source=source.name,
            identity=identity,
            auth=auth,
            sha256=body.sha256,
            size=body.size,
            body=body.data,
            blob_path=blob_path,
            content_type=content_type[:128] or None,
        )
        try:
            return await self.inbox.accept(incoming)
        except Exception as exc:
            # One line, no traceback: during an outage every request fails the same way.
            log.error("inbox_unavailable", source=source.name, error=f"{type(exc).__name__}: {exc}")
            raise WebhookError(
                503, "store_unavailable", "the delivery could not be stored; please retry"
            ) from exc


WEBHOOK_PREFIX = "/webhooks/"


def webhook_source(path: str) -> str | None:
    """The ``<source>`` of ``/webhooks/<source>`` (a trailing slash allowed), else None: the
    same paths as the two webhook routes below match."""
    if not path.startswith(WEBHOOK_PREFIX):
        return None
    name = path[len(WEBHOOK_PREFIX) :]
    if name.endswith("/"):
        name = name[:-1]
    return name if name and "/" not in name else None


class ReceiverApp(Starlette):
    """The receiver's Starlette app, with deliveries answered before its middleware stack.

    A ``POST /webhooks/<source>`` goes from the connection limit straight to the
    ``WebhookEndpoint``; every other request takes Starlette's way (middleware, the route list).
    The endpoint turns each refusal into its JSON answer itself, so Starlette's error and
    exception middlewares and its router had nothing to do for a delivery but cost: each wraps
    ``send`` and adds a coroutine per request, a quarter of the event loop's time per delivery
    in a profile under load (bench/RESULTS.md). The webhook routes stay in the route list, for
    the other methods' 405 and for readers.
    """

    def __init__(self, *, webhooks: WebhookEndpoint, max_in_flight: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._webhooks = webhooks
        self._limited = ConcurrencyLimit(self._dispatch, max_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._limited(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            name = webhook_source(scope["path"])
            if name is not None:
                await self._deliver(scope, receive, send, name)
                return
        await Starlette.__call__(self, scope, receive, send)

    async def _deliver(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        try:
            await self._webhooks.handle(scope, receive, send, name)
        except ClientDisconnect:
            log.info("client_disconnected", source=name)
        except Exception:
            # What ServerErrorMiddleware would do: a bug gets its traceback in the log and the
            # documented 500 (unless the answer had started; then the connection just ends).
            log.exception("unhandled_error", path=scope["path"])
            with contextlib.suppress(Exception):
                await _internal_error()(scope, receive, send)


def _internal_error() -> Response:
    return JSONResponse(
        {"error": "internal_error", "detail": "an unexpected error occurred"}, status_code=500
    )


HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}
HTTP_ERROR_DETAILS = {
    404: "no such endpoint",
    405: "this endpoint does not accept that method",
}


def bearer_matches(headers: Headers, token: str) -> bool:
    """``Authorization: Bearer <token>``, the scheme in any case (RFC 9110), compared in
    constant time."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options of ``voicehooks serve``.

    One definition, because the benchmark serves its anchor (a bare Starlette endpoint) with the
    same options: the ratio must compare designs, not server configurations.
    """
    return {
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "proxy_headers": False,
        "server_header": False,
        "timeout_graceful_shutdown": 30,
        # Logging is ours (receiver.logging): uvicorn's records take the same format.
        "log_config": None,
        # The hard cap on open connections; ConcurrencyLimit answers JSON 503 before it.
        "limit_concurrency": settings.max_connections + CONNECTION_HEADROOM,
    }


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    run_worker: bool = True,
    worker_process: WorkerProcess | None = None,
    inbox_process: bool = False,
) -> Starlette:
    """The app; workers run in-process threads (``run_worker``) or in ``worker_process``, a
    child started once the store is migrated and stopped with the app. Deliveries are committed
    by the inbox's threads, or with ``inbox_process`` by a child of their own (what ``serve``
    does, receiver/inbox_process.py)."""
    services = services or Services.create(settings or Settings())
    settings = services.settings
    writer = (
        InboxProcess(
            settings,
            services.registry.routes,
            on_new_jobs=services.worker.wake if run_worker else None,
        )
        if inbox_process
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await anyio.to_thread.run_sync(services.migrate)
        services.warn_unconfigured()
        if writer is not None:
            services.inbox.store_file.remember()  # what /readyz checks
            await writer.start()
        else:
            services.inbox.start()
        if run_worker:
            services.worker.start_in_thread()
        if worker_process is not None:
            worker_process.start()
        log.info(
            "receiver_started",
            sources=sorted(services.sources),
            handlers=len(services.registry),
            worker="process" if worker_process is not None else run_worker,
        )
        try:
            yield
        finally:
            if writer is not None:
                await writer.stop()
            else:
                services.inbox.stop()
            if worker_process is not None:
                await anyio.to_thread.run_sync(worker_process.stop)
            if run_worker:
                await anyio.to_thread.run_sync(services.worker.stop)
            services.close()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        def check() -> set[str]:
            services.inbox.store_file.check()
            with services.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return migrate.pending_revisions(services.engine)

        try:
            # Bounded: a database that does not answer makes us unready, not a hung probe.
            with anyio.fail_after(settings.store_timeout_seconds):
                pending = await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
        except StoreGone as exc:
            log.error("not_ready", error=str(exc))
            return JSONResponse(
                {"error": "store_gone", "detail": f"{exc}; restart the receiver"},
                status_code=503,
            )
        except Exception as exc:
            log.warning("not_ready", error=str(exc))
            return JSONResponse(
                {"error": "database_unreachable", "detail": "the database cannot be reached"},
                status_code=503,
            )
        if pending:
            return JSONResponse(
                {
                    "error": "migrations_pending",
                    "detail": f"run `voicehooks migrate` ({len(pending)} pending)",
                },
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(request: Request) -> Response:
        token = settings.admin_token
        if token is not None and not bearer_matches(request.headers, token.get_secret_value()):
            return WebhookError(401, "unauthorized", "metrics need the admin token").response()
        # The job gauges are read at scrape time (two cheap queries), not kept up to date.
        try:
            backlog = await anyio.to_thread.run_sync(jobs.backlog, services.engine)
        except Exception as exc:
            log.warning("metrics_backlog_unavailable", error=str(exc))
        else:
            metrics.set_backlog(backlog)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        # Not found, method not allowed...: the documented JSON shape, never plain text.
        assert isinstance(exc, HTTPException)
        code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
        detail = HTTP_ERROR_DETAILS.get(exc.status_code, str(exc.detail))
        return JSONResponse(
            {"error": code, "detail": detail}, status_code=exc.status_code, headers=exc.headers
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled_error", path=request.url.path)
        return _internal_error()

    webhooks = WebhookEndpoint(services, writer or services.inbox)
    routes = [
        # ReceiverApp answers these POSTs before the middleware stack (see its docstring).
        Route("/webhooks/{source}", webhooks, methods=["POST"]),
        # A trailing slash is the same endpoint: providers may not follow a redirect.
        Route("/webhooks/{source}/", webhooks, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = ReceiverApp(
        webhooks=webhooks,
        max_in_flight=settings.max_connections,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={Exception: server_error, HTTPException: http_error},
    )
    app.state.services = services
    ui.mount(app, services)
    return app

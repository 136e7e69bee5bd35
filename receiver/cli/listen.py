"""Serving on a port: bind it first, announce it only once it accepts connections.

``voicehooks serve`` binds the socket itself before anything else happens, so a busy port is
one clear line before the store is migrated or a worker starts, and uvicorn then serves on that
socket. "listening" is printed from uvicorn's start-up, after the lifespan (migrations, workers)
has run and the server accepts connections, so whoever reads it can connect at once.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import uvicorn

from receiver.cli.output import console, fail


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or exit 1 with one line saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror}", code=2) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        hint = (
            " (is another voicehooks running? use --port)" if exc.errno == errno.EADDRINUSE else ""
        )
        raise fail(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    sock.set_inheritable(True)
    return sock


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that says where it listens once it does (not before)."""

    def __init__(self, config: uvicorn.Config, announcement: Any) -> None:
        super().__init__(config)
        self.announcement = announcement

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            console.print(self.announcement, soft_wrap=True)


def run(app: Any, sock: socket.socket, announcement: Any, **options: Any) -> None:
    """Serve ``app`` on the already bound ``sock`` until interrupted."""
    config = uvicorn.Config(app, **options)
    AnnouncingServer(config, announcement).run(sockets=[sock])

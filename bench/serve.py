"""Run any ASGI app under exactly the uvicorn settings ``voicehooks serve`` uses.

    python -m bench.serve bench.anchor_app:app --port 8001

The anchor and the naive design must be served the same way as voicehooks (same event loop, HTTP
parser, logging and access-log settings), or the ratios would compare servers instead of designs.
So this takes the options from ``receiver.app.server_options``, the one place ``serve`` gets them.
"""

from __future__ import annotations

import argparse
import importlib

import uvicorn

from receiver.app import server_options
from receiver.logging import configure as configure_logging
from receiver.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", help="module:attribute of the ASGI app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    module, _, attribute = args.app.partition(":")
    app = getattr(importlib.import_module(module), attribute or "app")
    settings = Settings()
    configure_logging(settings.log_level)
    uvicorn.run(app, host=args.host, port=args.port, **server_options(settings))


if __name__ == "__main__":
    main()

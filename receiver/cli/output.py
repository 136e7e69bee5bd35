"""What every command prints with: consoles, errors, JSON, and literal text.

Everything from a payload or the store is untrusted text. Rich reads ``[...]`` as markup and
``:name:`` as an emoji code, so such text reaches a console only through ``literal``/``short``
(a ``Text`` that is never parsed) or as a table cell built from them, never inside an f-string
handed to ``console.print``.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

console = Console(emoji=False, highlight=False)
err_console = Console(stderr=True, emoji=False, highlight=False)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def literal(value: Any) -> Text:
    """``value`` as plain text: no markup, no emoji codes, nothing interpreted."""
    return Text("-" if value is None else str(value))


def short(value: Any, width: int = 60) -> Text:
    """``literal``, cut to ``width`` characters with an ellipsis."""
    text = "-" if value is None else str(value)
    return Text(text if len(text) <= width else text[: width - 1] + "…")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` (the message taken literally) and return the exit to raise."""
    err_console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    return typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")

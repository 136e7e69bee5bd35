"""Which handlers run for which (source, event type).

A handler is a plain function (sync or async) taking ``(event, ctx)``, marked with
``@handler(source, event_type)``. Importing the module that defines it is what registers it, so
"installing a plugin" means "make sure its module is imported": built-in handlers and third-party
packages name their module in the entry-point group ``voicehooks.handlers``; a deployment can add
more with ``VOICEHOOKS_PLUGINS=module[:object],...``.

Jobs record a handler by its stable name ``module:qualname``; a job whose handler has since been
uninstalled fails with a message that says so instead of vanishing.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from receiver.events import Event, HandlerContext

ENTRY_POINT_GROUP = "voicehooks.handlers"
HandlerFunc = Callable[["Event", "HandlerContext"], Awaitable[None] | None]
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class HandlerSpec:
    source: str
    event_type: str
    func: HandlerFunc

    @property
    def name(self) -> str:
        return f"{self.func.__module__}:{self.func.__qualname__}"


_declared: list[HandlerSpec] = []


def handler(source: str, event_type: str) -> Callable[[HandlerFunc], HandlerFunc]:
    """Register the decorated function for ``(source, event_type)``; stackable."""

    def register(func: HandlerFunc) -> HandlerFunc:
        _declared.append(HandlerSpec(source, event_type, func))
        return func

    return register


class Registry:
    def __init__(self, specs: Iterable[HandlerSpec] = ()) -> None:
        self._by_event: dict[tuple[str, str], list[HandlerSpec]] = defaultdict(list)
        self._by_name: dict[str, HandlerSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: HandlerSpec) -> None:
        key = (spec.source, spec.event_type)
        if spec not in self._by_event[key]:
            self._by_event[key].append(spec)
        self._by_name[spec.name] = spec

    def handlers_for(self, source: str, event_type: str | None) -> list[HandlerSpec]:
        if event_type is None:
            return []
        return self._by_event.get((source, event_type), [])

    def routes(self) -> tuple[tuple[str, str, str], ...]:
        """Every ``(source, event_type, handler name)``, each event's handlers in the order
        they run: what the inbox needs to create jobs, as one comparable value."""
        return tuple(
            (source, event_type, spec.name)
            for (source, event_type), specs in self._by_event.items()
            for spec in specs
        )

    def get(self, name: str) -> HandlerSpec | None:
        return self._by_name.get(name)

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


def import_plugin(reference: str) -> object:
    """Import ``module`` or ``module:attribute`` with an error that names the setting."""
    module_name, _, attribute = reference.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
        for part in filter(None, attribute.split(".")):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"cannot load handler plugin {reference!r}: {exc}") from exc
    return obj


def load_registry(plugins: Iterable[str] = (), *, use_entry_points: bool = True) -> Registry:
    """Import every installed and configured plugin, then collect what they declared."""
    if use_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not take the receiver down
                log.error("plugin_load_failed", entry_point=ep.name, value=ep.value, error=str(exc))
    for reference in plugins:
        import_plugin(reference)
    return Registry(_declared)

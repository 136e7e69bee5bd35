"""Which handlers run for which (source, event type), collected from plugins' blueprints.

A plugin (the built-in ``handlers.elevenlabs`` and ``handlers.kie`` included) builds one
``Blueprint``: the handlers it provides, each for a (source, event type), and optionally the
sections it adds to the demo report, and the periodic tasks it wants the workers to run
(``blueprint.periodic(every, func)``). Nothing is registered by importing a module; the blueprint
is an object the plugin hands over, through the entry-point group ``voicehooks.handlers`` or the
setting ``VOICEHOOKS_PLUGINS=module[:attribute],...`` (a bare module means its ``blueprint``).
``load_registry`` turns the installed blueprints into one ``Registry``, the only thing the inbox,
the workers and the admin commands consult.

Jobs record a handler by its stable name ``module:qualname``; a job whose handler has since been
uninstalled fails with a message that says so instead of vanishing.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from receiver.events import Event, HandlerContext, PeriodicContext
    from receiver.settings import Settings

ENTRY_POINT_GROUP = "voicehooks.handlers"
HandlerFunc = Callable[["Event", "HandlerContext"], Awaitable[None] | None]
# A demo report section: given the store, something rich can print (or None when empty).
ReportFunc = Callable[["Engine"], Any]
# A periodic task: an async function of the context the workers give it.
PeriodicFunc = Callable[["PeriodicContext"], Awaitable[None]]
# Its interval in seconds, or a function of the settings giving it (0 or less: not run).
Interval = float | Callable[["Settings"], float]
# Where a plugin's rows point into the blob store: given a connection, every blob path (relative
# to the store) that a row references. ``voicehooks gc`` keeps these.
BlobRefsFunc = Callable[["Connection"], Iterable[str]]


class PluginError(Exception):
    """A plugin that cannot be loaded: start-up stops with this one line."""


@dataclass(frozen=True)
class HandlerSpec:
    source: str
    event_type: str
    func: HandlerFunc

    @property
    def name(self) -> str:
        return f"{self.func.__module__}:{self.func.__qualname__}"


@dataclass(frozen=True)
class PeriodicSpec:
    """A task every worker process runs every ``interval`` seconds (``voicehooks serve`` and
    ``voicehooks worker`` alike). Every process runs it: a task that must run once per interval
    across processes sharing the store (one call to a provider's API, not one per worker) claims
    its turn in the database itself, as ``handlers.elevenlabs.backfill`` does."""

    every: Interval
    func: PeriodicFunc

    @property
    def name(self) -> str:
        return f"{self.func.__module__}:{self.func.__qualname__}"

    def interval(self, settings: Settings) -> float:
        return float(self.every(settings) if callable(self.every) else self.every)


@dataclass
class Blueprint:
    """What one plugin provides, collected on an object instead of in module-level state.

    Build it where the plugin's handlers are listed (its package ``__init__``), either with
    ``blueprint.add(source, event_type, func)`` or with the ``@blueprint.handler(...)`` decorator.
    """

    name: str
    handlers: list[HandlerSpec] = field(default_factory=list)
    reports: list[ReportFunc] = field(default_factory=list)
    periodics: list[PeriodicSpec] = field(default_factory=list)
    blob_refs: list[BlobRefsFunc] = field(default_factory=list)

    def add(self, source: str, event_type: str, func: HandlerFunc) -> None:
        spec = HandlerSpec(source, event_type, func)
        if spec not in self.handlers:
            self.handlers.append(spec)

    def handler(self, source: str, event_type: str) -> Callable[[HandlerFunc], HandlerFunc]:
        """Decorator form of ``add``; stackable for a function that handles several events."""

        def register(func: HandlerFunc) -> HandlerFunc:
            self.add(source, event_type, func)
            return func

        return register

    def report(self, func: ReportFunc) -> ReportFunc:
        """Add a section to ``voicehooks demo``'s report (a function of the engine)."""
        self.reports.append(func)
        return func

    def periodic(self, every: Interval, func: PeriodicFunc) -> None:
        """Run ``await func(ctx)`` in each worker process every ``every`` seconds, the first
        time at start-up. ``every`` may be a function of the settings (so an operator turns the
        task on or off with a setting); 0 or less means the task does not run. A task that
        raises is logged and runs again at its next interval."""
        spec = PeriodicSpec(every, func)
        if spec not in self.periodics:
            self.periodics.append(spec)

    def blob_references(self, func: BlobRefsFunc) -> BlobRefsFunc:
        """Declare where this plugin's tables point into the blob store (a function of a
        connection giving blob paths). The core cannot know a plugin's tables, and ``voicehooks
        gc`` removes every blob that nothing declares: a plugin that stores blobs must say so."""
        self.blob_refs.append(func)
        return func


class Registry:
    def __init__(self, blueprints: Iterable[Blueprint] = ()) -> None:
        self.blueprints: list[Blueprint] = []
        self._by_event: dict[tuple[str, str], list[HandlerSpec]] = defaultdict(list)
        self._by_name: dict[str, HandlerSpec] = {}
        self._routes: tuple[tuple[str, str, str], ...] | None = None  # see routes()
        for blueprint in blueprints:
            self.include(blueprint)

    @classmethod
    def of(cls, specs: Iterable[HandlerSpec]) -> Registry:
        """A registry of just these handlers, no plugins (tests, embedding)."""
        return cls([Blueprint("inline", list(specs))])

    def include(self, blueprint: Blueprint) -> None:
        self.blueprints.append(blueprint)
        for spec in blueprint.handlers:
            self.add(spec)

    def add(self, spec: HandlerSpec) -> None:
        key = (spec.source, spec.event_type)
        if spec not in self._by_event[key]:
            self._by_event[key].append(spec)
        self._by_name[spec.name] = spec
        self._routes = None

    def handlers_for(self, source: str, event_type: str | None) -> list[HandlerSpec]:
        if event_type is None:
            return []
        return self._by_event.get((source, event_type), [])

    def routes(self) -> tuple[tuple[str, str, str], ...]:
        """Every ``(source, event_type, handler name)``, each event's handlers in the order
        they run: what the inbox needs to create jobs, as one comparable value. The inbox asks
        on every batch, so the value is kept (the same object) until a handler is added."""
        if self._routes is None:
            self._routes = tuple(
                (source, event_type, spec.name)
                for (source, event_type), specs in self._by_event.items()
                for spec in specs
            )
        return self._routes

    def get(self, name: str) -> HandlerSpec | None:
        return self._by_name.get(name)

    def reports(self) -> list[ReportFunc]:
        return [report for blueprint in self.blueprints for report in blueprint.reports]

    def periodics(self) -> list[PeriodicSpec]:
        return [spec for blueprint in self.blueprints for spec in blueprint.periodics]

    def blob_references(self) -> list[BlobRefsFunc]:
        """Every installed plugin's ``blob_references`` functions."""
        return [func for blueprint in self.blueprints for func in blueprint.blob_refs]

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


def import_object(reference: str) -> object:
    """Import ``module`` or ``module:attribute.path``.

    The working directory is importable, as it is for ``python -m``: the README's recipe
    (``myplugin.py`` beside you, ``VOICEHOOKS_PLUGINS=myplugin``) must work from a console script.
    """
    module_name, _, attribute = reference.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    obj: object = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj


def as_blueprint(obj: object, where: str) -> Blueprint:
    """A plugin names a Blueprint, or a module that has one called ``blueprint``."""
    if not isinstance(obj, Blueprint):
        obj = getattr(obj, "blueprint", obj)
    if not isinstance(obj, Blueprint):
        raise PluginError(f"{where} is not a voicehooks Blueprint (nor a module with `blueprint`)")
    return obj


def load_registry(plugins: Iterable[str] = (), *, use_entry_points: bool = True) -> Registry:
    """Every installed (entry points) and configured (``VOICEHOOKS_PLUGINS``) blueprint.

    A plugin that fails to load raises ``PluginError``: a receiver silently running without a
    handler it was meant to have would acknowledge events that nothing then processes.
    """
    blueprints: list[Blueprint] = []
    if use_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            where = f"handler plugin {ep.name!r} ({ep.value}, entry point {ENTRY_POINT_GROUP})"
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginError(f"cannot load {where}: {type(exc).__name__}: {exc}") from exc
            blueprints.append(as_blueprint(obj, where))
    for reference in plugins:
        where = f"handler plugin {reference!r} (VOICEHOOKS_PLUGINS)"
        try:
            obj = import_object(reference)
        except Exception as exc:
            raise PluginError(f"cannot load {where}: {type(exc).__name__}: {exc}") from exc
        blueprints.append(as_blueprint(obj, where))
    return Registry(blueprints)

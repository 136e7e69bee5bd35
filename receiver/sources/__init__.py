"""The senders the receiver knows, each one package, found through entry points.

A provider is a ``Source`` subclass (``base.py``) in a package of its own (``elevenlabs/``,
``kie/``, or a third party's), named in the entry-point group ``voicehooks.sources``. This module
is the only place that turns that group into the running set; nothing else lists providers.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from receiver.registry import PluginError
from receiver.settings import Settings
from receiver.sources.base import Source

ENTRY_POINT_GROUP = "voicehooks.sources"


def source_classes() -> dict[str, type[Source]]:
    """Every installed source class by its name; one that cannot load stops start-up."""
    classes: dict[str, type[Source]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:
            raise PluginError(
                f"cannot load source {ep.name!r} ({ep.value}, entry point {ENTRY_POINT_GROUP}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not (isinstance(cls, type) and issubclass(cls, Source)):
            raise PluginError(f"source {ep.name!r} ({ep.value}) is not a Source subclass")
        classes[cls.name] = cls
    return classes


def load_sources(settings: Settings) -> dict[str, Source]:
    return {name: cls(settings) for name, cls in source_classes().items()}

"""One module per sender. ``all_sources`` is the only list of them."""

from __future__ import annotations

from receiver.settings import Settings
from receiver.sources.base import Source


def all_sources(settings: Settings) -> dict[str, Source]:
    from receiver.sources.elevenlabs import ElevenLabsSource

    sources: list[Source] = [ElevenLabsSource(settings)]
    try:
        from receiver.sources.kie import KieSource
    except ImportError:  # pragma: no cover - kie support is optional until it lands
        pass
    else:
        sources.append(KieSource(settings))
    return {source.name: source for source in sources}

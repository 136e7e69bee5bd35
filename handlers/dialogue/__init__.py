"""Dialogue renders across providers: a script submitted to kie.ai, ElevenLabs or Sonna and
followed to stored audio on the same durable engine as the webhooks.

The plugin's whole surface, listed explicitly: the render handler (for submissions, stored as
``local`` deliveries) and the kie.ai callback trigger that completes a render at once. Tables
are in ``tables``, their migrations in ``migrations``, the ``dialogue`` command in ``cli``.
"""

from handlers.dialogue.render import complete_kie_render, run_render
from handlers.dialogue.store import EVENT_TYPE
from handlers.dialogue.tables import blob_paths
from receiver.registry import Blueprint
from receiver.sources.kie import EVENT_TYPE as KIE_CALLBACK
from receiver.sources.local import NAME as LOCAL

blueprint = Blueprint("dialogue")
blueprint.add(LOCAL, EVENT_TYPE, run_render)
blueprint.add("kie", KIE_CALLBACK, complete_kie_render)
blueprint.blob_references(blob_paths)

"""kie.ai ``elevenlabs/text-to-dialogue-v3`` task callbacks -> ``dialogue_tasks`` rows + audio.

The plugin's whole surface, listed explicitly: its handler and its demo report section. Tables
live in ``tables``, their migrations in ``migrations``, the ``tasks`` command in ``cli``.
"""

from handlers.kie import report, tables
from handlers.kie.dialogue import record_dialogue_task
from receiver.registry import Blueprint
from receiver.sources.kie import EVENT_TYPE

blueprint = Blueprint("kie")
blueprint.add("kie", EVENT_TYPE, record_dialogue_task)
blueprint.report(report.tasks_table)
blueprint.blob_references(tables.blob_paths)

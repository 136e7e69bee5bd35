"""An example voicehooks plugin: the handlers it provides, listed explicitly."""

from call_log.handlers import log_call
from receiver.registry import Blueprint

blueprint = Blueprint("call_log")
blueprint.add("elevenlabs", "post_call_transcription", log_call)

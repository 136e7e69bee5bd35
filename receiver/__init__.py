"""voicehooks: authenticate, persist, acknowledge, then process voice-AI webhooks."""

__version__ = "0.1.0"

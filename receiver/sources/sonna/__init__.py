"""Sonna (api.sonnalabs.app): a dialogue render endpoint built on ElevenLabs' Eleven v3.

Only an API client (``client.py``): Sonna sends no webhooks, so there is no ``Source`` here and
nothing in the entry-point group ``voicehooks.sources``.
"""

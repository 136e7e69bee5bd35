"""The ``voicehooks`` command line: ``main`` builds it, one module per group of commands.

``output`` (consoles, errors, JSON) and ``store`` (opening the store) are what commands share,
plugins' commands included; they import nothing else from here, so there is no cycle.
"""

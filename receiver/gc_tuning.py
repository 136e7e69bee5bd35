"""Short garbage-collector pauses for the long-running processes (``serve``, ``worker``).

CPython's full collection walks every container object the process holds. A receiver holds
about 100,000 from start-up (imported libraries, SQLAlchemy's metadata, pydantic's models) that
will never become garbage, and walking them took 60-80 ms on the benchmark machine. Under load a
full collection came every few seconds (requests in flight outlive the young generations and get
promoted, which is what triggers them), so those pauses were the p99 acknowledgement latency at
the maximum rate. ``gc.freeze()`` moves everything alive at start-up into a permanent generation
that collections skip; it is the use the Python documentation gives for it besides ``fork``.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect what start-up left behind, then exempt every surviving object from future
    collections (they are still freed normally when their reference count drops to zero)."""
    gc.collect()
    gc.freeze()

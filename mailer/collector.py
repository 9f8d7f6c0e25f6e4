"""Python's cycle collector, paused for work that allocates many objects at
once (apart from the pipeline, so loading the configuration imports no stage)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run one batch of a stage (papers matched, digests composed, a dump
    stored) or a configuration's validation with Python's cycle collector
    off. Such a batch allocates hundreds of thousands of objects beside a
    large heap (analysed papers, statistics), and the collector then spends
    a third to a half of the CPU time walking that heap while finding almost
    nothing: reference counting frees all but cycles, and those are
    collected once it is back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def give_back_memory() -> None:
    """Return the heap that a stage freed to the system (glibc's malloc_trim):
    a large dump's records are freed after they are stored, but glibc keeps
    the pages, and the next stages would grow on top of them. Elsewhere,
    nothing happens."""
    global _trim
    if _trim is None:
        import ctypes  # here: loading the configuration pauses the collector too

        try:
            _trim = ctypes.CDLL(None).malloc_trim  # the C library's, where it has one
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim: Any = None

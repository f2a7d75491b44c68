"""Where the operator works around kopf's defaults: each piece names the kopf behaviour it replaces and why.

Only handlers.py and resync.py use these; tests/test_handlers.py checks the assumptions they rest on.
"""

from __future__ import annotations

import contextvars
import functools
from dataclasses import replace

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds an "essence" of every event's body (a deep copy of it, status and all) to tell what changed, for
    ``on.create``/``on.update``/``on.field`` handlers and idle timers. This operator has none of them (the handler
    tier checks), so every essence is empty: no copy, no diff. The copies' cost in a burst of ABTests:
    docs/benchmarks.md, operator_scale.py's section."""

    def build(self, *, body: kopf.Body, extra_fields=None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def without_finalizer(fn):
    """kopf puts a finalizer on every object a daemon or timer runs for, so that the object waits for it to stop.
    The resync keeps no state that could be lost: without the finalizer an ABTest costs two writes less, and it can be
    deleted while the operator is down. kopf has no option for this, so the registered handler is replaced with a
    copy that does not require one (kopf then also removes the finalizer from ABTests that still carry it); the
    handler and e2e tiers check that ABTests carry no finalizer. Reaches into kopf's private registry
    (``_spawning._handlers``): check it on every kopf upgrade."""
    spawning = kopf.get_default_registry()._spawning
    spawning._handlers = [replace(h, requires_finalizer=False) if h.fn is fn else h for h in spawning._handlers]
    return fn


def in_kopf_context(fn, *args):
    """``fn(*args)`` as a callable for another thread that runs it in a copy of the calling context: kopf.info/warn
    find kopf's Event poster through context variables of its event loop, and kopf copies them only into the threads
    of its own handler pool, so a pass started in any other thread could not post (LookupError)."""
    return functools.partial(contextvars.copy_context().run, fn, *args)

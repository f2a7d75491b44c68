"""The resync: an unfinished ABTest that has gone ``resync_seconds`` without a pass gets one.

An ABTest whose pods cannot start produces no events, and kopf does not retry a failed event handler: the resync is
what still gives such an ABTest passes. One coroutine per ABTest (kopf's daemon, handlers.py), asleep between
passes; its passes run in the state's resync threads, so a wave of them never takes kopf's workers from the events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from abtest_operator import reconcile, status
from abtest_operator.kopf_workarounds import in_kopf_context
from abtest_operator.state import OperatorState
from abtest_operator.watched import Observed


async def resync(state: OperatorState, body: Mapping, seen: Callable[[], Observed], logger: logging.Logger) -> None:
    """Until the ABTest finishes (``body`` is kopf's live copy of it): a pass once ``resync_seconds`` have gone by
    since its latest one, whatever started that (unlike a kopf timer, which ticks on its own schedule). The first
    pass is the ABTest event's. A failed pass is logged and tried again at the next resync."""
    meta = body["metadata"]
    namespace, uid, interval = meta["namespace"], meta["uid"], state.config.resync_seconds
    loop = asyncio.get_running_loop()
    tried = state.clock()
    while not status.is_terminal(body.get("status")):
        last = state.last_pass(namespace, uid)
        wait = max(tried, tried if last is None else last) + interval - state.clock()
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        tried = state.clock()
        try:
            await loop.run_in_executor(state.resync_pool, in_kopf_context(reconcile.guarded, state, dict(body), seen()))
        except Exception as err:  # counted by guarded; the next resync tries again
            logger.warning(f"resync pass failed, retried in {interval:g} s: {type(err).__name__}: {' '.join(str(err).split())[:500]}")

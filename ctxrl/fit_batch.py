"""Fits that many threads need at the same time, made in one batched program.

:func:`ctxrl.selection.replay_many` replays one strategy on many trial matrices, each in its
own thread; every step, each replay fits a GP (:mod:`ctxrl.gp`, :mod:`ctxrl.reference_gp`).
Inside :func:`batched_fits` such a fit goes through a :class:`FitBatch`: the threads wait for
each other and the last one fits all their problems at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

FitMany = Callable[[list[Any]], list[Any]]
"""Fits a list of problems in one batched program; one result per problem, in order."""


class FitBatch:
    """Where the GP fits of ``parties`` threads meet (:func:`batched_fits`): a thread that
    needs a fit leaves its problem and waits; when every live thread waits, the last to arrive
    fits them all, one batched program per group (problems of the same shape and settings, fitted
    by the same ``fit_many``), and wakes the others. A thread that finishes calls :meth:`leave`."""

    def __init__(self, parties: int) -> None:
        self._condition = threading.Condition()
        self._live = parties
        self._blocked = 0
        self._waiting: dict[tuple[Any, ...], tuple[tuple[Any, ...], Any, FitMany]] = {}
        self._done: dict[tuple[Any, ...], Any] = {}
        self._failed: dict[tuple[Any, ...], Exception] = {}

    def fit(
        self, key: tuple[Any, ...], group: tuple[Any, ...], problem: Any, fit_many: FitMany
    ) -> Any:
        """The result of ``problem`` (``key``: its data and settings, ``group``: the problems
        it can be fitted with, ``fit_many``: fits a list of them, returning one result each);
        raises the error of its batched fit if that failed."""
        with self._condition:
            if key not in self._done and key not in self._failed:
                self._waiting[key] = (group, problem, fit_many)
                self._blocked += 1
                self._fit_when_all_wait()
                while key not in self._done and key not in self._failed:
                    self._condition.wait()
            if key in self._failed:
                raise self._failed[key]
            return self._done[key]

    def leave(self) -> None:
        """A thread is done: it will ask for no more fits."""
        with self._condition:
            self._live -= 1
            self._fit_when_all_wait()

    def _fit_when_all_wait(self) -> None:
        if not self._waiting or self._blocked < self._live:
            return
        groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for key, (group, _, _) in self._waiting.items():
            groups.setdefault(group, []).append(key)
        for keys in groups.values():
            fit_many = self._waiting[keys[0]][2]
            try:
                results = fit_many([self._waiting[k][1] for k in keys])
                self._done.update(zip(keys, results, strict=True))
            except Exception:  # one bad problem fails the batch: fit each alone to find it
                for key in keys:
                    try:
                        (self._done[key],) = fit_many([self._waiting[key][1]])
                    except Exception as exc:  # its thread raises it; none waits forever
                        self._failed[key] = exc
        self._waiting.clear()
        # every waiting thread's problem is answered: none counts as waiting any more, even
        # before it wakes (a woken thread's next fit must wait for the others' next fits)
        self._blocked = 0
        self._condition.notify_all()


_BATCH: ContextVar[FitBatch | None] = ContextVar("ctxrl_gp_batch", default=None)


@contextmanager
def batched_fits(batch: FitBatch) -> Iterator[None]:
    """Within this block (in the calling thread), a :class:`PerformanceGP` fits through
    ``batch``: it waits until the batch's other threads wait too and all are fitted in one
    batched program. Used by :func:`ctxrl.selection.replay_many` to fit the GPs of many replays
    together. Each member of a batched fit is optimised on its own loss (the batch's summed loss
    has each member's gradient, and Adam updates each element alone), so a member's result is
    the one a lone fit gives (tests/test_selection.py)."""
    token = _BATCH.set(batch)
    try:
        yield
    finally:
        _BATCH.reset(token)


def current_batch() -> FitBatch | None:
    """The batch the calling thread fits through (inside :func:`batched_fits`), or None."""
    return _BATCH.get()

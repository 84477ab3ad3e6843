"""The ``zero-shot`` transfer method: each source policy is used on every target as it is.

This is what a sweep does by default: the transfer matrix's entry ``(p, q)`` is source ``p``'s
return on target ``q``, with no training in the target (MBTL's setting, Cho et al. 2024).
"""

from __future__ import annotations

from collections.abc import Callable

from ctxrl import hookimpl
from ctxrl.registry import TransferMethodSpec
from ctxrl.transfer import TransferProblem, TransferResult, evaluate_sources


class ZeroShot:
    """Evaluate the sources on the targets, unchanged."""

    def transfer(self, problem: TransferProblem) -> TransferResult:
        return TransferResult(evaluate_sources(problem), target_env_steps=0)


def _zero_shot() -> ZeroShot:
    return ZeroShot()


@hookimpl
def ctxrl_register_transfer_methods(register: Callable[[TransferMethodSpec], None]) -> None:
    register(
        TransferMethodSpec(
            name="zero-shot",
            factory=_zero_shot,
            batched_only=False,
            description="each source policy used on every target as it is (the default)",
        )
    )

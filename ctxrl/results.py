"""Reading a finished run directory back: its plan, and its trained policies.

:func:`load_policies` is the one way a transfer study, a warm start or a distillation gets
policies from an earlier sweep: it reads the plan (``plan.yaml``), the store's finished runs
and their safetensors artifacts, and builds the algorithm that trained them through the
registry. :func:`check_transferable` says whether policies of one env can act in another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxrl.config import SweepPlan, algorithm_params, resolve_plan
from ctxrl.errors import CtxrlError
from ctxrl.options import check_device
from ctxrl.plugins import get_host
from ctxrl.registry import EnvSpec, Registry
from ctxrl.run_dirs import PLAN_FILE, read_plan_file, stored_config
from ctxrl.store import RunRecord, Store
from ctxrl.summary import STORE_FILE


def load_plan(run_dir: str | Path, registry: Registry | None = None) -> SweepPlan:
    """The plan a run directory was made from (its ``plan.yaml``), resolved against the
    installed plugins."""
    run_dir = Path(run_dir)
    stored = read_plan_file(run_dir)
    if "study" in stored:
        raise CtxrlError(
            f"{run_dir} holds a {stored['study']!r} study, not a sweep; give the run directory "
            "of a `ctxrl sweep`"
        )
    config = stored_config(stored, run_dir / PLAN_FILE)
    return resolve_plan(config, registry or get_host().registry, training=False)


def open_store(run_dir: str | Path) -> Store:
    """The results store of a run directory, opened read-only; a directory without one is
    an error naming what is missing (a store is never created by reading)."""
    run_dir = Path(run_dir)
    store_file = run_dir / STORE_FILE
    if not store_file.is_file():
        policies = len(list((run_dir / "artifacts").glob("*.safetensors")))
        if policies:  # the store was there: its runs' evaluations are what reports read
            raise CtxrlError(
                f"{run_dir} has no {STORE_FILE}, though its artifacts/ holds {policies} saved "
                f"polic{'y' if policies == 1 else 'ies'}: the store (every run's evaluations) "
                "was moved or deleted; restore it from a copy, or rerun `ctxrl sweep` on its "
                "config to train the runs again"
            )
        raise CtxrlError(
            f"{run_dir} has no {STORE_FILE}: no run was ever stored there (a copied "
            f"{PLAN_FILE} holds no results); run `ctxrl sweep` on its config first"
        )
    return Store(store_file, readonly=True)


@dataclass
class LoadedPolicies:
    """Policies read from a run directory.

    Attributes:
        policies: one policy object per run, as the algorithm's ``load`` returns it (for the
            batched algorithms: a policies object of one agent, with ``params`` ``(1, ...)``).
        runs: the store rows of those runs, in the same order.
        contexts: each run's source context (feature -> value); ``{}`` for multi-task runs.
        env: the env spec of the sweep (with its ``env_options``).
        algorithm: the algorithm object that trained them (built from the plan's
            hyperparameters), whose ``save`` / ``evaluate`` / ``train_many`` apply to them.
        plan: the sweep's plan.
    """

    policies: list[Any]
    runs: list[RunRecord]
    contexts: list[dict[str, float]]
    env: EnvSpec
    algorithm: Any
    plan: SweepPlan

    def __len__(self) -> int:
        return len(self.policies)

    def stacked_params(self) -> dict[str, Any]:
        """Batched policies' parameters concatenated over runs: ``(len(self), ...)`` each,
        ready for ``train_many(init=...)``."""
        import torch

        if not all(hasattr(p, "params") for p in self.policies):
            raise CtxrlError(
                f"{self.plan.algorithm.name} policies have no stacked parameters (only the "
                "batched algorithms' do)"
            )
        names = list(self.policies[0].params)
        return {n: torch.cat([p.params[n] for p in self.policies]) for n in names}


def load_policies(
    run_dir: str | Path,
    *,
    where: Callable[[RunRecord], bool] | None = None,
    run_ids: Sequence[str] | None = None,
    device: str = "cpu",
    algorithm: str | None = None,
) -> LoadedPolicies:
    """The finished runs' policies of the sweep in ``run_dir``, in store order (or in the order
    of ``run_ids``), optionally only those ``where(row)`` accepts. Runs that failed or have no
    artifact are left out; a named run that is missing or unfinished is an error naming it;
    so is, with ``algorithm``, a sweep of another algorithm (before any policy is read)."""
    check_device(device)
    run_dir = Path(run_dir)
    plan = load_plan(run_dir)
    if algorithm is not None:
        _check_algorithm(plan.algorithm.name, algorithm, str(run_dir))
    with open_store(run_dir) as store:
        finished = {r.run_id: r for r in store.runs("finished") if r.artifact}
        order = [r.run_id for r in store.runs("finished") if r.artifact]
    if run_ids is not None:
        unknown = [rid for rid in run_ids if rid not in finished]
        if unknown:
            raise CtxrlError(
                f"{run_dir}: no finished run {unknown[0]!r}; finished runs: "
                f"{', '.join(order[:6])}{' ...' if len(order) > 6 else ''}"
            )
        order = list(run_ids)
    rows = [finished[rid] for rid in order if where is None or where(finished[rid])]
    if not rows:
        raise CtxrlError(f"{run_dir}: no finished run matches")
    params = algorithm_params(plan.config, plan.algorithm)
    made = plan.algorithm.factory(params, device=device, env=plan.env)
    policies = []
    for row in rows:
        assert row.artifact is not None
        policies.append(made.load(run_dir / row.artifact, plan.env))
    contexts = [row.context.as_dict() for row in rows]
    return LoadedPolicies(policies, rows, contexts, plan.env, made, plan)


def check_transferable(source: LoadedPolicies, env: EnvSpec, algorithm: str) -> None:
    """Raise a :class:`~ctxrl.errors.CtxrlError` when ``source``'s policies cannot act in
    ``env`` with ``algorithm``: another algorithm, another action-space kind, or another
    observation size (checked on the gymnasium envs at their default contexts)."""
    _check_algorithm(source.plan.algorithm.name, algorithm, "its sweep")
    if source.env.action_space != env.action_space:
        raise CtxrlError(
            f"{source.env.name} has {source.env.action_space} actions and {env.name} has "
            f"{env.action_space} actions: its policies cannot act there"
        )
    shapes = [_spaces(spec) for spec in (source.env, env)]
    if shapes[0] != shapes[1]:
        raise CtxrlError(
            f"{source.env.name} (observations {shapes[0][0]}, actions {shapes[0][1]}) and "
            f"{env.name} (observations {shapes[1][0]}, actions {shapes[1][1]}) have different "
            "spaces: its policies cannot act there"
        )


def _check_algorithm(trained: str, wanted: str, where: str) -> None:
    if trained != wanted:
        raise CtxrlError(
            f"{where} holds {trained!r} agents, not {wanted!r} ones: their networks and "
            "parameters are another algorithm's"
        )


def _spaces(env: EnvSpec) -> tuple[Any, Any]:
    made = env.make(None)
    try:
        action = made.action_space
        actions: Mapping[str, Any] | Any = getattr(action, "n", None) or tuple(action.shape)
        return tuple(made.observation_space.shape), actions
    finally:
        made.close()

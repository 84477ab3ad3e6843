"""Training a DQN transferability study: one batched program per (variant, arm), each agent
warm-started from its source as its arm says, stored as it finishes so that a killed study
resumes. :mod:`ctxrl_plugins.transfer.dqn_transferability` is the study as a whole."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from ctxrl.artifacts import remove_artifact, write_text_atomic
from ctxrl.errors import CtxrlError
from ctxrl.registry import CurveOptions, Registry
from ctxrl_plugins.transfer.dqn_transferability_plan import (
    STUDY,
    VARIANT_PARAMS,
    Arm,
    Pair,
    StudyPlan,
)
from ctxrl_plugins.transfer.studies import DamagedResult, load_result, open_run_dir, set_aside

TRANSFER_SEED_OFFSET = 1_000_003
"""added to a transfer agent's seed, so its new head and exploration differ from its source's"""


def _reinit_and_freeze(arm: Arm, dueling: bool) -> dict[str, Any]:
    """``train_many``'s layer surgery for an arm: the Q head(s) re-initialised (fine-tune,
    only-head), the hidden layers frozen (only-head)."""
    heads = ["q.head", "q.value"] if dueling else ["q.head"]
    if arm == "fine-tune":
        return {"reinit": heads}
    if arm == "only-head":
        return {"reinit": heads, "freeze": ["q.[0-9]*"]}
    return {}


@dataclass
class ArmResult:
    """One arm of one variant: learning curves and final weights of all its agents.

    Attributes:
        steps: the step grid ``(T,)``.
        curves: ``(agents, T)`` mean deterministic return on the agent's target context.
        params: the trained agent-stacked parameters ``(agents, ...)``.
        keys: per agent, ``(pair or context index, seed)``.
    """

    steps: np.ndarray
    curves: np.ndarray
    params: dict[str, Any]
    keys: list[tuple[Pair | int, int]]


class StudyRunner:
    """Runs (or resumes) a study in its run directory: one batched program per (variant, arm),
    stored as it finishes.

    ``checkpoint_every``: env steps per agent between the checkpoints of an arm in training
    (default: the algorithm's, 10,000 for DQN). A checkpoint holds every agent's replay
    buffer (about 11 GB for 80 Catch agents), so a long study may save less often; it does not
    change the results, only how much a killed arm repeats."""

    def __init__(
        self,
        plan: StudyPlan,
        registry: Registry,
        *,
        progress: Callable[[str, int, int], None] | None = None,
        checkpoint_every: int | None = None,
    ) -> None:
        if checkpoint_every is not None and checkpoint_every < 1:
            raise CtxrlError(f"checkpoint_every must be >= 1 env step, got {checkpoint_every}")
        self.plan, self.registry, self.progress = plan, registry, progress
        self.checkpoint_every = checkpoint_every
        self.run_dir = plan.run_dir
        self._clock: tuple[str, float] | None = None  # (variant/arm, time of the last save)

    # -------------------------------------------------------------------------- timing
    @property
    def timing_file(self) -> Path:
        """``timing.json``: wall-clock seconds spent training each ``variant/arm``, summed
        over every process that worked on it (saved at least every 30 s, so a killed and
        resumed study loses at most that much of its time)."""
        return self.run_dir / "timing.json"

    def timing(self) -> dict[str, float]:
        """Seconds per ``variant/arm`` so far (empty before any training)."""
        if not self.timing_file.is_file():
            return {}
        try:
            stored = json.loads(self.timing_file.read_text())
            return {str(k): float(v) for k, v in stored.items()}
        except (ValueError, AttributeError, TypeError):
            # not written by this study as a whole (it is replaced atomically): the times are
            # a record, not results; start them again rather than refuse to resume
            return {}

    def _tick(self, label: str, force: bool = False) -> None:
        """Add the time since the last tick to ``label``'s total; saved every 30 s."""
        now = time.perf_counter()
        if self._clock is None or self._clock[0] != label:
            self._clock = (label, now)
            return
        if not force and now - self._clock[1] < 30.0:
            return
        totals = self.timing()
        totals[label] = totals.get(label, 0.0) + now - self._clock[1]
        write_text_atomic(self.timing_file, json.dumps(totals, indent=1, sort_keys=True))
        self._clock = (label, now)

    # -------------------------------------------------------------------- run directory
    def prepare(self) -> None:
        """Create (or reopen) the run directory; refuse one that holds another study."""
        open_run_dir(self.run_dir, STUDY, self.plan.config, self.plan.resolved)

    def _arm_file(self, variant: str, arm: str) -> Path:
        return self.run_dir / "arms" / variant / f"{arm}.safetensors"

    def load_arm(self, variant: str, arm: str) -> ArmResult | None:
        """A stored arm, or None when it has not finished."""
        loaded = load_result(self._arm_file(variant, arm).with_suffix(""), "ctxrl transfer dqn")
        if loaded is None:
            return None
        tensors, meta = loaded
        keys: list[tuple[Pair | int, int]] = [
            (Pair(*key) if isinstance(key, list) else int(key), int(seed))
            for key, seed in meta["keys"]
        ]
        params = {
            k.removeprefix("params."): v for k, v in tensors.items() if k.startswith("params.")
        }
        return ArmResult(tensors["steps"].numpy(), tensors["curves"].double().numpy(), params, keys)

    def _store_arm(self, variant: str, arm: str, result: ArmResult) -> None:
        import torch

        from ctxrl.artifacts import save_artifact

        path = self._arm_file(variant, arm)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "steps": torch.as_tensor(result.steps, dtype=torch.int64),
            "curves": torch.as_tensor(result.curves, dtype=torch.float64),
        }
        tensors.update(
            {f"params.{k}": v.detach().cpu().contiguous() for k, v in result.params.items()}
        )
        keys = [
            ([key.source, key.target] if isinstance(key, Pair) else key, seed)
            for key, seed in result.keys
        ]
        save_artifact(path.with_suffix(""), tensors, {"keys": keys, "variant": variant, "arm": arm})

    # ------------------------------------------------------------------------ training
    def run(self) -> dict[str, dict[str, ArmResult]]:
        """Every (variant, arm), training what is not stored yet; returns them all."""
        self.prepare()
        results: dict[str, dict[str, ArmResult]] = {}
        for variant in self.plan.config.variants:
            results[variant] = {}
            for arm in self.plan.config.arms:
                try:
                    stored = self.load_arm(variant, arm)
                except DamagedResult as damaged:  # trained again
                    set_aside(damaged)
                    stored = None
                if stored is None:
                    self._tick(f"{variant}/{arm}")
                    stored = self._train_arm(variant, arm, results[variant])
                    self._store_arm(variant, arm, stored)
                    # only once the arm is stored: a kill before that resumes its programs
                    # from their final state (they retrained from the start)
                    remove_artifact(self.run_dir / "checkpoints" / f"{variant}-{arm}", derived=True)
                    self._tick(f"{variant}/{arm}", force=True)
                results[variant][arm] = stored
        return results

    def _train_arm(self, variant: str, arm: Arm, done: Mapping[str, ArmResult]) -> ArmResult:
        plan, config = self.plan, self.plan.config
        algorithm = self.registry.algorithm("batched-dqn").factory(
            {**plan.params, **VARIANT_PARAMS[variant]}, device=config.device, env=plan.env
        )
        keys: list[tuple[Pair | int, int]]
        options: dict[str, Any] = {}
        if arm == "scratch":
            keys = [(c, seed) for c in range(len(plan.contexts)) for seed in config.seeds]
            contexts = [plan.contexts[c] for c, _ in keys]  # type: ignore[index]
            seeds = [seed for _, seed in keys]
        else:
            keys = [(pair, seed) for pair in plan.pairs for seed in config.seeds]
            contexts = [plan.contexts[pair.target] for pair, _ in keys]  # type: ignore[union-attr]
            seeds = [seed + TRANSFER_SEED_OFFSET for _, seed in keys]
            options["init"] = self._initial_params(arm, keys, done)
            dueling = bool({**plan.params, **VARIANT_PARAMS[variant]}.get("dueling", False))
            options.update(_reinit_and_freeze(arm, dueling))
        # one batched program per target env family (one twin holds one family)
        target_envs = [plan.envs[key if isinstance(key, int) else key.target] for key, _ in keys]
        curves: list[np.ndarray] = [np.empty(0)] * len(keys)
        params: dict[str, list[Any]] = {}
        steps = np.empty(0, dtype=np.int64)
        order: list[int] = []
        for family in dict.fromkeys(e.name for e in target_envs):
            rows = [i for i, e in enumerate(target_envs) if e.name == family]
            env = target_envs[rows[0]]
            several = len({e.name for e in target_envs}) > 1
            label = f"{variant} {arm}" + (f" ({family})" if several else "")
            checkpoint = self.run_dir / "checkpoints" / f"{variant}-{arm}-{family}"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            group_options = dict(options)
            if "init" in options:
                group_options["init"] = {k: v[rows] for k, v in options["init"].items()}
            policies = cast(Any, algorithm).train_many(
                env,
                [contexts[i] for i in rows],
                [seeds[i] for i in rows],
                total_steps=config.train_steps,
                checkpoint=checkpoint,
                checkpoint_every=self.checkpoint_every,
                progress=lambda d, t, label=label: self._progress(variant, arm, label, d, t),
                curves=CurveOptions(config.curve_every, config.curve_episodes),
                **group_options,
            )
            log = policies.log
            steps = np.asarray(log.curve_steps, dtype=np.int64)
            for row, curve in zip(rows, log.curve().T, strict=True):
                curves[row] = curve
            for name, value in policies.params.items():
                params.setdefault(name, []).append(value.detach().cpu())
            order += rows
        import torch

        inverse = torch.as_tensor(np.argsort(order))
        return ArmResult(
            steps,
            np.stack(curves).astype(np.float64),  # (agents, T)
            {k: torch.cat(v)[inverse] for k, v in params.items()},
            keys,
        )

    def _progress(self, variant: str, arm: str, label: str, done: int, total: int) -> None:
        self._tick(f"{variant}/{arm}")
        if self.progress is not None:
            self.progress(label, done, total)

    def _initial_params(
        self, arm: Arm, keys: Sequence[tuple[Pair | int, int]], done: Mapping[str, ArmResult]
    ) -> dict[str, Any]:
        """Per transfer agent, the weights it starts from ``(agents, ...)``: its source's
        scratch agent (same seed) or its agent in ``sources_from``, or for the hybrid arm the
        fine-tuned agent's hidden layers with the only-head agent's head."""

        def index_of(result: ArmResult) -> dict[tuple[Any, int], int]:
            return {
                (k if isinstance(k, int) else (k.source, k.target), s): i
                for i, (k, s) in enumerate(result.keys)
            }

        sources = self.plan.sources
        if arm != "hybrid" and sources is not None:
            rows = [sources.rows[(pair.source, seed)] for pair, seed in keys]  # type: ignore[union-attr]
            return {k: v[rows] for k, v in sources.params.items()}
        scratch = done["scratch"]
        if arm != "hybrid":
            where = index_of(scratch)
            rows = [where[(pair.source, seed)] for pair, seed in keys]  # type: ignore[union-attr]
            return {k: v[rows] for k, v in scratch.params.items()}
        fine, head = done["fine-tune"], done["only-head"]
        fine_at, head_at = index_of(fine), index_of(head)
        rows_fine = [fine_at[((p.source, p.target), s)] for p, s in keys]  # type: ignore[union-attr]
        rows_head = [head_at[((p.source, p.target), s)] for p, s in keys]  # type: ignore[union-attr]
        out = {}
        for name, value in fine.params.items():
            from_head = name.startswith(("q.head.", "q.value."))
            source = head.params[name] if from_head else value
            out[name] = source[rows_head if from_head else rows_fine]
        return out

"""What a batched training records besides the weights: learning curves, diagnostics, context
switches and plasticity metrics (:class:`TrainingLog`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass
class TrainingLog:
    """What a training recorded besides the weights.

    Attributes:
        curve_steps: env steps per agent at each learning-curve point ``(points,)``.
        curve_returns: deterministic evaluation returns at each point ``(points, N, Q, E)``
            (Q contexts: the agent's own context, or the given evaluation contexts).
        curve_contexts: the Q evaluation contexts (None: each agent's own context).
        diagnostic_steps: env steps per agent at each diagnostics record ``(records,)``.
        diagnostics: name -> ``(records, N)``: per-agent means over the updates since the
            previous record (losses, approx KL, clip fraction, explained variance, TD error,
            gradient norm, entropy, and what interventions report); NaN in a record the name
            has no value for (:attr:`diagnostic_missing`).
        switches: the context switches a schedule made: ``(env step per agent, the agents that
            switched then)``, in order; cut the curves there for per-switch metrics.
        plasticity_steps: env steps per agent at each plasticity record ``(records,)`` (the
            ``plasticity.every`` grid and every switch step, just before the switch).
        plasticity: ``{metric}.{layer}`` -> ``(records, N)`` (see
            :func:`ctxrl_plugins.training.plasticity.layer_metrics`).
    """

    curve_steps: list[int] = field(default_factory=list)
    curve_returns: list[np.ndarray] = field(default_factory=list)
    curve_contexts: list[dict[str, float]] | None = None
    diagnostic_steps: list[int] = field(default_factory=list)
    diagnostics: dict[str, list[np.ndarray]] = field(default_factory=dict)
    switches: list[tuple[int, list[int]]] = field(default_factory=list)
    plasticity_steps: list[int] = field(default_factory=list)
    plasticity: dict[str, list[np.ndarray]] = field(default_factory=dict)
    diagnostic_missing: dict[str, list[int]] = field(default_factory=dict)
    """name -> the records (indices into :attr:`diagnostic_steps`) it has no value in: DQN has
    no loss before learning starts while an intervention reports already. Absent names have
    a value in every record."""

    def add_diagnostics(self, step: int, values: Mapping[str, np.ndarray], agents: int) -> None:
        """One diagnostics record at env step ``step``: ``values`` name -> ``(N,)`` for ``N =
        agents``. Every name keeps one entry per record: a name reported for the first time
        gets NaN in the records before, one not reported now gets NaN here, both listed in
        :attr:`diagnostic_missing`."""
        record = len(self.diagnostic_steps)
        self.diagnostic_steps.append(step)
        nothing = np.full(agents, np.nan, dtype=np.float32)
        for name, value in values.items():
            if name not in self.diagnostics:
                self.diagnostics[name] = [nothing] * record
                if record:
                    self.diagnostic_missing[name] = list(range(record))
            self.diagnostics[name].append(value)
        for name, series in self.diagnostics.items():
            if name not in values:
                series.append(nothing)
                self.diagnostic_missing.setdefault(name, []).append(record)

    def diagnostic_records(self, name: str) -> list[int]:
        """The records (indices into :attr:`diagnostic_steps`) that hold a value of ``name``."""
        missing = set(self.diagnostic_missing.get(name, ()))
        return [i for i in range(len(self.diagnostic_steps)) if i not in missing]

    def select(self, indices: Sequence[int]) -> TrainingLog:
        """The log of agents ``indices`` only (switches renumbered, those of other agents
        dropped)."""
        index = list(indices)
        position = {agent: new for new, agent in enumerate(index)}
        switches = [
            (step, [position[a] for a in agents if a in position]) for step, agents in self.switches
        ]
        return TrainingLog(
            list(self.curve_steps),
            [r[index] for r in self.curve_returns],
            self.curve_contexts,
            list(self.diagnostic_steps),
            {k: [v[index] for v in values] for k, values in self.diagnostics.items()},
            [(step, agents) for step, agents in switches if agents],
            list(self.plasticity_steps),
            {k: [v[index] for v in values] for k, values in self.plasticity.items()},
            {k: list(records) for k, records in self.diagnostic_missing.items()},
        )

    def switch_steps(self, agent: int) -> list[int]:
        """The env steps at which agent ``agent``'s context switched (where its curve is cut
        into per-context segments)."""
        return [step for step, agents in self.switches if agent in agents]

    def curve(self) -> np.ndarray:
        """Mean return per point and agent ``(points, N)`` (over contexts and episodes)."""
        if not self.curve_returns:
            return np.zeros((0, 0))
        return np.stack([r.mean(axis=(1, 2)) for r in self.curve_returns])

    def tensors(self) -> dict[str, Tensor]:
        """The log as tensors (for checkpoints and safetensors exports)."""
        out: dict[str, Tensor] = {}
        if self.curve_steps:
            out["curve.steps"] = torch.tensor(self.curve_steps, dtype=torch.int64)
            out["curve.returns"] = torch.from_numpy(np.stack(self.curve_returns))
        if self.diagnostic_steps:
            out["diagnostics.steps"] = torch.tensor(self.diagnostic_steps, dtype=torch.int64)
            for name, values in self.diagnostics.items():
                out[f"diagnostics.{name}"] = torch.from_numpy(np.stack(values))
            for name, records in self.diagnostic_missing.items():
                out[f"diagnostic_missing.{name}"] = torch.tensor(records, dtype=torch.int64)
        if self.switches:
            out["switches.steps"] = torch.tensor([s for s, _ in self.switches], dtype=torch.int64)
            # (switches, N) as 0/1: the agents that switched at each step
            count = 1 + max(a for _, agents in self.switches for a in agents)
            agents = torch.zeros(len(self.switches), count, dtype=torch.uint8)
            for row, (_, switched) in enumerate(self.switches):
                agents[row, switched] = 1
            out["switches.agents"] = agents
        if self.plasticity_steps:
            out["plasticity.steps"] = torch.tensor(self.plasticity_steps, dtype=torch.int64)
            for name, values in self.plasticity.items():
                out[f"plasticity.{name}"] = torch.from_numpy(np.stack(values))
        return out

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, Tensor], curve_contexts: list[dict[str, float]] | None = None
    ) -> TrainingLog:
        log = cls(curve_contexts=curve_contexts)
        if "curve.steps" in tensors:
            log.curve_steps = [int(s) for s in tensors["curve.steps"]]
            log.curve_returns = list(tensors["curve.returns"].cpu().numpy())
        if "diagnostics.steps" in tensors:
            log.diagnostic_steps = [int(s) for s in tensors["diagnostics.steps"]]
            for key, value in tensors.items():
                if key.startswith("diagnostics.") and key != "diagnostics.steps":
                    log.diagnostics[key.removeprefix("diagnostics.")] = list(value.cpu().numpy())
                elif key.startswith("diagnostic_missing."):
                    name = key.removeprefix("diagnostic_missing.")
                    log.diagnostic_missing[name] = [int(i) for i in value]
        if "switches.steps" in tensors:
            rows = tensors["switches.agents"].cpu()
            log.switches = [
                (int(step), [int(a) for a in torch.nonzero(row).flatten()])
                for step, row in zip(tensors["switches.steps"].cpu(), rows, strict=True)
            ]
        if "plasticity.steps" in tensors:
            log.plasticity_steps = [int(s) for s in tensors["plasticity.steps"]]
            for key, value in tensors.items():
                if key.startswith("plasticity.") and key != "plasticity.steps":
                    log.plasticity[key.removeprefix("plasticity.")] = list(value.cpu().numpy())
        return log

"""The sweep file's schema: every field of a sweep config, its default and its check.

A sweep YAML file (``ctxrl sweep CONFIG``, the embedded default in ``ctxrl/defaults/``) is
validated into a :class:`SweepConfig` (pydantic, unknown fields refused): the env and its varied
features (:class:`AxisConfig`: a range with a count and scale, or explicit values), the seeds,
the algorithm with its preset, hyperparameters and interventions, the transfer method, the
strategy and the compared ones, learning curves and the executor. Loading a file, ``--set``
overrides and the checks against the loaded plugins: :mod:`ctxrl.config`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ctxrl.options import (
    SEED_LIMIT,
    is_device_name,
    refuse_bool,
)

WholeNumber = Annotated[int, BeforeValidator(refuse_bool)]
"""A count in a config: YAML's ``true`` is refused (a lax ``int`` takes it as 1)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


MAX_CONTEXTS = 100_000
"""The most contexts a sweep's grid may have (its matrix has N x N entries: 10^10 here); a
larger grid is refused before it is built (a billion points ran the machine out of memory
in a dry run)."""


class AxisConfig(_Strict):
    """How one varied feature is gridded."""

    num: WholeNumber | None = Field(
        default=None, ge=1, le=MAX_CONTEXTS, description="number of grid points"
    )
    low: float | None = Field(default=None, description="first value (feature's lower bound)")
    high: float | None = Field(default=None, description="last value (feature's upper bound)")
    scale: Literal["linear", "log"] | None = Field(default=None, description="grid spacing")
    values: list[float] | None = Field(default=None, description="explicit values instead")

    @field_validator("values")
    @classmethod
    def _distinct_values(cls, values: list[float] | None) -> list[float] | None:
        # a repeated value would collapse into one context of the grid
        repeated = _repeated(values or [])
        if repeated:
            raise ValueError(f"{repeated[0]!r} is listed twice")
        return values

    @model_validator(mode="after")
    def _values_alone(self) -> AxisConfig:
        # num/low/high/scale would be ignored next to explicit values: say so, not silently
        if self.values is not None:
            given = [n for n in ("num", "low", "high", "scale") if getattr(self, n) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} ignored when "
                    "values are given; give values alone, or num/low/high/scale"
                )
        if self.num == 1 and self.high is not None and self.high != self.low:
            # one point is low (the feature's lower bound without it): high would be ignored
            raise ValueError(
                f"num: 1 is one point, at low; high {self.high} would be ignored: give "
                "values: [v] (or num: 1 and low: v), or num >= 2"
            )
        return self


def _repeated(items: Sequence[Any]) -> list[Any]:
    """The items listed more than once, in the order of their second appearance."""
    seen: set[Any] = set()
    repeated = []
    for item in items:
        if item in seen and item not in repeated:
            repeated.append(item)
        seen.add(item)
    return repeated


class InterventionEntry(_Strict):
    """``{name, options}``, or the name alone (``interventions: [redo, l2]``), as a
    plasticity study's arms take it."""

    name: str = Field(description="intervention registry name, see `ctxrl plugins`")
    options: dict[str, Any] = Field(default_factory=dict, description="the factory's options")

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class AlgorithmConfig(_Strict):
    name: str = Field(description="algorithm registry name, see `ctxrl plugins`")
    preset: str | None = Field(default=None, description="named hyperparameter preset")
    params: dict[str, Any] = Field(default_factory=dict, description="hyperparameter overrides")
    interventions: list[InterventionEntry] = Field(
        default_factory=list,
        description="training-time modifiers applied in order (batched algorithms)",
    )


class TransferConfig(_Strict):
    name: str = Field(default="zero-shot", description="transfer-method registry name")
    options: dict[str, Any] = Field(default_factory=dict, description="the factory's options")


class CurvesConfig(_Strict):
    every: WholeNumber = Field(gt=0, description="env steps per agent between evaluations")
    episodes: WholeNumber = Field(
        default=5, ge=1, description="deterministic episodes per evaluation"
    )


class StrategyConfig(_Strict):
    name: str = Field(default="equidistant", description="strategy registry name")
    budget: WholeNumber | None = Field(
        default=None, ge=1, description="K, sources to train (mode select)"
    )
    options: dict[str, Any] = Field(default_factory=dict)
    batch_size: WholeNumber = Field(default=1, ge=1, description="q, sources proposed per step")


class ExecutorConfig(_Strict):
    name: str = Field(default="local", description="executor registry name")
    workers: WholeNumber = Field(default=2, ge=1, description="parallel jobs")
    timeout_s: float | None = Field(default=None, gt=0, description="per-job wall-clock limit")
    shards: WholeNumber = Field(
        default=1,
        ge=1,
        description="batched algorithms: split each group of agents into this many executor "
        "jobs, each one batched program (1: the group trains in the sweep's own process)",
    )
    options: dict[str, Any] = Field(default_factory=dict)


class SweepConfig(_Strict):
    """A contextual sweep, as written in YAML."""

    env: str = Field(description="environment registry name, see `ctxrl envs`")
    features: dict[str, AxisConfig] = Field(description="varied features -> grid")
    context: dict[str, float] = Field(
        default_factory=dict, description="fixed values of non-varied features"
    )
    env_options: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword options of the env's factories, the gymnasium env's and the torch "
        "twin's (e.g. num_seconds for traffic; visible: [masscart] shows a feature to the agent)",
    )
    algorithm: AlgorithmConfig
    seeds: list[Annotated[int, Field(ge=0, lt=SEED_LIMIT, strict=True)]] = Field(
        default_factory=lambda: [0], min_length=1
    )
    train_steps: WholeNumber = Field(
        gt=0,
        description="environment steps per trained model (the batched trainers train whole "
        "iterations, rounded down, at least one; SB3 finishes the rollout it started, rounding "
        "up)",
    )
    eval_episodes: WholeNumber = Field(
        default=10, ge=1, description="episodes per (policy, target)"
    )
    mode: Literal["full", "select", "multitask"] = Field(
        default="full",
        description="full: every context is a source; select: the strategy picks; "
        "multitask: only the multi-task baseline",
    )
    multitask: bool = Field(
        default=False,
        description="also train the multi-task baseline: one policy per seed on the uniform "
        "mixture of all contexts (batched algorithms)",
    )
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    transfer: TransferConfig = Field(
        default_factory=TransferConfig,
        description="how source policies become target policies (zero-shot by default)",
    )
    curves: CurvesConfig | None = Field(
        default=None,
        description="learning curves: each source evaluated on its own context at step 0, "
        "at the first training iteration past each multiple of `every` env steps, and at the "
        "end (batched algorithms); `fine-tune` records its own training's curves too, each pair "
        "on its target (in its transfer record)",
    )
    compare: list[str] = Field(
        default_factory=lambda: ["random", "equidistant", "greedy", "sequential-oracle"],
        description="strategies replayed offline on a full matrix for the report",
    )
    return_bounds: tuple[float, float] | None = Field(
        default=None,
        description="episode returns mapped to 0 and 1 when normalising performance, in place "
        "of the env's (`ctxrl envs`): wider where trained policies score beyond them and are "
        "clipped alike",
    )
    device: str = Field(default="cpu", description="cpu, cuda, cuda:N or auto")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    output_dir: Path = Field(default=Path("runs"), description="parent of the run directory")

    @field_validator("output_dir")
    @classmethod
    def _home_expanded(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("features")
    @classmethod
    def _some_features(cls, value: dict[str, AxisConfig]) -> dict[str, AxisConfig]:
        if not value:
            raise ValueError("name at least one varied feature")
        return value

    @field_validator("return_bounds")
    @classmethod
    def _ordered_bounds(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (
            math.isfinite(value[0]) and math.isfinite(value[1]) and value[0] < value[1]
        ):
            raise ValueError(f"need finite lower < upper, got {list(value)}")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        # a repeated seed would be trained twice and stored once
        repeated = _repeated(value)
        if repeated:
            raise ValueError(f"seed {repeated[0]!r} is listed twice")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if is_device_name(value):
            return value
        raise ValueError(f"device {value!r} is not cpu, cuda, cuda:N or auto")

    def plan_data(self) -> dict[str, Any]:
        """What determines the trained runs, hashed into the run directory's name: everything
        except where and how the jobs run (``output_dir``, ``executor``), the strategies the
        report replays (``compare``) and, outside ``mode: select``, the strategy (it chooses
        the trained sources only there). The run directory's plan.yaml records the rest."""
        exclude = {"output_dir", "executor", "compare"}
        if self.mode != "select":
            exclude.add("strategy")
        if self.return_bounds is None or not self.normalises_in_training():
            exclude.add("return_bounds")  # the report's alone: a rerun reports anew
        data = self.model_dump(mode="json", exclude=exclude)
        # fields added later leave the hash of a plan that does not use them unchanged, so
        # run directories of earlier sweeps still resume
        if not data["algorithm"]["interventions"]:
            del data["algorithm"]["interventions"]
        if data["transfer"] == TransferConfig().model_dump(mode="json"):
            del data["transfer"]
        if data["curves"] is None:
            del data["curves"]
        visible = data["env_options"].get("visible")
        if isinstance(visible, str):  # one name, as the envs read it: a list of one
            data["env_options"] = {**data["env_options"], "visible": [visible]}
        return data

    def normalises_in_training(self) -> bool:
        """Whether normalised returns decide what trains: ``mode: select`` (the strategy
        chooses from them) or a transfer method other than ``zero-shot`` and ``fine-tune``
        (``distill`` weighs its teachers by them; a third-party method may)."""
        return self.mode == "select" or self.transfer.name not in ("zero-shot", "fine-tune")

    def plan_hash(self) -> str:
        text = json.dumps(self.plan_data(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

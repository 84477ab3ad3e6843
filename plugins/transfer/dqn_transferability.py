"""DQN transferability studies (Sabatelli and Geurts 2021, arXiv 2110.02639), for any env family.

A study takes a list of contexts (Catch v0-v3, CartPole pole lengths, ...), trains batched DQN
agents from scratch on each (these are both the sources and the scratch baselines), then, for
every (source, target) pair and transfer arm, trains target agents warm-started from the source
agents and compares their learning curves with scratch on the target:

- ``scratch``: no transfer (the baseline every other arm is measured against);
- ``fine-tune``: all layers copied, the Q head(s) re-initialised, everything trained;
- ``only-head``: hidden layers copied and frozen, a new head trained;
- ``hybrid``: hidden layers from the fine-tuned agent and the head from the only-head agent,
  then everything trained (it starts where those two arms ended: its target-env steps are the
  arm's own budget on top of theirs, which the summary states);
- ``keep-head``: every layer copied, nothing re-initialised (the zero-shot policy, trained on).

Every arm of a variant (plain, Double, Dueling DQN) is one batched program over all (pair,
seed) agents, on one step grid; each program checkpoints itself, and finished arms are stored,
so a killed study resumes. Metrics (:mod:`ctxrl.transfer_metrics`): jumpstart, asymptote, AUC,
transfer ratio, the paper's area ratio on returns normalised to [0, 1] by the env's return
bounds, time to threshold, with bootstrap 95 % intervals over seeds and a verdict per pair.
Source training time is not counted (as in the paper): a transfer curve starts at the target's
step 0. ``sources_from`` takes the source agents from an earlier ``ctxrl sweep`` of batched-dqn
instead (the run whose context and seed match each source's); the scratch arm still trains on
every context, as every target's baseline.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import yaml
from pydantic import Field, field_validator

from ctxrl import hookimpl
from ctxrl.config import check_device
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.registry import CurveOptions, EnvSpec, Registry, TransferMethodSpec
from ctxrl.results import load_policies
from ctxrl_plugins.transfer.studies import StrictModel, StudyOnly, open_run_dir, read_study_file

Arm = Literal["scratch", "fine-tune", "only-head", "hybrid", "keep-head"]
ARMS: tuple[Arm, ...] = ("scratch", "fine-tune", "only-head", "hybrid", "keep-head")
Variant = Literal["dqn", "double", "dueling"]
_DEFAULT_VARIANTS: tuple[Variant, ...] = ("dqn",)
VARIANT_PARAMS: dict[str, dict[str, bool]] = {
    "dqn": {},
    "double": {"double": True},
    "dueling": {"dueling": True},
}
STUDY = "dqn-transferability"
STORE_FILE = "store.sqlite"


# ------------------------------------------------------------------------------ config
class ContextEntry(StrictModel):
    name: str = Field(description="label of the context in tables (e.g. v0)")
    context: dict[str, float] = Field(default_factory=dict, description="feature -> value")
    env: str | None = Field(
        default=None,
        description="another env family for this entry (same observation and action spaces); "
        "default: the study's env",
    )


class StudyConfig(StrictModel):
    """A DQN transferability study, as written in YAML."""

    env: str = Field(description="environment registry name")
    contexts: list[ContextEntry] = Field(min_length=1, description="sources = targets")
    pairs: Literal["all", "self", "cross"] = Field(
        default="all", description="which (source, target) pairs: all, self only, cross only"
    )
    algorithm: dict[str, Any] = Field(
        default_factory=dict, description="batched-dqn hyperparameters (params)"
    )
    preset: str | None = Field(default=None, description="batched-dqn preset")
    variants: list[Variant] = Field(default_factory=lambda: list(_DEFAULT_VARIANTS), min_length=1)
    arms: list[Arm] = Field(default_factory=lambda: list(ARMS))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    train_steps: int = Field(gt=0, description="env steps per agent, every arm (same grid)")
    curve_every: int = Field(gt=0, description="env steps between learning-curve points")
    curve_episodes: int = Field(default=10, ge=1, description="episodes per curve point")
    threshold: float | None = Field(
        default=None, description="normalised return for time to threshold (default 0.9)"
    )
    sources_from: Path | None = Field(
        default=None,
        description="a batched-dqn sweep's run directory whose agents are the sources "
        "(matched by context and seed); default: the study's own scratch agents",
    )
    device: str = Field(default="cpu")
    output_dir: Path = Field(default=Path("runs"))

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds {value} repeat a seed")
        return value

    @field_validator("arms")
    @classmethod
    def _arms(cls, value: list[Arm]) -> list[Arm]:
        if "scratch" not in value:
            value = ["scratch", *value]
        if "hybrid" in value and not {"fine-tune", "only-head"} <= set(value):
            raise ValueError("the hybrid arm needs the fine-tune and only-head arms")
        return list(dict.fromkeys(value))

    def plan_hash(self) -> str:
        data = self.model_dump(mode="json", exclude={"output_dir", "device"})
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study file; errors name the field and the file."""
    return read_study_file(path, StudyConfig)


@dataclass(frozen=True)
class Pair:
    source: int
    target: int


@dataclass
class SourceAgents:
    """Source agents read from a sweep's run directory (``sources_from``).

    Attributes:
        run_dir: the sweep's run directory.
        params: its agents' parameters stacked over runs, ``(runs, ...)`` each.
        rows: (context index in the study, seed) -> the row of ``params`` holding that agent.
    """

    run_dir: Path
    params: dict[str, Any]
    rows: dict[tuple[int, int], int]


@dataclass
class StudyPlan:
    """A validated study: the env, its contexts and the pairs."""

    config: StudyConfig
    env: EnvSpec
    contexts: list[dict[str, float]]
    names: list[str]
    pairs: list[Pair]
    params: dict[str, Any]
    envs: list[EnvSpec]
    """each context's env family (the study's env unless an entry names another)"""
    sources: SourceAgents | None = None
    """the source agents when ``sources_from`` is given (else the scratch arm's)"""

    @property
    def run_dir(self) -> Path:
        return self.config.output_dir / f"dqn-transfer-{self.env.name}-{self.config.plan_hash()}"


def resolve_study(
    config: StudyConfig, registry: Registry, *, load_sources: bool = True
) -> StudyPlan:
    """Check names, contexts and hyperparameters before anything trains; with
    ``load_sources`` also read and check the agents of ``sources_from`` (a report of the
    finished arms does not need them)."""
    env = _dqn_env(registry, config.env, "env")
    contexts, envs = [], []
    for index, entry in enumerate(config.contexts):
        entry_env = (
            env if entry.env is None else _dqn_env(registry, entry.env, f"contexts[{index}].env")
        )
        try:
            contexts.append(entry_env.context_space.validate(entry.context).as_dict())
        except CtxrlError as exc:
            raise ConfigError(f"contexts[{index}].context: {exc}") from None
        envs.append(entry_env)
    names = [entry.name for entry in config.contexts]
    if len(set(names)) != len(names):
        raise ConfigError(f"contexts: names {names} repeat a name")
    algorithm = registry.algorithm("batched-dqn")
    params: dict[str, Any] = {}
    if config.preset is not None:
        if config.preset not in algorithm.presets:
            raise ConfigError(
                f"preset: batched-dqn has no preset {config.preset!r}; available: "
                f"{', '.join(sorted(algorithm.presets))}"
            )
        params.update(algorithm.presets[config.preset])
    params.update(config.algorithm)
    for variant in config.variants:
        try:
            algorithm.factory({**params, **VARIANT_PARAMS[variant]}, device=config.device)
        except CtxrlError as exc:
            raise ConfigError(f"algorithm: {exc}") from None
    n = len(contexts)
    pairs = [
        Pair(s, t)
        for s in range(n)
        for t in range(n)
        if config.pairs == "all" or (config.pairs == "self") == (s == t)
    ]
    if not pairs:
        raise ConfigError(f"pairs: {config.pairs!r} leaves no pair among {n} contexts")
    _check_spaces(config, envs, names, pairs)
    sources = (
        _sweep_sources(config, registry, contexts, envs, names, pairs, params)
        if load_sources
        else None
    )
    return StudyPlan(config, env, contexts, names, pairs, params, envs, sources)


def _dqn_env(registry: Registry, name: str, field: str) -> EnvSpec:
    try:
        env = registry.env(name)
    except CtxrlError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    if env.action_space != "discrete":
        raise ConfigError(f"{field}: DQN needs discrete actions; {env.name!r} is continuous")
    if env.make_batched is None:
        raise ConfigError(f"{field}: {env.name!r} has no torch twin; batched-dqn needs one")
    return env


def _check_spaces(
    config: StudyConfig, envs: Sequence[EnvSpec], names: Sequence[str], pairs: Sequence[Pair]
) -> None:
    """Every warm-started arm needs a source whose network fits the target: the same
    observation size and number of actions (checked on the twins, which the agents use)."""
    shapes = {}
    for env in {e.name: e for e in envs}.values():
        assert env.make_batched is not None
        twin = env.make_batched(1)
        shapes[env.name] = (int(twin.observation_size), twin.discrete_actions)
    transfer_arms = [arm for arm in config.arms if arm != "scratch"]
    misfits = [p for p in pairs if shapes[envs[p.source].name] != shapes[envs[p.target].name]]
    if misfits and transfer_arms:
        first = misfits[0]
        source, target = envs[first.source], envs[first.target]
        raise ConfigError(
            f"contexts: {len(misfits)} pair(s) cannot transfer, e.g. {names[first.source]} "
            f"({source.name}: observations {shapes[source.name][0]}, actions "
            f"{shapes[source.name][1]}) -> {names[first.target]} ({target.name}: observations "
            f"{shapes[target.name][0]}, actions {shapes[target.name][1]}): the arms "
            f"{', '.join(transfer_arms)} are impossible for them; use envs with the same "
            "spaces, or pairs: self"
        )


def _sweep_sources(
    config: StudyConfig,
    registry: Registry,
    contexts: Sequence[dict[str, float]],
    envs: Sequence[EnvSpec],
    names: Sequence[str],
    pairs: Sequence[Pair],
    params: Mapping[str, Any],
) -> SourceAgents | None:
    """The agents of ``sources_from``, checked before anything trains: a batched-dqn sweep
    whose network is every variant's, with a finished run for each (source context, seed)."""
    run_dir = config.sources_from
    if run_dir is None or not any(arm != "scratch" for arm in config.arms):
        return None
    field = f"sources_from: {run_dir}"
    try:
        loaded = load_policies(run_dir, algorithm="batched-dqn")
    except CtxrlError as exc:
        raise ConfigError(f"sources_from: {exc}") from None
    trained = cast(Any, loaded.algorithm).config
    factory = registry.algorithm("batched-dqn").factory
    for variant in config.variants:
        wanted = cast(Any, factory({**params, **VARIANT_PARAMS[variant]}, device="cpu")).config
        for key in ("hidden", "dueling", "activation"):
            if getattr(trained, key) != getattr(wanted, key):
                raise ConfigError(
                    f"{field}: its agents have {key}={getattr(trained, key)!r}, the "
                    f"{variant!r} variant's network {key}={getattr(wanted, key)!r}"
                )
    source_contexts = sorted({pair.source for pair in pairs})
    rows: dict[tuple[int, int], int] = {}
    for row, (run, context) in enumerate(zip(loaded.runs, loaded.contexts, strict=True)):
        for c in source_contexts:
            if run.env == envs[c].name and _same_context(envs[c], context, contexts[c]):
                rows.setdefault((c, run.seed), row)
    for c in source_contexts:
        for seed in config.seeds:
            if (c, seed) not in rows:
                raise ConfigError(
                    f"{field}: no finished {envs[c].name} run at context {names[c]} "
                    f"({contexts[c]}) with seed {seed}; the sweep holds {len(loaded)} finished "
                    f"run(s) of {loaded.env.name}"
                )
    return SourceAgents(run_dir, loaded.stacked_params(), rows)


def _same_context(env: EnvSpec, stored: Mapping[str, float], wanted: Mapping[str, float]) -> bool:
    """Whether a sweep run's context is the study context ``wanted`` (both completed with the
    env's defaults; values equal to float tolerance)."""
    try:
        full = env.context_space.validate(dict(stored)).as_dict()
    except CtxrlError:
        return False
    return full.keys() == wanted.keys() and all(
        np.isclose(full[k], wanted[k], rtol=1e-9, atol=0.0) for k in full
    )


# ------------------------------------------------------------------------------ training
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


def run_id(variant: str, arm: str, names: Sequence[str], pair: Pair | int, seed: int) -> str:
    """``dqn/fine-tune/v0->v1/s3``; scratch runs are ``dqn/scratch/v1/s3``."""
    if isinstance(pair, Pair):
        return f"{variant}/{arm}/{names[pair.source]}->{names[pair.target]}/s{seed}"
    return f"{variant}/{arm}/{names[pair]}/s{seed}"


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
        return {str(k): float(v) for k, v in json.loads(self.timing_file.read_text()).items()}

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
        self.timing_file.write_text(json.dumps(totals, indent=1, sort_keys=True))
        self._clock = (label, now)

    # -------------------------------------------------------------------- run directory
    def prepare(self) -> None:
        """Create (or reopen) the run directory; refuse one that holds another study."""
        config = self.plan.config
        open_run_dir(self.run_dir, STUDY, config.plan_hash(), config.model_dump(mode="json"))

    def _arm_file(self, variant: str, arm: str) -> Path:
        return self.run_dir / "arms" / variant / f"{arm}.safetensors"

    def load_arm(self, variant: str, arm: str) -> ArmResult | None:
        """A stored arm, or None when it has not finished."""
        from ctxrl.artifacts import load_artifact

        path = self._arm_file(variant, arm)
        if not path.is_file():
            return None
        tensors, meta = load_artifact(path.with_suffix(""))
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
                stored = self.load_arm(variant, arm)
                if stored is None:
                    self._tick(f"{variant}/{arm}")
                    stored = self._train_arm(variant, arm, results[variant])
                    self._store_arm(variant, arm, stored)
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
            for file in checkpoint.parent.glob(f"{checkpoint.name}.*"):
                file.unlink()
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


# ------------------------------------------------------------------------- entry points
def run_study(config: StudyConfig, registry: Registry, *, console: Any = None) -> Path:
    """Run (or resume) a study and write its outputs; returns its run directory."""
    check_device(config.device)
    plan = resolve_study(config, registry)

    def progress(label: str, done: int, total: int) -> None:
        if console is not None and (done == total or done % max(1, total // 10) == 0):
            console.print(f"{label}: {done}/{total}")

    from ctxrl_plugins.transfer.dqn_transferability_report import write_outputs

    runner = StudyRunner(plan, registry, progress=progress)
    results = runner.run()
    write_outputs(plan, results, runner.run_dir)
    return runner.run_dir


def report_study(run_dir: Path) -> str:
    """Rewrite a study's exports, figures and summary from its stored arms."""
    from ctxrl.plugins import get_host
    from ctxrl_plugins.transfer.dqn_transferability_report import write_outputs

    plan_file = run_dir / "plan.yaml"
    data = yaml.safe_load(plan_file.read_text())
    config = StudyConfig.model_validate(data["config"])
    registry = get_host().registry
    plan = resolve_study(config, registry, load_sources=False)
    runner = StudyRunner(plan, registry)
    runner.run_dir = run_dir
    results: dict[str, dict[str, ArmResult]] = {}
    for variant in config.variants:
        results[variant] = {}
        for arm in config.arms:
            stored = runner.load_arm(variant, arm)
            if stored is None:
                raise CtxrlError(
                    f"{run_dir}: arm {arm!r} of {variant!r} has not finished; rerun "
                    "`ctxrl transfer dqn` on the study file to complete it"
                )
            results[variant][arm] = stored
    return write_outputs(plan, results, run_dir)


def _study() -> StudyOnly:
    return StudyOnly(
        "dqn-transferability is a study of its own: run `ctxrl transfer dqn STUDY.yaml`; "
        "in a sweep use transfer: {name: fine-tune}"
    )


@hookimpl
def ctxrl_register_transfer_methods(register: Callable[[TransferMethodSpec], None]) -> None:
    register(
        TransferMethodSpec(
            name=STUDY,
            factory=_study,
            batched_only=True,
            report=report_study,
            description="DQN transferability studies: fine-tune / only-head / hybrid / "
            "keep-head arms against scratch on every pair (`ctxrl transfer dqn`)",
        )
    )


@hookimpl
def ctxrl_register_commands(cli: Any) -> None:
    import click

    group = cli.commands.get("transfer")
    if group is None:
        return

    @group.command("dqn")  # type: ignore[untyped-decorator]
    @click.argument("study", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--dry-run", is_flag=True, help="Validate the study; train nothing.")
    def dqn(study: Path, dry_run: bool) -> None:
        """Run (or resume) the DQN transferability STUDY (a YAML file)."""
        from rich.console import Console

        from ctxrl.plugins import get_host

        console = Console(stderr=True)
        config = load_study_config(study)
        registry = get_host().registry
        check_device(config.device)
        plan = resolve_study(config, registry)
        agents = len(plan.pairs) * len(config.seeds)
        console.print(
            f"{plan.env.name}: {len(plan.contexts)} contexts, {len(plan.pairs)} pairs, "
            f"{len(config.variants)} variants x {len(config.arms)} arms, {agents} agents per "
            f"transfer arm -> {plan.run_dir}"
        )
        if dry_run:
            return
        run_dir = run_study(config, registry, console=console)
        click.echo((run_dir / "summary.md").read_text())
        click.echo(f"results: {run_dir}")

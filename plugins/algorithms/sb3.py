"""Stable-Baselines3 algorithms as ctxrl algorithm plugins: ``sb3-ppo``, ``sb3-a2c``,
``sb3-dqn``, ``sb3-sac``, ``sb3-td3`` (``pip install ctxrl[sb3]``).

Presets per env family (:mod:`ctxrl_plugins.algorithms.sb3_presets`) follow the RL
Baselines3 Zoo's published hyperparameters (without VecNormalize, which ctxrl does not
apply). Policies are saved as safetensors (the policy's ``state_dict``) plus JSON
(algorithm, hyperparameters), never as SB3's pickled zip.

Extra keys besides the SB3 constructor's arguments: ``n_envs`` (parallel training envs),
``policy`` (default ``MlpPolicy``), ``noise_type`` / ``noise_std`` (action noise for TD3 and
SAC: ``normal`` or ``ornstein-uhlenbeck``). Schedules are written ``lin_<initial value>``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctxrl import hookimpl
from ctxrl.artifacts import load_artifact, save_artifact
from ctxrl.context import Task
from ctxrl.errors import ConfigError, PluginUnavailable
from ctxrl.options import (
    check_device,
    check_device_name,
    count_option,
    flag_option,
    is_number,
    number_option,
)
from ctxrl.registry import ActionSpaceKind, AlgorithmSpec, EnvSpec
from ctxrl_plugins.algorithms.sb3_presets import PRESETS as PRESETS

EXTRA_KEYS = {"n_envs", "policy", "noise_type", "noise_std"}
SET_BY_CTXRL = {"seed", "device", "verbose", "_init_setup_model"}
NOISE_STD = 0.1
"""the action noise's standard deviation (per unit of action) where ``noise_type`` is given
without ``noise_std``"""

ACTION_SPACES: dict[str, frozenset[ActionSpaceKind]] = {
    "ppo": frozenset({"discrete", "continuous"}),
    "a2c": frozenset({"discrete", "continuous"}),
    "dqn": frozenset({"discrete"}),
    "sac": frozenset({"continuous"}),
    "td3": frozenset({"continuous"}),
}


def _sb3_class(name: str) -> Any:
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN, "sac": sb3.SAC, "td3": sb3.TD3}[name]


def _schedule(value: Any) -> Any:
    """``lin_<initial>``: a linear schedule from ``initial`` to 0 over the training (SB3's
    remaining progress, clamped at 0: never a negative rate)."""
    if isinstance(value, str) and value.startswith("lin_"):
        initial = float(value[4:])
        return lambda progress_remaining: max(progress_remaining, 0.0) * initial
    return value


SCHEDULED_KEYS = ("learning_rate", "clip_range", "clip_range_vf")
"""The hyperparameters SB3 takes as a schedule (``lin_<initial>``)."""
COUNT_KEYS = (
    "n_steps",
    "batch_size",
    "n_epochs",
    "buffer_size",
    "target_update_interval",
    "policy_delay",
    "stats_window_size",
)
"""Hyperparameters that count something (at least 1), checked before any run."""
FRACTION_KEYS = (
    "gamma",
    "gae_lambda",
    "exploration_fraction",
    "exploration_initial_eps",
    "exploration_final_eps",
)
"""Hyperparameters in [0, 1], checked before any run."""
POSITIVE_KEYS = ("clip_range", "clip_range_vf", "max_grad_norm", "target_kl", "rms_prop_eps")
"""Hyperparameters that are finite numbers > 0 (or None where SB3's default is None)."""
NON_NEGATIVE_KEYS = ("vf_coef", "target_policy_noise", "target_noise_clip")
"""Hyperparameters that are finite numbers >= 0."""


EVERY_STEP_KEYS = ("gradient_steps",)
"""Counts where SB3 reads -1 as "as many as env steps"; 0 would mean never (no gradient
step: sources in the matrix that never learned)."""


@contextlib.contextmanager
def _closed_on_failure(envs: list[Any]) -> Iterator[None]:
    """Close ``envs`` (gymnasium or SB3 vector envs; the list as it is when the block fails)
    if the block raises, keeping the block's own error: a close that fails then (a simulator
    already gone) is not what went wrong."""
    try:
        yield
    except BaseException:
        for env in envs:
            with contextlib.suppress(Exception):
                env.close()
        raise


def _check_net_arch(value: Any, where: str) -> None:
    """A list of hidden widths (each >= 1), or a mapping of ``pi`` / ``vf`` / ``qf`` to one
    (separate actor and critic networks)."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"pi", "vf", "qf"})
        if unknown:
            raise ConfigError(f"{where}: keys {unknown} are not pi, vf or qf")
        for key, widths in value.items():
            _check_net_arch(widths, f"{where}.{key}")
        return
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where} must be a list of layer widths, got {value!r}")
    for index, width in enumerate(value):
        count_option(width, f"{where}[{index}]")


def _activation(value: Any, where: str) -> Any:
    """``policy_kwargs.activation_fn`` as YAML gives it (a torch.nn class name such as
    ``ReLU``, ``nn.Tanh`` or ``tanh``) as the class SB3 takes."""
    import torch

    if not isinstance(value, str):
        return value
    name = value.removeprefix("torch.").removeprefix("nn.").lower()
    for attribute in dir(torch.nn):
        candidate = getattr(torch.nn, attribute)
        if (
            attribute.lower() == name
            and isinstance(candidate, type)
            and issubclass(candidate, torch.nn.Module)
        ):
            return candidate
    raise ConfigError(
        f"{where}: activation_fn {value!r} is not a torch.nn activation (e.g. ReLU, Tanh)"
    )


class SB3Algorithm:
    """One SB3 algorithm with fixed hyperparameters.

    Args:
        algo: ``ppo``, ``a2c``, ``dqn``, ``sac`` or ``td3``.
        params: constructor arguments plus the extra keys of the module docstring.
        device: torch device for SB3 (``auto`` lets SB3 choose).
    """

    def __init__(self, algo: str, params: Mapping[str, Any], *, device: str = "cpu") -> None:
        self.algo = algo
        self.cls = _sb3_class(algo)
        allowed = set(inspect.signature(self.cls.__init__).parameters) - {"self", "env"}
        allowed |= EXTRA_KEYS
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ConfigError(
                f"algorithm.params: sb3-{algo} has no hyperparameter "
                f"{', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(allowed - {'policy_base', '_init_setup_model'}))}"
            )
        reserved = sorted(set(params) & SET_BY_CTXRL)
        if reserved:
            raise ConfigError(f"algorithm.params: {reserved} are set by ctxrl (seeds, device)")
        self._check_values(params, allowed)
        self.params = dict(params)
        self.device = check_device_name(device)

    def hyperparameters(self) -> dict[str, Any]:
        """Every hyperparameter a run trains with: SB3's defaults for the installed version,
        then ``params`` (the extra keys with their defaults too), and under
        ``policy_defaults`` the defaults of the policy class (``activation_fn``, ...; its
        ``net_arch`` default is None there, chosen inside SB3); what ctxrl sets itself (seed,
        device, verbosity) is left out."""

        def defaults(function: Callable[..., Any], leave_out: set[str]) -> dict[str, Any]:
            return {
                name: parameter.default
                for name, parameter in inspect.signature(function).parameters.items()
                if name not in leave_out and parameter.default is not inspect.Parameter.empty
            }

        resolved = defaults(self.cls.__init__, {"self", "env", "policy", *SET_BY_CTXRL})
        resolved.update({"n_envs": 1, "policy": "MlpPolicy", "noise_type": None})
        resolved["noise_std"] = NOISE_STD
        resolved.update(self.params)
        policy = self.cls.policy_aliases.get(str(resolved["policy"]))
        if policy is not None:
            resolved["policy_defaults"] = defaults(policy.__init__, {"self"})
        return resolved

    def _check_values(self, params: Mapping[str, Any], allowed: set[str]) -> None:
        """The values SB3 would only refuse when a run builds its model (every run failing
        after the sweep started), or take silently: checked here, naming the key."""
        where = f"algorithm.params: sb3-{self.algo}"
        if "n_envs" in params:
            count_option(params["n_envs"], f"{where}: n_envs")
        if "policy" in params and params["policy"] not in getattr(self.cls, "policy_aliases", {}):
            names = ", ".join(getattr(self.cls, "policy_aliases", {}))
            raise ConfigError(f"{where}: policy {params['policy']!r} is not one of {names}")
        for key, value in params.items():  # lin_ schedules: learning_rate, clip_range, ...
            if isinstance(value, str) and value.startswith("lin_"):
                if key not in SCHEDULED_KEYS:
                    raise ConfigError(
                        f"{where}: {key} {value!r}: SB3 takes a schedule for "
                        f"{', '.join(SCHEDULED_KEYS)} only"
                    )
                try:
                    initial = float(value[4:])
                except ValueError:
                    raise ConfigError(
                        f"{where}: {key} {value!r}: expected a number or lin_<number>"
                    ) from None
                number_option(initial, f"{where}: {key} {value!r}")
        for key in ("learning_rate", "clip_range", "clip_range_vf"):  # numbers or schedules
            value = params.get(key)
            if value is not None and not (isinstance(value, str) and value.startswith("lin_")):
                number_option(value, f"{where}: {key}")
        for key in COUNT_KEYS:
            if key in params:
                count_option(params[key], f"{where}: {key}")
        self._check_numbers(params, allowed, where)
        for key in FRACTION_KEYS:
            value = params.get(key)
            if value is not None and not (
                isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
            ):
                raise ConfigError(f"{where}: {key} must be a number in [0, 1], got {value!r}")
        self._check_policy_kwargs(params, where)
        self._check_train_freq(params.get("train_freq"), where, params.get("n_envs", 1))
        if "noise_type" in params or "noise_std" in params:
            if "action_noise" not in allowed:
                raise ConfigError(
                    f"{where}: noise_type / noise_std add action noise, which sb3-{self.algo} "
                    "does not take (sb3-sac and sb3-td3 do)"
                )
            if params.get("noise_type") not in ("normal", "ornstein-uhlenbeck"):
                raise ConfigError(
                    f"{where}: noise_type must be normal or ornstein-uhlenbeck (noise_std alone "
                    f"adds no noise), got {params.get('noise_type')!r}"
                )
            if "noise_std" in params:
                number_option(params["noise_std"], f"{where}: noise_std")

    def _check_numbers(self, params: Mapping[str, Any], allowed: set[str], where: str) -> None:
        """Ranges SB3 asserts only when a run builds its model (``batch_size: 1``,
        ``policy_delay: 0``) or does not check at all (``tau: 2``, ``gradient_steps: 0``, NaN,
        a string for a flag); a flag or number of SB3's signature must be one."""
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(self.cls.__init__).parameters.items()
        }
        for key, value in params.items():
            default = defaults.get(key, inspect.Parameter.empty)
            if isinstance(default, bool):
                flag_option(value, f"{where}: {key}")
            elif isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
        for key in POSITIVE_KEYS:
            if params.get(key) is not None and not isinstance(params[key], str):
                number_option(params[key], f"{where}: {key}")
        for key in NON_NEGATIVE_KEYS:
            if key in params:
                number_option(params[key], f"{where}: {key}", positive=False)
        for key in EVERY_STEP_KEYS:
            if key in params and params[key] != -1:
                count_option(params[key], f"{where}: {key} (-1 or a count)")
        if "learning_starts" in params:
            count_option(params["learning_starts"], f"{where}: learning_starts", minimum=0)
        tau = params.get("tau")
        if tau is not None and not (
            isinstance(tau, int | float) and not isinstance(tau, bool) and 0 < tau <= 1
        ):
            raise ConfigError(f"{where}: tau must be a number in (0, 1], got {tau!r}")
        if "sde_sample_freq" in params:  # -1 and 0: only at a rollout's start
            count_option(params["sde_sample_freq"], f"{where}: sde_sample_freq", minimum=-1)
        if self.algo == "ppo" and params.get("normalize_advantage", True):
            # SB3 asserts these where it normalises a minibatch's advantages (its default)
            if "batch_size" in params and params["batch_size"] < 2:
                raise ConfigError(
                    f"{where}: batch_size must be >= 2 where advantages are normalised "
                    f"(normalize_advantage), got {params['batch_size']!r}"
                )
            steps = params.get("n_steps", defaults["n_steps"]) * params.get("n_envs", 1)
            if steps < 2:
                raise ConfigError(
                    f"{where}: n_steps x n_envs must be >= 2 where advantages are normalised "
                    f"(normalize_advantage), got {steps}"
                )
        self._check_entropy(params, where)

    def _check_entropy(self, params: Mapping[str, Any], where: str) -> None:
        """SAC's ``ent_coef`` (a number >= 0, ``auto`` or ``auto_<initial>``) and
        ``target_entropy`` (``auto`` or a number); elsewhere ``ent_coef`` is a number >= 0."""
        value = params.get("ent_coef")
        if value is not None:
            if isinstance(value, str) and self.algo == "sac":
                initial = value.removeprefix("auto_")
                if value != "auto" and (not value.startswith("auto_") or not is_number(initial)):
                    raise ConfigError(
                        f"{where}: ent_coef must be a number >= 0, auto or auto_<initial>, "
                        f"got {value!r}"
                    )
                if value != "auto":
                    number_option(float(initial), f"{where}: ent_coef {value!r}")
            else:
                number_option(value, f"{where}: ent_coef", positive=False)
        target = params.get("target_entropy")
        if target is not None and target != "auto":
            if isinstance(target, bool) or not isinstance(target, int | float):
                raise ConfigError(
                    f"{where}: target_entropy must be auto or a number, got {target!r}"
                )
            if not math.isfinite(target):
                raise ConfigError(f"{where}: target_entropy must be finite, got {target!r}")

    def _check_policy_kwargs(self, params: Mapping[str, Any], where: str) -> None:
        """``policy_kwargs``: a mapping of the policy class's keyword arguments (an unknown
        one failed inside every run), ``activation_fn`` a torch.nn class name."""
        kwargs = params.get("policy_kwargs")
        if kwargs is None:
            return
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"{where}: policy_kwargs must be a mapping, got {kwargs!r}")
        policy = getattr(self.cls, "policy_aliases", {}).get(params.get("policy", "MlpPolicy"))
        if policy is not None:
            takes = set(inspect.signature(policy.__init__).parameters) - {
                "self", "observation_space", "action_space", "lr_schedule"
            }  # fmt: skip
            unknown = sorted(set(kwargs) - takes)
            if unknown:
                raise ConfigError(
                    f"{where}: policy_kwargs {', '.join(map(repr, unknown))}: "
                    f"{policy.__name__} takes {', '.join(sorted(takes))}"
                )
        if "activation_fn" in kwargs:
            _activation(kwargs["activation_fn"], f"{where}: policy_kwargs")
        if "net_arch" in kwargs:
            _check_net_arch(kwargs["net_arch"], f"{where}: policy_kwargs.net_arch")

    @staticmethod
    def _check_train_freq(value: Any, where: str, n_envs: Any = 1) -> None:
        """``train_freq``: a count of steps, or ``[count, step | episode]`` (the RL Zoo's);
        in episodes, one training env only (SB3 asserts it in every run)."""
        if value is None:
            return
        episodic = isinstance(value, list | tuple) and len(value) == 2 and value[1] == "episode"
        if episodic and n_envs != 1:
            raise ConfigError(
                f"{where}: train_freq in episodes trains on one env only (SB3), got "
                f"n_envs {n_envs!r}: give n_envs: 1 or train_freq in steps"
            )
        if isinstance(value, list | tuple):
            if len(value) != 2 or value[1] not in ("step", "episode"):
                raise ConfigError(
                    f"{where}: train_freq must be a count or [count, step | episode], got {value!r}"
                )
            count_option(value[0], f"{where}: train_freq[0]")
        else:
            count_option(value, f"{where}: train_freq")

    def trained_steps(self, total_steps: int) -> int:
        """The env steps :meth:`train` trains for ``total_steps``, as SB3 counts them: it
        finishes the rollout it started, so PPO and A2C train whole rollouts of ``n_steps x
        n_envs`` and the off-policy algorithms whole collections of ``train_freq`` steps (in
        steps) x ``n_envs``, rounded up (300 steps asked of the CartPole preset's 8 x 32 train
        512); a ``lin_`` schedule stays at 0 beyond the budget (:func:`_schedule`)."""
        n_envs = int(self.params.get("n_envs", 1))
        parameters = inspect.signature(self.cls.__init__).parameters
        per_update = n_envs
        if self.algo in ("ppo", "a2c"):
            per_update = int(self.params.get("n_steps", parameters["n_steps"].default)) * n_envs
        elif "train_freq" in parameters:
            freq = self.params.get("train_freq", parameters["train_freq"].default)
            if isinstance(freq, list | tuple):
                freq = int(freq[0]) if freq[1] == "step" else None
            if freq is not None:
                per_update = int(freq) * n_envs
        return -(-total_steps // per_update) * per_update

    def check_budget(self, total_steps: int) -> None:
        """Off-policy algorithms learn from ``learning_starts`` env steps on: at or above the
        budget, an agent would never take a gradient step."""
        parameter = inspect.signature(self.cls.__init__).parameters.get("learning_starts")
        if parameter is None:
            return
        starts = self.params.get("learning_starts", parameter.default)
        trained = self.trained_steps(total_steps)  # SB3 finishes the collection it started
        if starts >= trained:
            raise ConfigError(
                f"algorithm.params.learning_starts: sb3-{self.algo} starts learning after "
                f"{starts} env steps, but a run trains {trained}: it would never learn"
            )

    # ------------------------------------------------------------------------ training
    def _model_kwargs(self, action_dim: int) -> dict[str, Any]:
        kwargs = {k: _schedule(v) for k, v in self.params.items() if k not in EXTRA_KEYS}
        for key in COUNT_KEYS:  # YAML's 1.0e6 is a float; SB3 sizes its buffers with ints
            if key in kwargs:
                kwargs[key] = int(kwargs[key])
        if isinstance(kwargs.get("train_freq"), list):  # YAML's list, SB3's tuple
            kwargs["train_freq"] = tuple(kwargs["train_freq"])
        if "policy_kwargs" in kwargs:
            policy_kwargs = dict(kwargs["policy_kwargs"])
            if "activation_fn" in policy_kwargs:
                where = f"algorithm.params: sb3-{self.algo}: policy_kwargs"
                policy_kwargs["activation_fn"] = _activation(policy_kwargs["activation_fn"], where)
            kwargs["policy_kwargs"] = policy_kwargs
        noise_type = self.params.get("noise_type")
        if noise_type is not None:
            from stable_baselines3.common.noise import (
                NormalActionNoise,
                OrnsteinUhlenbeckActionNoise,
            )

            std = float(self.params.get("noise_std", NOISE_STD)) * np.ones(action_dim)
            noise_cls = {
                "normal": NormalActionNoise,
                "ornstein-uhlenbeck": OrnsteinUhlenbeckActionNoise,
            }.get(noise_type)
            if noise_cls is None:
                raise ConfigError(f"algorithm.params.noise_type: unknown noise {noise_type!r}")
            kwargs["action_noise"] = noise_cls(mean=np.zeros(action_dim), sigma=std)
        return kwargs

    def _build(self, env: EnvSpec, task: Task, seed: int) -> Any:
        from stable_baselines3.common.env_util import make_vec_env

        context = task.context.as_dict()
        vec = make_vec_env(
            lambda: env.make(context), n_envs=int(self.params.get("n_envs", 1)), seed=seed
        )
        shape = vec.action_space.shape
        action_dim = int(shape[0]) if shape else 1
        with _closed_on_failure([vec]):
            return self.cls(
                self.params.get("policy", "MlpPolicy"),
                vec,
                seed=seed,
                device=self.device,
                verbose=0,
                **self._model_kwargs(action_dim),
            )

    def train(self, env: EnvSpec, task: Task, *, seed: int, total_steps: int) -> Any:
        check_device(self.device)  # SB3 itself would train on the CPU when CUDA is missing
        model = self._build(env, task, seed)
        with _closed_on_failure([model.get_env()]):
            model.learn(total_timesteps=total_steps)
        model.get_env().close()  # simulators (SUMO) stop now, not when the model is collected
        model._ctxrl_task = task  # remembered for save()
        return model

    # ---------------------------------------------------------------------- evaluation
    def evaluate(
        self,
        policy: Any,
        env: EnvSpec,
        tasks: Sequence[Task],
        *,
        episodes: int,
        seed: int,
        deterministic: bool = True,
    ) -> np.ndarray:
        """Episode returns ``(len(tasks), episodes)``; the episodes of a task run in lockstep
        (one batched prediction per step), or one after another in one env where the env
        allows one instance per process (``EnvSpec.concurrent_instances``). A policy whose
        weights are not all finite (a diverged training) gets NaN returns, as on the batched
        path: its greedy actions would be argmaxes of NaN, plausible-looking episodes."""
        import torch

        if not all(bool(torch.isfinite(p).all()) for p in policy.policy.parameters()):
            return np.full((len(tasks), episodes), np.nan)
        out = np.zeros((len(tasks), episodes))
        lockstep = episodes if env.concurrent_instances else 1
        for j, task in enumerate(tasks):
            for first in range(0, episodes, lockstep):
                played = range(first, min(first + lockstep, episodes))
                envs: list[Any] = []
                with _closed_on_failure(envs):  # a simulator (SUMO) stops with its env
                    for _ in played:
                        envs.append(env.make(task.context.as_dict()))
                    out[j, played.start : played.stop] = self._play(
                        policy, envs, [seed * 100_003 + 1009 * j + k for k in played], deterministic
                    )
                for e in envs:
                    e.close()
        return out

    @staticmethod
    def _play(policy: Any, envs: list[Any], seeds: list[int], deterministic: bool) -> np.ndarray:
        """One episode in each of ``envs`` (reset with ``seeds``) in lockstep; their returns."""
        returns = np.zeros(len(envs))
        obs = np.stack([e.reset(seed=s)[0] for e, s in zip(envs, seeds, strict=True)])
        done = np.zeros(len(envs), dtype=bool)
        while not done.all():
            actions, _ = policy.predict(obs, deterministic=deterministic)
            for i, e in enumerate(envs):
                if done[i]:
                    continue
                o, r, terminated, truncated, _ = e.step(actions[i])
                returns[i] += float(r)
                obs[i] = o
                done[i] = terminated or truncated
        return returns

    # ---------------------------------------------------------------------- artifacts
    def save(self, policy: Any, path: Path) -> None:
        task: Task = policy._ctxrl_task
        save_artifact(
            path,
            policy.policy.state_dict(),
            {
                "algorithm": f"sb3-{self.algo}",
                "params": self.params,
                "env": task.env,
                "context": task.context.as_dict(),
                "seed": int(policy.seed) if policy.seed is not None else None,
            },
        )

    def load(self, path: Path, env: EnvSpec) -> Any:
        tensors, meta = load_artifact(path, device="cpu")
        if meta.get("algorithm") not in (None, f"sb3-{self.algo}"):
            raise ConfigError(f"{path}: a policy of {meta.get('algorithm')!r}, not sb3-{self.algo}")
        task = env.task(meta["context"])
        model = self._build(env, task, int(meta.get("seed") or 0))
        model.policy.load_state_dict(tensors, strict=True)
        model._ctxrl_task = task
        return model


def _factory(algo: str) -> Callable[..., SB3Algorithm]:
    def factory(
        params: Mapping[str, Any], *, device: str = "cpu", env: EnvSpec | None = None
    ) -> SB3Algorithm:
        del env
        return SB3Algorithm(algo, params, device="auto" if device == "auto" else device)

    return factory


@hookimpl
def ctxrl_register_algorithms(register: Callable[[AlgorithmSpec], None]) -> None:
    import importlib.util

    if importlib.util.find_spec("stable_baselines3") is None:
        raise PluginUnavailable("stable-baselines3 is not installed: pip install 'ctxrl[sb3]'")
    for algo in ("ppo", "a2c", "dqn", "sac", "td3"):
        register(
            AlgorithmSpec(
                name=f"sb3-{algo}",
                factory=_factory(algo),
                action_spaces=ACTION_SPACES[algo],
                presets=PRESETS.get(algo, {}),
                description=f"Stable-Baselines3 {algo.upper()}, one policy per process",
            )
        )

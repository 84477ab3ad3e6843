"""Shared machinery of the batched trainers: per-agent layers, contexts and seeds for the
torch twins, per-agent gradient clipping, and batched cross-evaluation.

Everything here keeps agents independent: an agent's numbers never depend on the others in
the batch (see :mod:`ctxrl.rng` and :func:`linear`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch

from ctxrl.artifacts import load_artifact, save_artifact
from ctxrl.context import Task
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.registry import EnvSpec
from ctxrl.rng import StreamRNG

Tensor = torch.Tensor
Params = dict[str, Tensor]


class Policies(Protocol):
    """What batched evaluation and saving need from trained agents."""

    params: Params
    seeds: list[int]
    discrete: bool

    def __len__(self) -> int: ...

    def act(self, obs: Tensor, deterministic: bool, rng: StreamRNG | None = None) -> Tensor: ...

    def metadata(self) -> dict[str, Any]: ...


ConfigT = TypeVar("ConfigT")


def hyperparameters(
    config_class: type[ConfigT], params: Mapping[str, Any], algorithm: str
) -> ConfigT:
    """A frozen hyperparameter dataclass from config ``params``; unknown keys are an error that
    names them and lists the known ones. Lists become tuples (the dataclasses are hashable)."""
    known = {f.name for f in fields(config_class)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"algorithm.params: {algorithm} has no hyperparameter "
            f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return config_class(**values)


class BatchedTrainer:
    """What the batched algorithms share: single-task ``train`` / ``evaluate`` on top of
    ``train_many`` / batched evaluation, and safetensors artifacts.

    Subclasses set ``name`` and implement ``train_many`` and ``policies_from``."""

    name: ClassVar[str]

    def __init__(self, device: str) -> None:
        self.device = resolve_device(device)

    def train_many(
        self,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        *,
        total_steps: int,
        **kwargs: Any,
    ) -> Any:
        raise NotImplementedError

    def policies_from(self, tensors: Params, metadata: dict[str, Any]) -> Any:
        """Rebuild trained agents from a saved artifact."""
        raise NotImplementedError

    def train(self, env: EnvSpec, task: Task, *, seed: int, total_steps: int) -> Any:
        return self.train_many(env, [task.context.as_dict()], [seed], total_steps=total_steps)

    def evaluate_many(
        self,
        policies: Policies,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        *,
        episodes: int,
        seed: int,
        deterministic: bool = True,
    ) -> np.ndarray:
        """Returns ``(P, Q, E)`` of P policies on Q contexts (see :func:`evaluate_policies`)."""
        return evaluate_policies(
            policies,
            env,
            contexts,
            episodes=episodes,
            seed=seed,
            deterministic=deterministic,
            device=self.device,
        )

    def evaluate(
        self,
        policy: Policies,
        env: EnvSpec,
        tasks: Sequence[Task],
        *,
        episodes: int,
        seed: int,
        deterministic: bool = True,
    ) -> np.ndarray:
        out = self.evaluate_many(
            policy,
            env,
            [t.context.as_dict() for t in tasks],
            episodes=episodes,
            seed=seed,
            deterministic=deterministic,
        )
        return out[0] if len(policy) == 1 else out

    def save(self, policy: Policies, path: Path) -> None:
        save_artifact(path, policy.params, {"algorithm": self.name, **policy.metadata()})

    def load(self, path: Path, env: EnvSpec) -> Any:
        tensors, metadata = load_artifact(path, device=str(self.device))
        if metadata.get("algorithm") != self.name:
            raise CtxrlError(
                f"{path} holds a {metadata.get('algorithm')!r} policy, not {self.name}"
            )
        return self.policies_from(tensors, metadata)


def orthogonal(rows: int, cols: int, gain: float, generator: torch.Generator) -> Tensor:
    weight = torch.empty(cols, rows)
    torch.nn.init.orthogonal_(weight, gain=gain, generator=generator)
    return weight.T.contiguous()  # (in, out) for x @ W


class _SigmoidTanh(torch.autograd.Function):
    """tanh computed as ``2 sigmoid(2x) - 1``, with tanh's own backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: Tensor) -> Tensor:
    """``tanh``. On the CPU computed as ``2 sigmoid(2x) - 1`` (equal to ~1e-7), because torch's
    CPU tanh is several times slower than its sigmoid here (3.2 vs 0.4 ns per float32 element
    on the benchmark machine), and the activations are the largest single cost of a batched PPO
    update on CPU."""
    if x.device.type != "cpu":
        return torch.tanh(x)
    if x.requires_grad and torch.is_grad_enabled():
        return _SigmoidTanh.apply(x)  # type: ignore[no-any-return]
    return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight + bias`` per agent: ``(N, M, in) x (N, in, out) -> (N, M, out)``.

    A single output column is computed as a product and a sum: as a batched matrix product
    its kernel (matrix-vector for one agent, matrix-matrix for several) would change the
    summation order with the number of agents, and agents would no longer be independent."""
    if weight.shape[-1] == 1:
        return (x * weight[:, None, :, 0]).sum(-1, keepdim=True) + bias[:, None]
    return torch.baddbmm(bias[:, None], x, weight)


def contexts_tensor(
    spec: EnvSpec, contexts: Sequence[Mapping[str, float]], repeat: int, device: torch.device
) -> dict[str, Tensor]:
    full = [spec.context_space.validate(c) for c in contexts]
    return {
        name: torch.tensor(
            [c[name] for c in full], dtype=torch.float32, device=device
        ).repeat_interleave(repeat)
        for name in spec.context_space.names
    }


def context_seed(spec: EnvSpec, context: Mapping[str, float]) -> int:
    """A seed that depends on the context's values only (stable across processes)."""
    digest = Task(spec.name, spec.context_space.validate(context)).id.rsplit("-", 1)[1]
    return int(digest[:12], 16) % (1 << 40)


def env_seeds(seeds: Sequence[int], per_agent: int, salt: int) -> Tensor:
    base = torch.tensor([int(s) for s in seeds], dtype=torch.int64)
    return (base[:, None] * 1_000_003 + salt * 7919 + torch.arange(per_agent)).reshape(-1)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class AgentAdam:
    """Adam (Kingma and Ba 2015) with per-agent gradient-norm clipping over agent-stacked
    parameters ``(N, ...)``.

    The parameters move into one flat buffer, each keeping a dense block of its own (the dict's
    entries become views of it), and their gradients into a second one, so zeroing the
    gradients is one operation and the Adam step a handful (one fused kernel on a GPU) however
    many tensors the networks have. Clipping and Adam are per agent and elementwise: agents stay
    independent. :meth:`finish` turns the views back into plain tensors when training ends."""

    def __init__(
        self, params: Params, *, lr: float, eps: float = 1e-8, max_grad_norm: float | None = None
    ) -> None:
        self.params, self.max_grad_norm = params, max_grad_norm
        self.flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
        self.flat.grad = torch.zeros_like(self.flat)
        self._agent_grads: list[Tensor] = []  # (N, size) views of each parameter's gradient
        offset = 0
        for name, p in params.items():
            size = p.numel()
            view = self.flat[offset : offset + size].view(p.shape).requires_grad_(True)
            view.grad = self.flat.grad[offset : offset + size].view(p.shape)
            params[name] = view
            self._agent_grads.append(view.grad.view(p.shape[0], -1))
            offset += size
        # torch's fused CPU kernel rounds an element differently depending on where it falls in
        # the buffer (which depends on N): on the CPU the plain single-tensor step keeps agents
        # bit-independent; on a GPU the fused kernel saves launches
        fused = self.flat.device.type == "cuda"
        self.optimizer = torch.optim.Adam([self.flat], lr=lr, eps=eps, fused=fused)

    def zero_grad(self) -> None:
        assert self.flat.grad is not None
        self.flat.grad.zero_()

    def step(self, lr: float | None = None) -> None:
        """Clip each agent's gradient to ``max_grad_norm`` (L2 over all its parameters), then
        take an Adam step (at learning rate ``lr`` when given)."""
        if self.max_grad_norm is not None:
            # summed one parameter at a time: a reduction over a stacked (tensors, N) array
            # would change its order with N
            squared = sum(g.square().sum(dim=1) for g in self._agent_grads)
            scale = (self.max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)  # type: ignore[union-attr]
            for g in self._agent_grads:
                g.mul_(scale[:, None])
        if lr is not None:
            self.optimizer.param_groups[0]["lr"] = lr
        self.optimizer.step()

    def finish(self) -> None:
        """Training is over: the parameters become plain, contiguous tensors again."""
        for name, p in self.params.items():
            self.params[name] = p.detach().clone()

    def state_tensors(self) -> dict[str, Tensor]:
        """Parameters and Adam moments, for a checkpoint."""
        tensors = {"params": self.flat.detach()}
        state = self.optimizer.state.get(self.flat, {})
        for name in ("exp_avg", "exp_avg_sq", "step"):
            if name in state:
                tensors[name] = torch.as_tensor(state[name]).reshape(-1)
        return tensors

    def load_state_tensors(self, tensors: Mapping[str, Tensor], source: Path) -> None:
        """Restore what :meth:`state_tensors` returned; ``source`` names the file in errors."""
        if "params" not in tensors or tensors["params"].shape != self.flat.shape:
            raise CtxrlError(
                f"checkpoint {source} does not match this training (written by another ctxrl "
                "version or for other hyperparameters); delete it to start over"
            )
        with torch.no_grad():
            self.flat.copy_(tensors["params"])
        if "exp_avg" in tensors:
            self.optimizer.state[self.flat] = {
                "step": tensors["step"].reshape(()).to(self.flat.device, torch.float32),
                "exp_avg": tensors["exp_avg"].clone(),
                "exp_avg_sq": tensors["exp_avg_sq"].clone(),
            }


def evaluate_policies(
    policies: Policies,
    env: EnvSpec,
    contexts: Sequence[Mapping[str, float]],
    *,
    episodes: int,
    seed: int,
    deterministic: bool = True,
    device: torch.device,
) -> np.ndarray:
    """Returns of P policies on Q contexts, E episodes each, in one batched rollout:
    ``(P, Q, E)``. Episode ``k`` on context ``q`` starts from the same state for every
    policy."""
    assert env.make_batched is not None
    p, q = len(policies), len(contexts)
    per_policy = q * episodes
    ctx = contexts_tensor(env, contexts, episodes, device)
    ctx = {k: v.repeat(p) for k, v in ctx.items()}
    # episode k on a context starts from a state seeded by (context, k, seed) alone
    starts = torch.tensor(
        [
            context_seed(env, c) + 1009 * k + 1_000_003 * int(seed)
            for c in contexts
            for k in range(episodes)
        ],
        dtype=torch.int64,
    )
    twin = env.make_batched(p * per_policy, contexts=ctx, device=device, env_seeds=starts.repeat(p))
    rng = StreamRNG(
        torch.tensor(policies.seeds, dtype=torch.int64, device=device) + 7_777_777 * (int(seed) + 1)
    )
    obs = twin.reset()
    returns = torch.zeros(p * per_policy, dtype=torch.float64, device=device)
    finished = torch.zeros(p * per_policy, dtype=torch.bool, device=device)
    limit = twin.max_episode_steps
    with torch.no_grad():
        for _ in range(limit):
            action = policies.act(obs.view(p, per_policy, -1), deterministic, rng)
            action = (
                action.reshape(p * per_policy)
                if policies.discrete
                else action.reshape(p * per_policy, -1)
            )
            obs, reward, _, _, info = twin.step(action)
            returns += torch.where(finished, 0.0, reward.double())
            finished |= info["done"]
            if bool(finished.all()):
                break
    return returns.view(p, q, episodes).cpu().numpy()


def save_training_state(
    path: Path,
    iteration: int,
    optimizer: AgentAdam,
    twin: Any,
    rng: StreamRNG,
    obs: Tensor,
    extra: Mapping[str, Tensor] | None = None,
) -> None:
    """Save everything a batched training needs to continue bit-exactly after a kill: weights,
    Adam moments, the environments' state, step counters, contexts (multi-task runs redraw
    them) and random streams, the agents' random streams, the last observation ``(B, obs)``
    and the trainer's own ``extra`` tensors (replay buffers, target networks). safetensors +
    JSON, written atomically by :func:`ctxrl.artifacts.save_artifact`."""
    tensors = {f"adam.{k}": v for k, v in optimizer.state_tensors().items()}
    tensors.update(
        {
            "env.state": twin._state,
            "env.elapsed": twin.elapsed,
            "obs": obs,
            "rng.seeds": rng.seeds,
            "rng.counters": rng.counters,
        }
    )
    tensors.update({f"env.context.{k}": v for k, v in twin.context.items()})
    if twin.streams is not None:
        tensors["env.rng.seeds"] = twin.streams.seeds
        tensors["env.rng.counters"] = twin.streams.counters
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    save_artifact(path, tensors, {"iteration": iteration})


def restore_training_state(
    path: Path,
    optimizer: AgentAdam,
    twin: Any,
    rng: StreamRNG,
) -> tuple[int, Tensor, dict[str, Tensor]]:
    """Load what :func:`save_training_state` wrote into live objects; return the iteration to
    continue from, the last observation and the ``extra`` tensors (prefix removed)."""
    tensors, meta = load_artifact(path, device=str(twin.device))
    optimizer.load_state_tensors(
        {k.removeprefix("adam."): v for k, v in tensors.items() if k.startswith("adam.")}, path
    )
    twin._state = tensors["env.state"].clone()
    twin.elapsed = tensors["env.elapsed"].clone()
    contexts = {
        k.removeprefix("env.context."): v
        for k, v in tensors.items()
        if k.startswith("env.context.")
    }
    if contexts:
        twin.set_context(contexts)
    rng.load_state_dict({"seeds": tensors["rng.seeds"], "counters": tensors["rng.counters"]})
    if twin.streams is not None:
        twin.streams.load_state_dict(
            {"seeds": tensors["env.rng.seeds"], "counters": tensors["env.rng.counters"]}
        )
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return int(meta["iteration"]), tensors["obs"], extra

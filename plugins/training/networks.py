"""Agent-stacked network arithmetic: every weight carries a leading agent dimension ``N`` and
layers are batched matrix products that keep agents independent."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import torch

from ctxrl.interventions import NetworkSpec

Tensor = torch.Tensor
Params = dict[str, Tensor]
"""Agent-stacked parameters by name, each ``(N, ...)``."""


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
        return cast(Tensor, torch.ops.aten.tanh_backward(grad, y))


_sigmoid_tanh: Callable[[Tensor], Tensor] = _SigmoidTanh.apply  # Function.apply is untyped


def tanh(x: Tensor) -> Tensor:
    """``tanh``. On the CPU computed as ``2 sigmoid(2x) - 1`` (equal to ~1e-7), because torch's
    CPU tanh is several times slower than its sigmoid here (3.2 vs 0.4 ns per float32 element
    on the benchmark machine), and the activations are the largest single cost of a batched PPO
    update on CPU."""
    if x.device.type != "cpu":
        return torch.tanh(x)
    if x.requires_grad and torch.is_grad_enabled():
        return _sigmoid_tanh(x)
    return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight + bias`` per agent: ``(N, M, in) x (N, in, out) -> (N, M, out)``.

    A single output column is computed as a product and a sum: as a batched matrix product
    its kernel (matrix-vector for one agent, matrix-matrix for several) would change the
    summation order with the number of agents, and agents would no longer be independent."""
    if weight.shape[-1] == 1:
        return (x * weight[:, None, :, 0]).sum(-1, keepdim=True) + bias[:, None]
    return torch.baddbmm(bias[:, None], x, weight)


def relu(x: Tensor) -> Tensor:
    return torch.relu(x)


def crelu(x: Tensor) -> Tensor:
    """Concatenated ReLU (Shang et al. 2016): ``[relu(x), relu(-x)]`` on the last axis, so a
    layer of width ``w`` outputs ``2 w`` features."""
    return torch.cat([torch.relu(x), torch.relu(-x)], dim=-1)


ACTIVATIONS = {"tanh": tanh, "relu": relu, "crelu": crelu}


class StackedMLP:
    """An agent-stacked MLP built from a :class:`~ctxrl.interventions.NetworkSpec`.

    Parameters are named ``{role}.{i}.weight`` ``(N, in, out)`` and ``{role}.{i}.bias``
    ``(N, out)`` for hidden layer ``i`` (from 0), ``{role}.{i}.norm.weight`` / ``.bias``
    ``(N, out)`` with LayerNorm, and ``{role}.{head}.weight`` / ``.bias`` for each output head
    (``head``; DQN's dueling network adds ``value``). Forward passes map ``(N, M, in)`` to
    ``(N, M, out)``.

    Args:
        role: the network's name, the prefix of its parameters (``actor``, ``critic``, ``q``).
        spec: widths, activation, normalisation.
        in_dim: observation size.
        heads: output heads in initialisation order: name -> (width, orthogonal gain).
    """

    def __init__(
        self,
        role: str,
        spec: NetworkSpec,
        in_dim: int,
        heads: dict[str, tuple[int, float]],
    ) -> None:
        if spec.activation not in ACTIVATIONS:
            raise ValueError(f"{role}: unknown activation {spec.activation!r}")
        if spec.norm not in ("none", "layernorm"):
            raise ValueError(f"{role}: unknown normalisation {spec.norm!r}")
        self.role, self.spec, self.in_dim, self.heads = role, spec, in_dim, dict(heads)
        self.activation = ACTIVATIONS[spec.activation]
        widen = 2 if spec.activation == "crelu" else 1
        self.fan_ins = [in_dim, *(w * widen for w in spec.hidden)]
        self.hidden_layers = [f"{role}.{i}" for i in range(len(spec.hidden))]
        self.layers = [*self.hidden_layers, *(f"{role}.{h}" for h in self.heads)]

    @property
    def feature_size(self) -> int:
        """Width of the last hidden layer's output (what the heads read)."""
        return self.fan_ins[-1]

    def init_agent(self, generator: torch.Generator) -> Params:
        """One agent's parameters (no agent dimension), drawn from ``generator``: orthogonal
        weights (hidden layers first, then heads, in order), zero biases, unit LayerNorm
        gains."""
        params: Params = {}
        for i, (layer, width) in enumerate(zip(self.hidden_layers, self.spec.hidden, strict=True)):
            params[f"{layer}.weight"] = orthogonal(
                self.fan_ins[i], width, self.spec.hidden_gain, generator
            )
        for head, (width, gain) in self.heads.items():
            params[f"{self.role}.{head}.weight"] = orthogonal(
                self.feature_size, width, gain, generator
            )
        for layer, width in zip(self.hidden_layers, self.spec.hidden, strict=True):
            params[f"{layer}.bias"] = torch.zeros(width)
            if self.spec.norm == "layernorm":
                params[f"{layer}.norm.weight"] = torch.ones(width)
                params[f"{layer}.norm.bias"] = torch.zeros(width)
        for head, (width, _) in self.heads.items():
            params[f"{self.role}.{head}.bias"] = torch.zeros(width)
        return params

    def features(
        self, params: Mapping[str, Tensor], x: Tensor, record: dict[str, Tensor] | None = None
    ) -> Tensor:
        """The last hidden layer's output ``(N, M, feature_size)``; with ``record``, each hidden
        layer's post-activation output is stored there (detached) under its layer name."""
        h = x
        for layer in self.hidden_layers:
            h = linear(h, params[f"{layer}.weight"], params[f"{layer}.bias"])
            if self.spec.norm == "layernorm":
                h = torch.nn.functional.layer_norm(h, h.shape[-1:])
                h = (
                    h * params[f"{layer}.norm.weight"][:, None]
                    + params[f"{layer}.norm.bias"][:, None]
                )
            h = self.activation(h)
            if record is not None:
                record[layer] = h.detach()
        return h

    def head(self, params: Mapping[str, Tensor], h: Tensor, name: str = "head") -> Tensor:
        """Output head ``name`` on features ``h``: ``(N, M, width)``."""
        return linear(h, params[f"{self.role}.{name}.weight"], params[f"{self.role}.{name}.bias"])

    def __call__(
        self, params: Mapping[str, Tensor], x: Tensor, record: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Features, then the first head: ``(N, M, in) -> (N, M, out)``."""
        return self.head(params, self.features(params, x, record), next(iter(self.heads)))


def stack_agents(per_agent: list[Params], device: torch.device) -> Params:
    """Stack per-agent parameter dicts (same keys, same shapes) into ``(N, ...)`` tensors."""
    return {k: torch.stack([p[k] for p in per_agent]).to(device) for k in per_agent[0]}

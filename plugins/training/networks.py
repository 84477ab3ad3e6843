"""Agent-stacked network arithmetic: every weight carries a leading agent dimension ``N`` and
layers are batched matrix products that keep agents independent."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


VECTOR_ALIGNED_ELEMENTS = 64
"""Per agent, a multiple of this many activations keeps every element of an agent-stacked
tensor in torch's vectorised CPU sigmoid (:func:`tanh`)."""


def _cpu_tanh(x: Tensor) -> Tensor:
    """tanh of an agent-stacked ``(N, ...)`` CPU tensor, equal to ``torch.tanh`` to ~2e-7.

    ``2 sigmoid(2x) - 1`` where every element goes through torch's vectorised CPU sigmoid:
    each agent has a multiple of :data:`VECTOR_ALIGNED_ELEMENTS` activations (every default
    network) and torch runs on one intra-op thread (``OMP_NUM_THREADS=1``; with more, a tensor
    of 32,768 elements or more, torch's grain size, is split in chunks the vector loop need not
    divide). Its scalar loop, which takes a tensor's (or a chunk's) last elements, rounds an
    ulp differently now and then, so an agent there would not equal itself alone. Otherwise
    ``2 / (1 + exp(-2x)) - 1``, whose operations round the same in both loops (~1.9x the time
    of the sigmoid form, which is ~5x faster than torch's CPU tanh). The choice depends on
    an agent's shape and the thread count only, never on the batch's size. Compiled code
    (inductor's own kernels) takes the sigmoid form."""
    aligned = x.numel() // max(1, x.shape[0]) % VECTOR_ALIGNED_ELEMENTS == 0
    one_thread = torch.compiler.is_compiling() or torch.get_num_threads() == 1
    if aligned and one_thread:
        return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
    return torch.exp(x * -2.0).add_(1.0).reciprocal_().mul_(2.0).sub_(1.0)


class _CPUTanh(torch.autograd.Function):
    """:func:`_cpu_tanh` with tanh's own backward (a separate ``setup_context``, so
    ``torch.func.grad`` can differentiate through it)."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _cpu_tanh(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        del inputs
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return cast(Tensor, torch.ops.aten.tanh_backward(grad, y))


_cpu_tanh_with_grad: Callable[[Tensor], Tensor] = _CPUTanh.apply  # Function.apply is untyped


def tanh(x: Tensor) -> Tensor:
    """``tanh`` of agent-stacked activations ``(N, ...)``. On the CPU computed from a sigmoid or
    an exponential (:func:`_cpu_tanh`, equal to ~2e-7), because torch's CPU tanh is several
    times slower than its sigmoid here (3.2 vs 0.4 ns per float32 element on the benchmark
    machine), and the activations are the largest single cost of a batched PPO update on CPU."""
    if x.device.type != "cpu":
        return torch.tanh(x)
    if x.requires_grad and torch.is_grad_enabled():
        return _cpu_tanh_with_grad(x)
    return _cpu_tanh(x)


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight + bias`` per agent: ``(N, M, in) x (N, in, out) -> (N, M, out)``.

    A single output column is computed as a product and a sum: as a batched matrix product
    its kernel (matrix-vector for one agent, matrix-matrix for several) would change the
    summation order with the number of agents, and agents would no longer be independent.
    Compiled, small layers are too (:data:`FUSED_PRODUCT_MAX_SIZE`): a few outputs one column
    at a time (each a product and a sum over the contiguous inputs, so that inductor vectorises
    over the inputs, not over a few outputs), a few inputs as one broadcast product summed over
    them (vectorised over the outputs)."""
    outputs = weight.shape[-1]
    compiling = torch.compiler.is_compiling()
    if outputs == 1 or (compiling and outputs <= FUSED_PRODUCT_MAX_SIZE):
        columns = [(x * weight[:, None, :, j]).sum(-1) for j in range(outputs)]
        return torch.stack(columns, dim=-1) + bias[:, None]
    if compiling and weight.shape[-2] <= FUSED_PRODUCT_MAX_SIZE:
        return (x.unsqueeze(-1) * weight[:, None]).sum(-2) + bias[:, None]
    return torch.baddbmm(bias[:, None], x, weight)


FUSED_PRODUCT_MAX_SIZE = 8
"""Inside a compiled graph, a layer with at most this many inputs or outputs (an observation's
few features into the first layer, a head's few actions) is products and sums, which inductor
fuses with the elementwise work around it: as a batched matrix product call it costs more in
call overhead than in arithmetic (measured in benchmarks/RESULTS.md, "One graph per gradient
step" and "Small heads one column at a time"). Eager code keeps the matrix product."""


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

    Plasticity injection (Nikishin et al. 2023; ``spec.injections`` slots): the trailing
    ``spec.injected_layers`` layers form a *block* ``h(z; theta)`` on the features ``z`` of the
    layers before it. Slot ``j`` holds two frozen copies of the block's parameters,
    ``{role}.injection{j}.old.{layer}.{suffix}`` and ``{role}.injection{j}.fresh.{...}``, and a
    per-agent switch ``{role}.injection{j}.on`` ``(N, 1)``; each output is
    ``h(z; theta) + sum_j on_j * (h(z; old_j) - h(z; fresh_j))``. Injecting into slot ``j``
    copies ``theta`` into ``old_j``, draws a fresh ``theta`` and copies it into ``fresh_j``, and
    sets ``on_j``: the outputs are unchanged at that moment and only ``theta`` (and the layers
    before the block) train. The copies are zeros and switched off until then, and
    :attr:`frozen_names` lists them for the trainer to freeze.

    Args:
        role: the network's name, the prefix of its parameters (``actor``, ``critic``, ``q``).
        spec: widths, activation, normalisation, injection slots.
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
        if not isinstance(spec.activation, str) or spec.activation not in ACTIVATIONS:
            raise ValueError(f"{role}: unknown activation {spec.activation!r}")
        if spec.norm not in ("none", "layernorm"):
            raise ValueError(f"{role}: unknown normalisation {spec.norm!r}")
        depth = len(spec.hidden)
        if spec.injections < 0:
            raise ValueError(f"{role}: injections must be >= 0, got {spec.injections}")
        if not 1 <= spec.injected_layers <= depth + 1:
            raise ValueError(
                f"{role}: injected_layers {spec.injected_layers} must be 1..{depth + 1} (the "
                f"output heads and up to all {depth} hidden layers)"
            )
        self.role, self.spec, self.in_dim, self.heads = role, spec, in_dim, dict(heads)
        self.activation = ACTIVATIONS[spec.activation]
        widen = 2 if spec.activation == "crelu" else 1
        self.fan_ins = [in_dim, *(w * widen for w in spec.hidden)]
        self.hidden_layers = [f"{role}.{i}" for i in range(depth)]
        self.layers = [*self.hidden_layers, *(f"{role}.{h}" for h in self.heads)]
        self.block_start = depth - (spec.injected_layers - 1)
        """index of the first hidden layer of the injected block"""
        self.block_layers = [
            *self.hidden_layers[self.block_start :],
            *(f"{role}.{h}" for h in self.heads),
        ]

    @property
    def feature_size(self) -> int:
        """Width of the last hidden layer's output (what the heads read)."""
        return self.fan_ins[-1]

    @property
    def init_gains(self) -> dict[str, float]:
        """Per layer, the orthogonal gain its weights are initialised with (hidden layers
        the spec's, heads their own)."""
        gains = dict.fromkeys(self.hidden_layers, float(self.spec.hidden_gain))
        gains.update({f"{self.role}.{h}": float(gain) for h, (_, gain) in self.heads.items()})
        return gains

    @property
    def frozen_names(self) -> list[str]:
        """The parameters this network holds but never trains (plasticity injection's copies
        and switches)."""
        prefixes = tuple(f"{self.role}.injection{j}." for j in range(self.spec.injections))
        return [name for name in self._names() if name.startswith(prefixes)]

    def _names(self) -> list[str]:
        return list(self.init_agent(torch.Generator().manual_seed(0), zeros=True))

    def init_agent(self, generator: torch.Generator, *, zeros: bool = False) -> Params:
        """One agent's parameters (no agent dimension), drawn from ``generator``: orthogonal
        weights (hidden layers first, then heads, in order), zero biases, unit LayerNorm
        gains; injection copies zero and switched off. (``zeros``: shapes only, no draws.)"""
        params: Params = {}

        def weight(rows: int, cols: int, gain: float) -> Tensor:
            if zeros:
                return torch.zeros(rows, cols)
            return orthogonal(rows, cols, gain, generator)

        for i, (layer, width) in enumerate(zip(self.hidden_layers, self.spec.hidden, strict=True)):
            params[f"{layer}.weight"] = weight(self.fan_ins[i], width, self.spec.hidden_gain)
        for head, (width, gain) in self.heads.items():
            params[f"{self.role}.{head}.weight"] = weight(self.feature_size, width, gain)
        for layer, width in zip(self.hidden_layers, self.spec.hidden, strict=True):
            params[f"{layer}.bias"] = torch.zeros(width)
            if self.spec.norm == "layernorm":
                params[f"{layer}.norm.weight"] = torch.ones(width)
                params[f"{layer}.norm.bias"] = torch.zeros(width)
        for head, (width, _) in self.heads.items():
            params[f"{self.role}.{head}.bias"] = torch.zeros(width)
        block = [
            name
            for name in params
            if any(name.startswith(f"{layer}.") for layer in self.block_layers)
        ]
        for slot in range(self.spec.injections):
            params[f"{self.role}.injection{slot}.on"] = torch.zeros(1)
            for kind in INJECTION_COPIES:
                for name in block:
                    params[injection_name(self.role, slot, kind, name)] = torch.zeros_like(
                        params[name]
                    )
        return params

    def _get(
        self, params: Mapping[str, Tensor], layer: str, suffix: str, copy: tuple[int, str] | None
    ) -> Tensor:
        """Parameter ``{layer}.{suffix}``, or its frozen injection copy ``(slot, kind)``."""
        if copy is None:
            return params[f"{layer}.{suffix}"]
        slot, kind = copy
        return params[injection_name(self.role, slot, kind, f"{layer}.{suffix}")].detach()

    def _hidden(
        self,
        params: Mapping[str, Tensor],
        h: Tensor,
        layers: list[str],
        copy: tuple[int, str] | None,
        record: dict[str, Tensor] | None,
    ) -> Tensor:
        for layer in layers:
            h = linear(
                h, self._get(params, layer, "weight", copy), self._get(params, layer, "bias", copy)
            )
            if self.spec.norm == "layernorm":
                h = torch.nn.functional.layer_norm(h, h.shape[-1:])
                h = (
                    h * self._get(params, layer, "norm.weight", copy)[:, None]
                    + self._get(params, layer, "norm.bias", copy)[:, None]
                )
            h = self.activation(h)
            if record is not None:
                record[layer] = h.detach()
        return h

    def _block(
        self,
        params: Mapping[str, Tensor],
        z: Tensor,
        heads: list[str],
        copy: tuple[int, str] | None,
        record: dict[str, Tensor] | None,
    ) -> list[Tensor]:
        h = self._hidden(params, z, self.hidden_layers[self.block_start :], copy, record)
        return [
            linear(
                h,
                self._get(params, f"{self.role}.{head}", "weight", copy),
                self._get(params, f"{self.role}.{head}", "bias", copy),
            )
            for head in heads
        ]

    def outputs(
        self,
        params: Mapping[str, Tensor],
        x: Tensor,
        heads: Sequence[str] | None = None,
        record: dict[str, Tensor] | None = None,
    ) -> list[Tensor]:
        """The output heads ``heads`` (default: all, in order), each ``(N, M, width)``, for
        ``x`` ``(N, M, in)``; with ``record``, each hidden layer's post-activation output is
        stored there (detached) under its layer name."""
        names = list(self.heads) if heads is None else list(heads)
        z = self._hidden(params, x, self.hidden_layers[: self.block_start], None, record)
        out = self._block(params, z, names, None, record)
        for slot in range(self.spec.injections):
            on = params[f"{self.role}.injection{slot}.on"].detach()[:, None, :]  # (N, 1, 1)
            old = self._block(params, z, names, (slot, "old"), None)
            fresh = self._block(params, z, names, (slot, "fresh"), None)
            out = [o + on * (a - b) for o, a, b in zip(out, old, fresh, strict=True)]
        return out

    def __call__(
        self, params: Mapping[str, Tensor], x: Tensor, record: dict[str, Tensor] | None = None
    ) -> Tensor:
        """The first head: ``(N, M, in) -> (N, M, out)``."""
        return self.outputs(params, x, [next(iter(self.heads))], record)[0]


INJECTION_COPIES = ("old", "fresh")
"""The two frozen copies an injection slot holds: the block as it was, and the fresh block the
trainable parameters restart from."""


def injection_name(role: str, slot: int, kind: str, name: str) -> str:
    """The frozen copy ``kind`` (``old`` / ``fresh``) in injection ``slot`` of the block
    parameter ``name`` (``{role}.{layer}.{suffix}``):
    ``{role}.injection{slot}.{kind}.{layer}.{suffix}``."""
    return f"{role}.injection{slot}.{kind}.{name.removeprefix(f'{role}.')}"


def stack_agents(per_agent: list[Params], device: torch.device) -> Params:
    """Stack per-agent parameter dicts (same keys, same shapes) into ``(N, ...)`` tensors."""
    return {k: torch.stack([p[k] for p in per_agent]).to(device) for k in per_agent[0]}

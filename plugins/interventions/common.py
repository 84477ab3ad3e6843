"""What the built-in interventions share: which parameters they touch and per-agent
broadcasting of ``(N,)`` vectors."""

from __future__ import annotations

from typing import Literal

import torch

from ctxrl.errors import ConfigError
from ctxrl.interventions import OPTIMIZER_RESETS, OptimizerReset, TrainingView

Tensor = torch.Tensor
ParameterSet = Literal["weights", "all"]
"""``weights``: the weight matrices ``{layer}.weight`` ``(N, in, out)`` of every network layer;
``all``: every trained parameter (biases, LayerNorm gains and biases, and parameters outside
the networks such as PPO's log standard deviation)."""
PARAMETER_SETS: tuple[ParameterSet, ...] = ("weights", "all")


def weight_names(view: TrainingView) -> list[str]:
    """``{layer}.weight`` of every layer of every network role, in the view's order."""
    return [f"{layer}.weight" for layers in view.layers.values() for layer in layers]


def network_names(view: TrainingView) -> list[str]:
    """Every parameter of the networks' layers (weights, biases, LayerNorm gains and biases),
    in ``view.params`` order; parameters outside the networks are left out."""
    prefixes = tuple(f"{layer}." for layers in view.layers.values() for layer in layers)
    return [name for name in view.params if name.startswith(prefixes)]


def parameter_names(view: TrainingView, include: ParameterSet) -> list[str]:
    """The names of the parameters in the set ``include`` (see :data:`ParameterSet`)."""
    return weight_names(view) if include == "weights" else list(view.params)


def per_agent(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ``(N,)`` shaped ``(N, 1, ..., 1)`` to broadcast against ``like`` ``(N, ...)``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def masked_normal(view: TrainingView, columns: int, dtype: torch.dtype) -> Tensor:
    """Standard normal numbers ``(N, columns)`` drawn from the random streams of the agents the
    intervention applies to (``view.mask``), zeros for the others, whose streams do not
    advance: an agent an intervention leaves out trains exactly as without it (its stream also
    draws its algorithm's sampling noise)."""
    active = view.mask > 0
    if bool(active.all()):
        return view.rng.normal(columns, dtype=dtype)
    index = active.nonzero().squeeze(1)
    out = torch.zeros(view.num_agents, columns, dtype=dtype, device=view.mask.device)
    if len(index):
        out[index] = view.rng.normal(columns, index, dtype=dtype)
    return out


def squared_norm(tensor: Tensor) -> Tensor:
    """Per-agent squared L2 norm of an agent-stacked tensor ``(N, ...)``: ``(N,)``."""
    return tensor.square().reshape(tensor.shape[0], -1).sum(dim=1)


# ------------------------------------------------------------------- unit surgery (resets)
def hidden_layers(view: TrainingView) -> list[tuple[str, list[str]]]:
    """Every hidden layer of every role with the layers that read its output: the next hidden
    layer, or for the last hidden layer every output head of the role (``head``, DQN's dueling
    ``value``). Hidden layers are named ``{role}.{i}`` with an integer ``i``."""
    out: list[tuple[str, list[str]]] = []
    for layers in view.layers.values():
        hidden = [layer for layer in layers if layer.rsplit(".", 1)[-1].isdigit()]
        heads = [layer for layer in layers if layer not in hidden]
        for index, layer in enumerate(hidden):
            out.append((layer, [hidden[index + 1]] if index + 1 < len(hidden) else heads))
    return out


def head_layers(view: TrainingView) -> list[str]:
    """The output heads of every role (every layer that is not a hidden layer)."""
    return [
        layer
        for layers in view.layers.values()
        for layer in layers
        if not layer.rsplit(".", 1)[-1].isdigit()
    ]


def initial_gain(view: TrainingView, layer: str) -> Tensor:
    """Per-agent orthogonal-initialisation gain of ``layer`` ``(N,)``: the trainer's own
    (``view.init_gains``), so that a warm-started network re-draws units at the initialiser's
    scale, not at the trained source's (a reset head of gain 0.01 came back at the source's
    norm). A view without ``init_gains`` (a trainer of its own) has it recovered from the
    initial weights: an orthogonal ``(in, out)`` matrix scaled by ``gain`` has ``||W||_F^2 =
    gain^2 min(in, out)``."""
    weight = view.initial_params[f"{layer}.weight"]
    gains = getattr(view, "init_gains", None)
    if gains is not None and layer in gains:
        return torch.full(
            (weight.shape[0],), float(gains[layer]), dtype=weight.dtype, device=weight.device
        )
    return (squared_norm(weight) / min(weight.shape[1], weight.shape[2])).sqrt()


def fresh_orthogonal(view: TrainingView, layer: str, agents: Tensor) -> Tensor:
    """Freshly initialised weights of ``layer`` for the agents ``agents`` (int64 indices ``(K,)``):
    ``(K, in, out)``, each the trainers' orthogonal initialisation
    (``torch.nn.init.orthogonal_``'s algorithm: QR of a standard normal matrix, signs fixed by
    ``R``'s diagonal) at the layer's initial gain (:func:`initial_gain`), from each agent's own
    random stream (only those agents' streams advance). One QR per agent, so that an agent's
    draw cannot depend on the batch (a batched QR may change its kernel with the batch size)."""
    weight = view.params[f"{layer}.weight"]
    fan_in, width = weight.shape[1], weight.shape[2]
    gains = initial_gain(view, layer)[agents]
    normal = view.rng.normal(fan_in * width, agents, dtype=weight.dtype)
    out = torch.empty(len(agents), fan_in, width, dtype=weight.dtype, device=weight.device)
    for k in range(len(agents)):
        # torch's layout (out, in) = (rows, cols); orthogonal_ transposes a wide matrix
        flat = normal[k].view(width, fan_in)
        wide = width < fan_in
        q, r = torch.linalg.qr(flat.T if wide else flat)
        q = q * torch.sign(torch.diagonal(r))[None, :]
        out[k] = (q.T if wide else q).T * gains[k]
    return out


def frozen_copies(view: TrainingView, layer: str) -> list[str]:
    """Plasticity injection's frozen copies of ``layer`` (``old`` and ``fresh`` of every slot,
    as layer names ``{role}.injection{j}.{kind}.{i}``) that hold a weight."""
    from ctxrl_plugins.training.networks import INJECTION_COPIES, injection_name

    role = layer.split(".", 1)[0]
    copies: list[str] = []
    slot = 0
    while f"{role}.injection{slot}.on" in view.params:
        for kind in INJECTION_COPIES:
            name = injection_name(role, slot, kind, layer)
            if f"{name}.weight" in view.params:
                copies.append(name)
        slot += 1
    return copies


def copies_reading(view: TrainingView, layer: str, reader: str) -> list[str]:
    """The frozen copies of ``reader`` that read the live ``layer``'s units: all of them when
    ``layer`` lies before the injected block (the block's copies start from its output), none
    when ``layer`` is in the block (each copy reads its own copy of it). What changes a live
    unit's outgoing weights must change these copies' rows too."""
    return [] if frozen_copies(view, layer) else frozen_copies(view, reader)


def reinitialise_units(
    view: TrainingView,
    layer: str,
    readers: list[str],
    units: Tensor,
    fresh: Tensor,
    optimizer_reset: OptimizerReset,
) -> None:
    """Re-initialise the units ``units`` (bool ``(N, width)``) of hidden ``layer``: incoming
    weights from ``fresh`` ``(N, in, width)``, bias 0 (LayerNorm gain 1, bias 0), outgoing
    weights (the rows of every layer in ``readers`` that read the unit; with CReLU the two
    rows of its two halves; and those rows of plasticity injection's frozen copies of the
    readers, which read the unit too) 0; and the optimizer state of all those elements reset
    as ``optimizer_reset`` says. Only ``units`` change (callers clear the rows of agents they
    leave alone)."""
    params = view.params
    width = units.shape[1]
    with torch.no_grad():
        incoming = params[f"{layer}.weight"]
        column = units[:, None, :].expand_as(incoming)
        incoming.copy_(torch.where(column, fresh, incoming))
        view.optimizer.reset(f"{layer}.weight", column, optimizer_reset)
        for suffix, value in (("bias", 0.0), ("norm.weight", 1.0), ("norm.bias", 0.0)):
            name = f"{layer}.{suffix}"
            if name in params:
                params[name].masked_fill_(units, value)
                view.optimizer.reset(name, units, optimizer_reset)
        for reader in readers:
            outgoing = params[f"{reader}.weight"]
            fold = outgoing.shape[1] // width  # 2 with CReLU: [relu(x), relu(-x)]
            row = units.repeat(1, fold)[:, :, None].expand_as(outgoing)
            outgoing.masked_fill_(row, 0.0)
            view.optimizer.reset(f"{reader}.weight", row, optimizer_reset)
            for copy in copies_reading(view, layer, reader):  # never trained: no optimizer state
                params[f"{copy}.weight"].masked_fill_(row, 0.0)


def fresh_parameters(view: TrainingView, layer: str, agents: Tensor) -> dict[str, Tensor]:
    """A fresh initialisation of every parameter of ``layer`` for ``agents`` (int64 indices
    ``(K,)``), each ``(K, ...)``: weights by :func:`fresh_orthogonal`, biases 0, LayerNorm gains
    1 and biases 0 (the trainers' initialisation)."""
    out: dict[str, Tensor] = {}
    for name, value in view.params.items():
        if not name.startswith(f"{layer}."):
            continue
        suffix = name.removeprefix(f"{layer}.")
        if suffix == "weight":
            out[name] = fresh_orthogonal(view, layer, agents)
        else:
            fill = 1.0 if suffix == "norm.weight" else 0.0
            out[name] = torch.full_like(value[agents], fill)
    return out


def unfrozen(view: TrainingView, name: str, agents: Tensor) -> Tensor:
    """``agents`` ``(N,)`` bool without those for which a warm start froze parameter ``name``."""
    return agents & ~view.frozen[name] if name in view.frozen else agents


def optimizer_reset_option(value: object, owner: str) -> OptimizerReset:
    """``value`` as an ``optimizer_reset`` option of intervention ``owner``, or a
    :class:`~ctxrl.errors.ConfigError` naming both and the choices."""
    if value not in OPTIMIZER_RESETS:
        raise ConfigError(f"{owner}: optimizer_reset {value!r}: expected one of {OPTIMIZER_RESETS}")
    return value


def use_per_element_steps(view: TrainingView, optimizer_reset: OptimizerReset) -> None:
    """With ``moments_and_step``, switch the optimizer to per-element step counts now, at setup.

    The trainers' Adam keeps one step count until the first ``moments_and_step`` reset and a
    per-element count from then on, for every agent, and the two bias-correction paths do not
    agree to the bit. Were the switch left to the first reset, an agent's arithmetic would
    depend on when another agent of the batch was first reset. A reset of no element makes
    the switch without changing any state."""
    if optimizer_reset == "moments_and_step" and view.params:
        name, value = next(iter(view.params.items()))
        none = torch.zeros(value.shape, dtype=torch.bool, device=value.device)
        view.optimizer.reset(name, none, "moments_and_step")

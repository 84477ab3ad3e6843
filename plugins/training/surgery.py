"""Warm starts and layer surgery: starting agents from given weights, re-initialising named
layers and finding the parameters a layer pattern names."""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch

from ctxrl.errors import CtxrlError
from ctxrl.registry import EnvSpec
from ctxrl_plugins.training.networks import Params

Tensor = torch.Tensor


def warm_start(
    algorithm: str,
    params: Params,
    init: Any,
    layers: list[str],
    reinit: Sequence[str],
    env: EnvSpec,
    twin: Any,
    *,
    optional: Collection[str] = (),
) -> None:
    """Copy ``init``'s weights (a policies object with ``params``, or agent-stacked parameters
    ``(N, ...)`` or ``(1, ...)``) into ``params``, except the ``reinit`` layers, which keep their
    fresh initialisation; a missing parameter or a shape that does not fit (another algorithm,
    network, observation or action space) is an error naming it, and so is a source parameter
    the network lacks (the source's function would not be copied). ``algorithm`` names the
    trainer in errors. Parameters in ``optional`` (plasticity injection's frozen copies) are
    copied when the source has them and otherwise keep their initialisation; a role with a
    ``reinit`` layer keeps its own (injections off), not the source's."""
    source: Mapping[str, Tensor] = init.params if hasattr(init, "params") else init
    source_env = getattr(init, "env", None)
    missing = sorted(set(params) - set(source) - set(optional))
    if missing:
        raise CtxrlError(
            f"{algorithm}: the warm-start policy has no parameter {missing[0]!r} (a "
            "different algorithm or network); its parameters: "
            f"{', '.join(sorted(source)[:8])}"
        )
    unused = sorted(set(source) - set(params))
    if unused:
        raise CtxrlError(
            f"{algorithm}: the warm-start policy has parameters this network lacks "
            f"({', '.join(unused[:8])}): it was trained with another network (normalisation, "
            "a dueling head, injected blocks), which copying part of it would not reproduce"
        )
    keep = set(matching(reinit, layers, params, "reinit"))
    # a role with a re-initialised layer drops the source's plasticity injections (their
    # switches and frozen copies keep their initialisation, off): an injected slot adds
    # h(old) - h(fresh_0) of the source's block, which a fresh layer would not have
    reset_roles = {name.split(".", 1)[0] for name in keep}
    keep |= {
        name
        for name in params
        if name.split(".", 1)[0] in reset_roles and name.split(".")[1].startswith("injection")
    }
    n = next(iter(params.values())).shape[0]
    with torch.no_grad():
        for name, value in params.items():
            if name in keep or name not in source:
                continue
            weights = source[name].to(value.device, value.dtype)
            if weights.shape[0] == 1 and n > 1:
                weights = weights.expand(n, *weights.shape[1:])
            if weights.shape[1:] == value.shape[1:] and weights.shape != value.shape:
                raise CtxrlError(
                    f"{algorithm}: the warm-start policy has {weights.shape[0]} agents and this "
                    f"program {n}: give one source agent per agent, or a single one for all"
                )
            if weights.shape != value.shape:
                what = (
                    "observation"
                    if name.endswith(".0.weight")
                    else "action"
                    if ".head." in name
                    else "network"
                )
                raise CtxrlError(
                    f"{algorithm}: cannot warm-start {env.name} (observation size "
                    f"{twin.observation_size}, actions {twin.discrete_actions or 'continuous'}"
                    f") from a policy of {source_env or 'another env'}: parameter "
                    f"{name!r} has shape {tuple(weights.shape)}, expected "
                    f"{tuple(value.shape)} (the {what} spaces differ)"
                )
            value.copy_(weights)


def matching(
    patterns: Sequence[str], layers: Sequence[str], params: Mapping[str, Tensor], option: str
) -> list[str]:
    """Parameter names of the layers matched by ``patterns`` (a layer name, a role, or an
    fnmatch pattern; a role also covers its parameters outside layers, e.g. ``actor`` the
    Gaussian policy's ``actor.log_std``); a pattern that matches nothing is an error listing
    the layers."""
    names: list[str] = []
    for pattern in patterns:
        matched = [
            layer
            for layer in layers
            if fnmatch.fnmatchcase(layer, pattern) or layer.split(".")[0] == pattern
        ]
        extra = [
            p
            for p in params
            if fnmatch.fnmatchcase(p, pattern) or p == pattern or p.split(".")[0] == pattern
        ]
        if not matched and not extra:
            raise CtxrlError(f"{option}: {pattern!r} matches no layer; layers: {', '.join(layers)}")
        for layer in matched:
            names += [p for p in params if p.startswith(f"{layer}.")]
        names += extra
    return list(dict.fromkeys(names))

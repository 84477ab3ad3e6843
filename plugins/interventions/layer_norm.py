"""``layer-norm``: LayerNorm on every hidden layer of every network.

Ba, Kiros and Hinton, "Layer Normalization" (2016, arXiv 1607.06450), placed before each hidden
activation with a learned per-unit gain (initialised to 1) and bias (0). Lyle et al.,
"Understanding plasticity in neural networks" (ICML 2023, arXiv 2303.01486) found it the most
effective single intervention against loss of plasticity. No options.
"""

from __future__ import annotations

from typing import ClassVar

from ctxrl.interventions import Intervention, NetworkSpec


class LayerNorm(Intervention):
    """Every role's network is built with ``norm="layernorm"``; it adds the parameters
    ``{layer}.norm.weight`` / ``{layer}.norm.bias`` ``(N, width)`` to each hidden layer."""

    name: ClassVar[str] = "layer-norm"
    changes_network: ClassVar[bool] = True

    def __init__(self) -> None:
        # an explicit signature, so that an unknown option is a TypeError naming it
        pass

    def network(self, role: str, spec: NetworkSpec) -> NetworkSpec:
        del role
        return spec.with_(norm="layernorm")

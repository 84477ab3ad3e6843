"""``crelu``: concatenated ReLU activations in every network.

Shang et al., "Understanding and Improving Convolutional Neural Networks via Concatenated
Rectified Linear Units" (ICML 2016, arXiv 1603.05201): ``crelu(x) = [relu(x), relu(-x)]``, so
every unit passes a signal (and a gradient) for either sign of its input. Abbas et al., "Loss of
Plasticity in Continual Deep Reinforcement Learning" (CoLLAs 2023, arXiv 2303.07507) proposed it
against loss of plasticity. The hidden widths are kept, so each hidden layer outputs twice its
width and the next layer's fan-in doubles. No options.
"""

from __future__ import annotations

from typing import ClassVar

from ctxrl.interventions import Intervention, NetworkSpec


class CReLU(Intervention):
    """Every role's network is built with ``activation="crelu"``."""

    name: ClassVar[str] = "crelu"
    changes_network: ClassVar[bool] = True

    def __init__(self) -> None:
        # an explicit signature, so that an unknown option is a TypeError naming it
        pass

    def network(self, role: str, spec: NetworkSpec) -> NetworkSpec:
        del role
        return spec.with_(activation="crelu")

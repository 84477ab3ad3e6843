"""The built-in interventions (entry point ``interventions``), each in its own module:

- ``l2``: L2 regularisation as a loss term, ``coef / 2 * ||theta||^2`` (coef 1e-4, weights);
  :mod:`ctxrl_plugins.interventions.l2`.
- ``l2-init``: ``coef * ||theta - theta_0||^2`` towards the initial parameters (Kumar et al.
  2023, coef 1e-2); :mod:`ctxrl_plugins.interventions.l2_init`.
- ``layer-norm``: LayerNorm before every hidden activation (Ba et al. 2016; Lyle et al. 2023);
  :mod:`ctxrl_plugins.interventions.layer_norm`.
- ``crelu``: concatenated ReLU activations (Shang et al. 2016; Abbas et al. 2023);
  :mod:`ctxrl_plugins.interventions.crelu`.
- ``shrink-perturb``: ``p <- shrink * p + perturb * N(0, 1)`` after every update (Ash & Adams
  2020, in the per-step form: shrink 1 - 1e-6 as Plasticine, perturb 1e-5 as Dohare et al.), or
  ``p <- shrink * p + perturb * p_fresh`` at context switches (``when="switch"``: 0.5, 0.5);
  :mod:`ctxrl_plugins.interventions.shrink_perturb`.
- ``redo``: recycle tau-dormant units every F gradient steps (Sokar et al. 2023, arXiv
  2302.12902; F 1000, tau 0.025); :mod:`ctxrl_plugins.interventions.redo`.
- ``continual-backprop``: replace the lowest-utility mature units (Dohare et al. 2024, arXiv
  2306.13812; rho 1e-4, maturity 10000, eta 0.99);
  :mod:`ctxrl_plugins.interventions.continual_backprop`.
- ``reset``: head or full re-initialisation at context switches, optionally every K updates
  (Nikishin et al. 2022, arXiv 2205.07802); :mod:`ctxrl_plugins.interventions.reset`.
- ``plasticity-injection``: freeze the last layers and train a fresh copy beside them, outputs
  unchanged (Nikishin et al. 2023, arXiv 2305.15555; last hidden layer + heads, once, at a
  switch); :mod:`ctxrl_plugins.interventions.injection`.
- ``spectral-reg``: ``coef * sum_l (sigma_max(W_l)^2 - 1)^2`` by power iteration (Lewandowski
  et al. 2024, arXiv 2406.06811; coef 1e-4); :mod:`ctxrl_plugins.interventions.spectral`.
- ``ns-adam``: Adam betas (0.99, 0.99) (Dohare et al. 2024);
  :mod:`ctxrl_plugins.interventions.ns_adam`.
- ``parseval``: ``coef * sum_l ||W^T W - s I||^2`` over hidden layers (Chung et al. 2024, arXiv
  2407.01704; coef 1e-3, s 1); :mod:`ctxrl_plugins.interventions.parseval`.
- ``wasserstein-init``: ``coef * sum_l ||sort(theta_l) - sort(theta_l0)||^2`` (Lewandowski et
  al. 2023, arXiv 2312.00246; coef 1e-2); :mod:`ctxrl_plugins.interventions.wasserstein_init`.

Registration stays light: torch and the intervention modules are imported only when an
intervention is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ctxrl import hookimpl
from ctxrl.interventions import Intervention
from ctxrl.registry import InterventionSpec


def _l2(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.l2 import L2

    return L2(**options)


def _l2_init(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.l2_init import L2Init

    return L2Init(**options)


def _layer_norm(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.layer_norm import LayerNorm

    return LayerNorm(**options)


def _crelu(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.crelu import CReLU

    return CReLU(**options)


def _shrink_perturb(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.shrink_perturb import ShrinkPerturb

    return ShrinkPerturb(**options)


def _redo(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.redo import ReDo

    return ReDo(**options)


def _continual_backprop(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.continual_backprop import ContinualBackprop

    return ContinualBackprop(**options)


def _reset(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.reset import Reset

    return Reset(**options)


def _injection(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.injection import PlasticityInjection

    return PlasticityInjection(**options)


def _spectral(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.spectral import SpectralRegularisation

    return SpectralRegularisation(**options)


def _ns_adam(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.ns_adam import NonStationaryAdam

    return NonStationaryAdam(**options)


def _parseval(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.parseval import Parseval

    return Parseval(**options)


def _wasserstein_init(**options: Any) -> Intervention:
    from ctxrl_plugins.interventions.wasserstein_init import WassersteinInit

    return WassersteinInit(**options)


@hookimpl
def ctxrl_register_interventions(register: Callable[[InterventionSpec], None]) -> None:
    register(
        InterventionSpec(
            "l2",
            _l2,
            description="L2 loss term coef/2 ||theta||^2 (coupled weight decay; coef 1e-4)",
        )
    )
    register(
        InterventionSpec(
            "l2-init",
            _l2_init,
            description="L2 towards the initial parameters, coef ||theta - theta_0||^2 "
            "(Kumar et al. 2023; coef 1e-2)",
        )
    )
    register(
        InterventionSpec(
            "layer-norm",
            _layer_norm,
            description="LayerNorm before every hidden activation (Ba et al. 2016)",
        )
    )
    register(
        InterventionSpec(
            "crelu",
            _crelu,
            description="concatenated ReLU activations (Shang et al. 2016)",
        )
    )
    register(
        InterventionSpec(
            "shrink-perturb",
            _shrink_perturb,
            description="after every update p <- shrink p + perturb N(0, 1) (Ash & Adams 2020; "
            "1 - 1e-6, 1e-5) or at switches p <- shrink p + perturb p_fresh (0.5, 0.5)",
        )
    )
    register(
        InterventionSpec(
            "redo",
            _redo,
            description="recycle tau-dormant units every F gradient steps (Sokar et al. 2023; "
            "F 1000, tau 0.025)",
        )
    )
    register(
        InterventionSpec(
            "continual-backprop",
            _continual_backprop,
            description="replace the lowest-utility mature units (Dohare et al. 2024; rho 1e-4, "
            "maturity 10000, eta 0.99)",
        )
    )
    register(
        InterventionSpec(
            "reset",
            _reset,
            description="re-initialise the heads (or all layers) at context switches "
            "(Nikishin et al. 2022)",
        )
    )
    register(
        InterventionSpec(
            "plasticity-injection",
            _injection,
            description="freeze the last layers, train a fresh copy beside them, outputs "
            "unchanged at injection (Nikishin et al. 2023; 2 layers, once, at a switch)",
        )
    )
    register(
        InterventionSpec(
            "spectral-reg",
            _spectral,
            description="coef sum_l (sigma_max(W_l)^2 - 1)^2 by power iteration (Lewandowski "
            "et al. 2024; coef 1e-4)",
        )
    )
    register(
        InterventionSpec(
            "ns-adam",
            _ns_adam,
            description="non-stationary Adam, betas (0.99, 0.99) (Dohare et al. 2024)",
        )
    )
    register(
        InterventionSpec(
            "parseval",
            _parseval,
            description="coef sum_l ||W^T W - s I||_F^2 over hidden layers (Chung et al. 2024; "
            "coef 1e-3, s 1)",
        )
    )
    register(
        InterventionSpec(
            "wasserstein-init",
            _wasserstein_init,
            description="coef sum_l ||sort(theta_l) - sort(theta_l0)||^2 (Lewandowski et al. "
            "2023; coef 1e-2)",
        )
    )

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

import importlib
import inspect
from collections.abc import Callable
from typing import Any, cast

from ctxrl import hookimpl
from ctxrl.interventions import Intervention
from ctxrl.registry import InterventionSpec


class _Lazy:
    """The factory of a built-in intervention: ``factory(**options)`` imports the class (and
    torch) only when called, and its signature is the class's, so that an option it does not
    take is an error that lists the options it takes (a ``**options`` wrapper names none)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = f"ctxrl_plugins.interventions.{module}", name

    def intervention_class(self) -> type[Intervention]:
        """The intervention's class (importing its module)."""
        return cast(type[Intervention], getattr(importlib.import_module(self.module), self.name))

    def __call__(self, **options: Any) -> Intervention:
        return self.intervention_class()(**options)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.intervention_class())

    def __repr__(self) -> str:
        return f"<factory of {self.module}.{self.name}>"


_l2 = _Lazy("l2", "L2")
_l2_init = _Lazy("l2_init", "L2Init")
_layer_norm = _Lazy("layer_norm", "LayerNorm")
_crelu = _Lazy("crelu", "CReLU")
_shrink_perturb = _Lazy("shrink_perturb", "ShrinkPerturb")
_redo = _Lazy("redo", "ReDo")
_continual_backprop = _Lazy("continual_backprop", "ContinualBackprop")
_reset = _Lazy("reset", "Reset")
_injection = _Lazy("injection", "PlasticityInjection")
_spectral = _Lazy("spectral", "SpectralRegularisation")
_ns_adam = _Lazy("ns_adam", "NonStationaryAdam")
_parseval = _Lazy("parseval", "Parseval")
_wasserstein_init = _Lazy("wasserstein_init", "WassersteinInit")


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

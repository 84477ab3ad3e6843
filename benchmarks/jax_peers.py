"""Shared by the benchmarks that compare with JAX peers (gymnax, rejax); imported only there."""

from __future__ import annotations

from typing import Any


def gymnax_cartpole_params(defaults: Any, masscart: Any = None, length: Any = None) -> Any:
    """gymnax CartPole parameters with one value per env along a leading axis of size ``n``:
    every scalar field broadcast, ``masscart`` and / or ``length`` (arrays ``(n,)``) set, and
    the derived ``total_mass`` and ``polemass_length`` recomputed (as ctxrl's twins do)."""
    import jax.numpy as jnp

    given = masscart if masscart is not None else length
    n = int(given.shape[0])
    fields = {
        name: jnp.full((n,), getattr(defaults, name))
        for name in vars(defaults)
        if jnp.ndim(getattr(defaults, name)) == 0
    }
    if masscart is not None:
        fields["masscart"] = masscart
    if length is not None:
        fields["length"] = length
    fields["total_mass"] = fields["masscart"] + fields["masspole"]
    fields["polemass_length"] = fields["masspole"] * fields["length"]
    return defaults.replace(**fields)

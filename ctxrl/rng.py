"""Counter-based random numbers for batched programs.

A batched trainer runs many independent agents in one program. If they shared one random
generator, agent ``i``'s random numbers would depend on how many agents share the batch and where
``i`` sits in it. Here every stream (an agent, an environment) has its own seed and counter, and
each number is a hash of ``(seed, counter, index)`` (splitmix64), so a stream's numbers depend on
nothing else. All operations are tensor operations: no Python loop over streams.
"""

from __future__ import annotations

import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 tensors (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


class StreamRNG:
    """Independent uniform streams, one per row of ``seeds``.

    Args:
        seeds: int64 tensor ``(S,)``, one seed per stream; its device is used throughout.
    """

    def __init__(self, seeds: torch.Tensor) -> None:
        self.seeds = splitmix64(seeds.to(torch.int64))
        self.counters = torch.zeros_like(self.seeds)

    def _keys(self, counters: torch.Tensor, seeds: torch.Tensor, columns: int) -> torch.Tensor:
        """Hashes of ``(seed, counter, index)`` for ``index < columns``; shapes broadcast."""
        index = torch.arange(columns, device=seeds.device, dtype=torch.int64)
        return splitmix64(seeds[..., None] ^ splitmix64(counters[..., None] * 1_000_003 + index))

    @staticmethod
    def _to_unit(keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        bits = 53 if dtype == torch.float64 else 24
        mantissa = _shift_right(keys, 64 - bits).to(dtype)
        return mantissa / float(1 << bits)

    def uniform(
        self,
        columns: int,
        streams: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        advance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Uniform numbers in [0, 1), shape ``(n, columns)`` for ``n`` streams (all when
        ``streams`` is None); each drawn stream's counter advances by one.

        ``advance`` (bool ``(S,)``, with ``streams`` None): rows for every stream, but only
        the counters where it is True advance, so those rows are exactly what
        ``uniform(columns, advance.nonzero())`` would draw, without the data-dependent index
        (a branch-free draw for code that is compiled or captured as a graph)."""
        seeds = self.seeds if streams is None else self.seeds[streams]
        counters = self.counters if streams is None else self.counters[streams]
        keys = self._keys(counters, seeds, columns)
        if streams is None:  # a new tensor, not an in-place add: CUDA graphs capture it
            self.counters = self.counters + (1 if advance is None else advance.to(torch.int64))
        else:
            self.counters[streams] += 1
        return self._to_unit(keys, dtype)

    def permutations(self, size: int) -> torch.Tensor:
        """A random permutation of ``range(size)`` per stream, ``(S, size)`` int64: the order
        that sorts ``uniform(size, dtype=torch.float64)`` (ties in their index order), drawn
        with the same counter advance. Sorted as the draw's 53-bit integers, which order exactly as
        the floats they would become do, and sort faster."""
        keys = self._keys(self.counters, self.seeds, size)
        self.counters = self.counters + 1
        return _shift_right(keys, 64 - 53).argsort(dim=1, stable=True)

    def uniform_calls(
        self, calls: int, columns: int, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """What ``calls`` successive ``uniform(columns)`` calls on all streams would return,
        stacked, ``(calls, S, columns)``, computed at once (a rollout draws its whole noise in
        one go instead of one small call per step). The counters advance by ``calls``."""
        steps = torch.arange(calls, device=self.seeds.device, dtype=torch.int64)
        counters = self.counters[None, :] + steps[:, None]  # (calls, S)
        keys = self._keys(counters, self.seeds.expand(calls, -1), columns)
        self.counters = self.counters + calls
        return self._to_unit(keys, dtype)

    def normal(
        self, columns: int, streams: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Standard normal numbers (Box-Muller), shape ``(n, columns)``."""
        return _box_muller(self.uniform(2 * columns, streams, torch.float64), columns, dtype)

    def normal_calls(
        self, calls: int, columns: int, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``calls`` successive ``normal(columns)`` draws at once, ``(calls, S, columns)``."""
        u = self.uniform_calls(calls, 2 * columns, torch.float64)
        return _box_muller(u, columns, dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"seeds": self.seeds, "counters": self.counters}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.seeds = state["seeds"].clone()
        self.counters = state["counters"].clone()


def _box_muller(u: torch.Tensor, columns: int, dtype: torch.dtype) -> torch.Tensor:
    """Standard normals from uniforms ``(..., 2 * columns)`` in [0, 1): ``(..., columns)``."""
    u1, u2 = u[..., :columns], u[..., columns:]
    radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 - u1 in (0, 1]
    return (radius * torch.cos(2 * torch.pi * u2)).to(dtype)

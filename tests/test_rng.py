"""Counter-based streams (:mod:`ctxrl.rng`): a stream's numbers depend on its seed and
counter alone, and the permutations PPO's minibatches use are the sort order of a draw."""

from __future__ import annotations

import torch

from ctxrl.rng import StreamRNG


def test_a_streams_numbers_do_not_depend_on_the_other_streams() -> None:
    alone = StreamRNG(torch.tensor([7]))
    together = StreamRNG(torch.tensor([3, 7, 11]))
    for _ in range(3):
        assert torch.equal(alone.uniform(5), together.uniform(5)[1:2])
    assert not torch.equal(together.uniform(5)[0], together.uniform(5)[2])


def test_permutations_are_the_sort_order_of_a_float64_draw() -> None:
    drawn, permuted = StreamRNG(torch.arange(16)), StreamRNG(torch.arange(16))
    for _ in range(20):
        expected = drawn.uniform(512, dtype=torch.float64).argsort(dim=1, stable=True)
        order = permuted.permutations(512)
        assert torch.equal(order, expected)
        assert torch.equal(order.sort(dim=1).values, torch.arange(512).expand(16, 512))
    assert torch.equal(permuted.counters, drawn.counters)  # the same draws follow
    assert torch.equal(permuted.uniform(4), drawn.uniform(4))

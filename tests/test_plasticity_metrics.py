"""Plasticity metrics on constructed cases whose values are known by hand."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pytest
import torch

from ctxrl.interventions import NetworkSpec
from ctxrl_plugins.training.networks import StackedMLP, stack_agents
from ctxrl_plugins.training.plasticity import (
    PlasticityOptions,
    distance_from_init,
    dormant_fraction,
    dormant_scores,
    effective_rank,
    feature_norm,
    gaussian_entropy,
    gradient_norm,
    inactive_fraction,
    layer_metrics,
    lyle_probe,
    policy_entropy,
    saturated_fraction,
    srank,
    stable_rank,
    top_hessian_eigenvalue,
    update_size,
    weight_magnitude,
)


def test_dormant_units_are_those_with_a_small_normalised_score() -> None:
    # unit means |h| = [1, 1, 2, 0]: layer mean 1, scores [1, 1, 2, 0]
    h = torch.tensor([[1.0, -1.0, 2.0, 0.0], [-1.0, 1.0, -2.0, 0.0]])[None]
    assert torch.equal(dormant_scores(h), torch.tensor([[1.0, 1.0, 2.0, 0.0]]))
    assert torch.equal(dormant_fraction(h, tau=0.0), torch.tensor([0.25]))
    # agent 0: units 0 and 1 dead; agent 1: unit 5 at 1 % of the others (under tau 0.025)
    torch.manual_seed(0)
    h = torch.rand(2, 100, 8) + 0.5
    h[0, :, :2] = 0.0
    h[1, :, 5] *= 0.01
    assert torch.equal(dormant_fraction(h), torch.tensor([2 / 8, 1 / 8]))
    assert torch.equal(dormant_fraction(h, tau=0.0), torch.tensor([2 / 8, 0.0]))
    assert torch.equal(dormant_fraction(torch.zeros(1, 5, 3)), torch.tensor([1.0]))


def test_inactive_and_saturated_units_by_their_share_of_samples() -> None:
    h = torch.zeros(1, 100, 4)
    h[0, :1, 0] = 1.0  # active on 1 % of the samples: inactive
    h[0, :2, 1] = 1.0  # on 2 %: active
    h[0, :, 2] = 0.3  # always active
    assert torch.equal(inactive_fraction(h), torch.tensor([2 / 4]))  # units 0 and 3
    t = torch.full((1, 100, 4), 0.995)
    t[0, :, 1] *= -1  # saturated at -1 counts too
    t[0, :1, 2] = 0.5  # unsaturated on 1 %: still saturated
    t[0, :2, 3] = 0.5  # on 2 %: not
    assert torch.equal(saturated_fraction(t), torch.tensor([3 / 4]))


def _with_singular_values(sigma: list[float], rows: int, cols: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=generator, dtype=torch.float64))
    s = torch.zeros(rows, cols, dtype=torch.float64)
    s[range(len(sigma)), range(len(sigma))] = torch.tensor(sigma, dtype=torch.float64)
    return u @ s @ v.T


def test_ranks_of_matrices_with_known_singular_values() -> None:
    equal = _with_singular_values([2.0, 2.0, 2.0], 20, 6, 0)  # rank 3, equal values
    skewed = _with_singular_values([3.0, 4.0], 20, 6, 1)  # rank 2: sigma 4 and 3
    tail = _with_singular_values([100.0, 0.5, 0.5, 0.5], 20, 6, 2)
    stacked = torch.stack([equal, skewed, tail])
    assert effective_rank(stacked)[0].item() == pytest.approx(3.0, abs=1e-9)
    p = torch.tensor([4 / 7, 3 / 7], dtype=torch.float64)
    assert effective_rank(stacked)[1].item() == pytest.approx(math.exp(-(p * p.log()).sum()))
    # srank: the top value alone is 100 / 101.5 = 98.5 % < 99 %, two reach 99.0 %
    assert srank(stacked).tolist() == [3.0, 2.0, 2.0]
    assert srank(stacked, delta=0.05).tolist() == [3.0, 2.0, 1.0]
    assert stable_rank(stacked)[0].item() == pytest.approx(3.0)
    assert stable_rank(stacked)[1].item() == pytest.approx(25 / 16)
    assert stable_rank(stacked)[2].item() == pytest.approx(1 + 0.75 / 10_000)
    zero = torch.zeros(1, 5, 3)
    assert effective_rank(zero).item() == srank(zero).item() == stable_rank(zero).item() == 0.0


def test_weight_and_gradient_metrics_by_hand() -> None:
    w0 = torch.zeros(2, 2, 2)
    w = torch.tensor([[[1.0, -1.0], [1.0, -1.0]], [[3.0, 0.0], [0.0, 4.0]]])
    assert weight_magnitude(w).tolist() == [1.0, 7 / 4]
    assert distance_from_init(w, w0).tolist() == [2.0, 5.0]
    assert update_size(w, w0).tolist() == [1.0, 2.5]  # sqrt(25 / 4)
    grads = {"a": torch.tensor([[3.0], [0.0]]), "b": torch.tensor([[[4.0, 0.0]], [[1.0, 0.0]]])}
    assert gradient_norm(grads).tolist() == [5.0, 1.0]
    assert feature_norm(torch.tensor([[[3.0, 4.0], [0.0, 1.0]]])).tolist() == [3.0]


def test_policy_entropies() -> None:
    uniform = torch.zeros(2, 5, 4)
    uniform[1, :, 0] = 1e4  # agent 1 deterministic
    assert policy_entropy(uniform)[0].item() == pytest.approx(math.log(4))
    assert policy_entropy(uniform)[1].item() == pytest.approx(0.0, abs=1e-6)
    log_std = torch.tensor([[0.0, math.log(2.0)]])
    expected = 2 * (0.5 + 0.5 * math.log(2 * math.pi)) + math.log(2.0)
    assert gaussian_entropy(log_std).item() == pytest.approx(expected)


Loss = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


def _quadratic_losses(matrices: torch.Tensor) -> tuple[dict[str, torch.Tensor], Loss]:
    """Per-agent ``1/2 x^T A_i x + 1/2 y^T B_i y`` over two parameters: Hessian ``diag(A_i,
    B_i)``."""

    def loss(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x, y = params["x"], params["y"]
        first = 0.5 * torch.einsum("ni,nij,nj->n", x, matrices[:, :3, :3], x)
        second = 0.5 * torch.einsum("ni,nij,nj->n", y, matrices[:, 3:, 3:], y)
        return first + second

    n = matrices.shape[0]
    return {
        "x": torch.ones(n, 3, dtype=torch.float64),
        "y": torch.ones(n, 2, dtype=torch.float64),
    }, loss


def test_the_top_hessian_eigenvalue_of_quadratics() -> None:
    generator = torch.Generator().manual_seed(0)
    matrices = []
    tops = [5.0, 2.5, 9.0]
    for top in tops:
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
        a = q @ torch.diag(torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)) @ q.T
        b = torch.diag(torch.tensor([top, 0.2], dtype=torch.float64))
        matrices.append(torch.block_diag(a, b))
    params, loss = _quadratic_losses(torch.stack(matrices))
    estimate = top_hessian_eigenvalue(loss, params, iterations=100)
    assert estimate.tolist() == pytest.approx(tops, rel=1e-6)
    # agent 1 alone: the same estimate (same starting vector whatever the batch)
    alone_params, alone_loss = _quadratic_losses(torch.stack(matrices[1:2]))
    alone = top_hessian_eigenvalue(alone_loss, alone_params, iterations=100)
    assert alone.item() == pytest.approx(estimate[1].item(), rel=1e-12)


def test_the_lyle_probe_per_agent() -> None:
    net = StackedMLP("critic", NetworkSpec(hidden=(16, 16)), 3, {"head": (1, 1.0)})
    seeds = [4, 7]
    fresh = stack_agents(
        [net.init_agent(torch.Generator().manual_seed(s)) for s in seeds], torch.device("cpu")
    )
    inputs = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(1))
    probe = lyle_probe(net, fresh, inputs, init_seeds=seeds, steps=30, frequency=3.0)
    assert probe.loss.shape == (2,) and torch.isfinite(probe.loss).all()
    assert torch.equal(probe.loss, probe.baseline)  # a fresh network is its own baseline
    assert probe.ratio.tolist() == [1.0, 1.0]
    # agent 1 with every weight zero can only move its output bias: it fits far worse
    dead = {k: v.clone() for k, v in fresh.items()}
    for name, value in dead.items():
        if name.endswith("weight"):
            value[1] = 0.0
    crippled = lyle_probe(net, dead, inputs, init_seeds=seeds, steps=30, frequency=3.0)
    assert crippled.loss[0] == probe.loss[0]  # agent 0 untouched
    assert crippled.ratio[1] > 1.2, crippled
    # agent 0 alone probes the same as in the batch
    alone = lyle_probe(
        net,
        {k: v[:1] for k, v in fresh.items()},
        inputs[:1],
        init_seeds=seeds[:1],
        steps=30,
        frequency=3.0,
    )
    assert torch.allclose(alone.loss, probe.loss[:1], rtol=1e-5)
    again = stack_agents(
        [net.init_agent(torch.Generator().manual_seed(s)) for s in seeds], torch.device("cpu")
    )
    assert all(torch.equal(fresh[k], again[k]) for k in fresh)  # the probed network unchanged


def test_the_loops_record_per_layer_with_nan_for_a_missing_or_diverged_agent() -> None:
    net = StackedMLP("q", NetworkSpec(hidden=(8, 8), activation="relu"), 3, {"head": (2, 1.0)})
    seeds = [1, 2]
    params = stack_agents(
        [net.init_agent(torch.Generator().manual_seed(s)) for s in seeds], torch.device("cpu")
    )
    initial = {k: v.clone() for k, v in params.items()}
    params["q.0.weight"][0] += 0.5  # agent 0 moved by 0.5 per element of q.0
    x = torch.randn(2, 10, 3, generator=torch.Generator().manual_seed(0))
    x[1, 0, 0] = torch.nan  # agent 1 diverged
    recorded: dict[str, torch.Tensor] = {}
    net(params, x, recorded)
    options = PlasticityOptions(every=100)
    out = layer_metrics({"q": net}, params, initial, recorded, options)
    assert set(out) == {
        f"{metric}.q.{layer}"
        for metric in ("dormant", "effective_rank", "srank", "stable_rank", "feature_norm")
        for layer in (0, 1)
    } | {f"{m}.q.{layer}" for m in ("weight_magnitude", "distance_from_init") for layer in "01"} | {
        "weight_magnitude.q.head",
        "distance_from_init.q.head",
    }
    assert out["distance_from_init.q.0"].tolist() == pytest.approx([0.5 * math.sqrt(24), 0.0])
    assert math.isnan(out["srank.q.1"][1]) and not math.isnan(out["srank.q.1"][0])
    assert out["dormant.q.0"][0] == dormant_fraction(recorded["q.0"][:1])[0]
    missing = layer_metrics({"q": net}, params, initial, {}, options)
    assert missing.keys() == out.keys() and bool(missing["dormant.q.1"].isnan().all())


def test_with_crelu_a_unit_is_dormant_as_a_whole() -> None:
    """CReLU records both halves [relu(x), relu(-x)] of every unit: counted as units of their
    own, a layer whose pre-activations are all positive was half "dormant" (every relu(-x)
    silent) though ReDo, which adds the halves, recycles none of its units."""
    net = StackedMLP("q", NetworkSpec(hidden=(8,), activation="crelu"), 3, {"head": (2, 1.0)})
    params = stack_agents([net.init_agent(torch.Generator().manual_seed(1))], torch.device("cpu"))
    with torch.no_grad():
        params["q.0.bias"].fill_(100.0)  # every pre-activation positive
    x = torch.randn(1, 10, 3, generator=torch.Generator().manual_seed(0))
    recorded: dict[str, torch.Tensor] = {}
    net(params, x, recorded)
    assert recorded["q.0"].shape[-1] == 16
    out = layer_metrics({"q": net}, params, params, recorded, PlasticityOptions(every=100))
    assert out["dormant.q.0"].tolist() == [0.0]

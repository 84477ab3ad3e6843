"""Batched environment stepping throughput (steps/s): ctxrl's torch twins against gymnasium's own
numpy-vectorised CartPole and a SyncVectorEnv, in the same process.

    OMP_NUM_THREADS=1 python benchmarks/bench_envs.py            # CPU, one thread
    python benchmarks/bench_envs.py                              # CPU, default threads
    python benchmarks/bench_envs.py --device cuda --gymnax       # on a GPU machine

``--gymnax`` adds gymnax's CartPole (JAX, ``jax.vmap`` over per-env parameters, ``lax.scan``
over steps, jitted) on the default JAX device in the same run: the GPU comparison. gymnax pins
gymnasium < 1.4, so it is never a ctxrl dependency; install ``jax gymnax`` beside ctxrl for this.

Every env gets a different context (masscart / m spread over its range). Random actions are
drawn before timing. Prints a markdown table; ratios are against gymnasium's vector CartPole
(CartPole rows) or SyncVectorEnv (Pendulum rows) at the same batch size.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from ctxrl.plugins import get_host

BATCHES = (1, 64, 4096, 65536)


def _rate(
    step: Callable[[int], None],
    batch: int,
    budget_s: float,
    sync: Callable[[], None] = lambda: None,
) -> float:
    """Environment steps per second of ``step(t)`` (one call = ``batch`` env steps); ``sync``
    waits for queued work (a GPU's) before each reading of the clock."""
    step(0)  # warm-up
    sync()
    calls, started = 0, time.perf_counter()
    while True:
        for _ in range(10):
            step(calls)
            calls += 1
        sync()
        elapsed = time.perf_counter() - started
        if elapsed > budget_s:
            return calls * batch / elapsed


def twin_rate(
    name: str, feature: str, batch: int, device: str, budget_s: float, compiled: bool = False
) -> float:
    spec = get_host().registry.env(name)
    f = spec.context_space.feature(feature)
    values = torch.linspace(f.lower, f.upper, batch)
    env = spec.make_batched(batch, contexts={feature: values}, device=device, seed=0)
    env.reset()
    gen = torch.Generator(device=device).manual_seed(0)
    if env.discrete_actions:
        actions = torch.randint(0, env.discrete_actions, (64, batch), device=device, generator=gen)
    else:
        actions = torch.rand((64, batch), device=device, generator=gen) * 4 - 2
    if compiled:
        env.branch_free = True  # no data-dependent indexing: one graph
    step = torch.compile(env.step, dynamic=False) if compiled else env.step

    def run(t: int) -> None:
        step(actions[t % 64])

    if device.startswith("cuda"):
        return _rate(run, batch, budget_s, torch.cuda.synchronize)
    return _rate(run, batch, budget_s)


def gymnasium_vector_cartpole_rate(batch: int, budget_s: float) -> float:
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    env = CartPoleVectorEnv(num_envs=batch)
    env.reset(seed=0)
    env.masscart = np.linspace(0.1, 10.0, batch)  # per-env masses, derived terms recomputed
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length
    actions = np.random.default_rng(0).integers(0, 2, (64, batch))
    return _rate(lambda t: env.step(actions[t % 64]), batch, budget_s)


def gymnax_cartpole_rate(batch: int, budget_s: float) -> float:
    """gymnax CartPole-v1 with a per-env ``masscart`` (derived ``total_mass`` recomputed), random
    actions, 100 steps per jitted ``lax.scan`` call (auto-reset as gymnax does it)."""
    import jax
    import jax.numpy as jnp
    from gymnax import make
    from jax_peers import gymnax_cartpole_params

    env, defaults = make("CartPole-v1")
    params = gymnax_cartpole_params(defaults, masscart=jnp.linspace(0.1, 10.0, batch))
    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    _, state = jax.vmap(env.reset)(keys, params)
    inner = 100

    @jax.jit
    def roll(state: object, key: jax.Array) -> tuple[object, jax.Array]:
        def body(state: object, key: jax.Array) -> tuple[object, jax.Array]:
            step_key, action_key = jax.random.split(key)
            actions = jax.random.randint(action_key, (batch,), 0, 2)
            # (obs, state, reward, done, info) in gymnax 0.0.x; 1.x splits done in two
            out = jax.vmap(env.step)(jax.random.split(step_key, batch), state, actions, params)
            return out[1], out[2].sum()

        state, rewards = jax.lax.scan(body, state, jax.random.split(key, inner))
        return state, rewards.sum()

    holder = {"state": state}

    def run(t: int) -> None:
        holder["state"], total = roll(holder["state"], jax.random.PRNGKey(t))
        total.block_until_ready()

    return _rate(run, batch * inner, budget_s)


def sync_vector_rate(name: str, feature: str, batch: int, budget_s: float) -> float:
    import gymnasium as gym

    spec = get_host().registry.env(name)
    f = spec.context_space.feature(feature)
    values = np.linspace(f.lower, f.upper, batch)
    envs = gym.vector.SyncVectorEnv([lambda v=v: spec.make({feature: float(v)}) for v in values])
    envs.reset(seed=0)
    actions = np.stack([envs.action_space.sample() for _ in range(64)])
    return _rate(lambda t: envs.step(actions[t % 64]), batch, budget_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget-s", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--max-sync", type=int, default=4096, help="largest SyncVectorEnv batch")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd twins")
    parser.add_argument("--batches", type=int, nargs="*", default=list(BATCHES))
    parser.add_argument("--gymnax", action="store_true", help="also time gymnax's CartPole (JAX)")
    args = parser.parse_args()
    missing = [m for m in ("jax", "gymnax") if importlib.util.find_spec(m) is None]
    if args.gymnax and missing:  # before anything trains: the peer would fail at the end
        parser.error(
            f"--gymnax needs {', '.join(missing)} installed beside ctxrl (see the docstring)"
        )
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    device_name = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    print(
        f"device {args.device} ({device_name}), torch {torch.__version__}, "
        f"OMP_NUM_THREADS={threads}, torch threads {torch.get_num_threads()}\n"
    )
    print("| env | B | ctxrl twin (steps/s) | baseline | baseline (steps/s) | ratio |")
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        ours = twin_rate("CartPole", "masscart", batch, args.device, args.budget_s)
        base = gymnasium_vector_cartpole_rate(batch, args.budget_s)
        print(
            f"| CartPole | {batch} | {ours:,.0f} | gymnasium CartPoleVectorEnv | {base:,.0f} "
            f"| {ours / base:.2f}x |",
            flush=True,
        )
        if batch <= args.max_sync:
            sync = sync_vector_rate("CartPole", "masscart", batch, args.budget_s)
            print(
                f"| CartPole | {batch} | {ours:,.0f} | SyncVectorEnv (ctxrl envs) | {sync:,.0f} "
                f"| {ours / sync:.2f}x |",
                flush=True,
            )
        if args.gymnax:
            import jax

            peer = gymnax_cartpole_rate(batch, args.budget_s)
            print(
                f"| CartPole | {batch} | {ours:,.0f} | gymnax ({jax.devices()[0]}) | {peer:,.0f} "
                f"| {ours / peer:.2f}x |",
                flush=True,
            )
        if args.compile:
            compiled = twin_rate("CartPole", "masscart", batch, args.device, args.budget_s, True)
            print(
                f"| CartPole (compiled) | {batch} | {compiled:,.0f} | gymnasium "
                f"CartPoleVectorEnv | {base:,.0f} | {compiled / base:.2f}x |",
                flush=True,
            )
    for batch in args.batches:
        ours = twin_rate("Pendulum", "m", batch, args.device, args.budget_s)
        if batch <= args.max_sync:
            sync = sync_vector_rate("Pendulum", "m", batch, args.budget_s)
            print(
                f"| Pendulum | {batch} | {ours:,.0f} | SyncVectorEnv (ctxrl envs) | {sync:,.0f} "
                f"| {ours / sync:.2f}x |",
                flush=True,
            )
        else:
            print(f"| Pendulum | {batch} | {ours:,.0f} | - | - | - |", flush=True)


if __name__ == "__main__":
    main()

"""Batched PPO against Stable-Baselines3 PPO run once per context, same hyperparameters.

    OMP_NUM_THREADS=1 python benchmarks/bench_ppo.py --contexts 16 --steps 100000
    python benchmarks/bench_ppo.py --device cuda --skip-sb3 --rejax --contexts 1024 --steps 524288
    OMP_NUM_THREADS=1 python benchmarks/bench_ppo.py --compile off on on   # eager, cold, warm

``--rejax`` trains rejax's PPO (JAX: ``jax.vmap`` over the contexts of one jitted training
function) on the same contexts with the same hyperparameters in the same run, and times its
second call (the first compiles). rejax has no
learning-rate annealing, so with ``--rejax`` both sides train at a constant rate. Install
``jax rejax`` (and gymnax) beside ctxrl for it; they are never ctxrl dependencies.

Both use PureJaxRL's CartPole settings: 4 envs x 128 steps per update, 4 epochs x 4 minibatches,
lr 2.5e-4 annealed linearly, gamma 0.99, GAE lambda 0.95, clip 0.2, entropy 0.01, value 0.5,
max grad norm 0.5, separate 64-64 tanh actor and critic. Contexts: CartPole pole lengths
log-spaced over [0.25, 2] m. Reports wall-clock time of each, the ratio, and the final mean
return (20 deterministic episodes per context) of each side.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time

import numpy as np
import torch

from ctxrl.plugins import get_host
from ctxrl_plugins.training.compiling import evaluation_compiles, torch_compile_mode
from ctxrl_plugins.training.evaluation import evaluate_policies


def sb3_baseline(lengths: np.ndarray, steps: int, episodes: int) -> tuple[float, np.ndarray]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    spec = get_host().registry.env("CartPole")
    started, returns = time.perf_counter(), []
    for i, length in enumerate(lengths):
        context = {"length": float(length)}
        vec = make_vec_env(lambda context=context: spec.make(context), n_envs=4, seed=i)
        model = PPO(
            "MlpPolicy",
            vec,
            n_steps=128,
            batch_size=128,
            n_epochs=4,
            gamma=0.99,
            gae_lambda=0.95,
            clip_range=0.2,
            ent_coef=0.01,
            vf_coef=0.5,
            max_grad_norm=0.5,
            learning_rate=lambda progress: 2.5e-4 * progress,
            seed=i,
            device="cpu",
            verbose=0,
        )
        model.learn(total_timesteps=steps)
        env = spec.make(context)
        scores = []
        for episode in range(episodes):
            obs, _ = env.reset(seed=10_000 + episode)
            done, total = False, 0.0
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(int(action))
                total += reward
                done = terminated or truncated
            scores.append(total)
        returns.append(np.mean(scores))
    return time.perf_counter() - started, np.array(returns)


def rejax_peer(lengths: np.ndarray, steps: int) -> tuple[float, float, np.ndarray]:
    """rejax PPO on gymnax CartPole, one agent per pole length (``total_mass`` unchanged,
    ``polemass_length`` recomputed), vmapped in one jitted program. Returns (first call s,
    second call s, final mean return per context over rejax's 128 evaluation episodes)."""
    import jax
    import jax.numpy as jnp
    from jax_peers import gymnax_cartpole_params
    from rejax import PPO

    base = PPO.create(
        env="CartPole-v1",
        num_envs=4,
        num_steps=128,
        num_epochs=4,
        num_minibatches=4,
        learning_rate=2.5e-4,
        max_grad_norm=0.5,
        total_timesteps=steps,
        eval_freq=steps,
        gamma=0.99,
        gae_lambda=0.95,
        clip_eps=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        skip_initial_evaluation=True,
        agent_kwargs={"activation": "tanh", "hidden_layer_sizes": (64, 64)},
    )
    n = len(lengths)
    params = gymnax_cartpole_params(base.env_params, length=jnp.asarray(lengths, dtype=jnp.float32))

    def train_one(env_params: object, rng: jax.Array) -> object:
        return base.replace(env_params=env_params).train(rng)[1]

    train = jax.jit(jax.vmap(train_one))
    times, evaluation = [], None
    for call in range(2):
        started = time.perf_counter()
        evaluation = train(params, jax.random.split(jax.random.PRNGKey(call), n))
        jax.block_until_ready(evaluation)
        times.append(time.perf_counter() - started)
    _, returns = evaluation
    return times[0], times[1], np.asarray(returns)[:, -1].mean(axis=-1)


def batched(
    lengths: np.ndarray,
    steps: int,
    episodes: int,
    device: str,
    anneal_lr: bool = True,
    compile_mode: str = "off",
    rollout_segment: int | None = None,
) -> tuple[float, float, np.ndarray]:
    """Train batched PPO; returns (wall s, of which compiling s, mean return per context)."""
    registry = get_host().registry
    spec = registry.env("CartPole")
    params: dict[str, object] = {"anneal_lr": anneal_lr, "compile": compile_mode}
    if rollout_segment is not None:  # else the algorithm's own default
        params["rollout_segment"] = rollout_segment
    algorithm = registry.algorithm("batched-ppo").factory(params, device=device)
    contexts = [{"length": float(v)} for v in lengths]
    started = time.perf_counter()
    policies = algorithm.train_many(spec, contexts, list(range(len(contexts))), total_steps=steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    # printed before the evaluation: a run cut short there (a time limit) keeps its training time
    print(
        f"batched-ppo trained {len(contexts)} x {steps} steps in {elapsed:.1f} s "
        f"(compiling {algorithm.compile_s:.1f} s of it); evaluating",
        flush=True,
    )
    # each agent on its own context only (the diagonal: P lists of one context, not P x P)
    own = evaluate_policies(
        policies,
        spec,
        [[c] for c in contexts],
        episodes=episodes,
        seed=0,
        device=torch.device(device),
        per_policy=True,
        compile=evaluation_compiles(compile_mode, torch.device(device)),
    )
    return elapsed, algorithm.compile_s, own[:, 0].mean(axis=-1)


def matmul_floor(contexts: int, steps: int, device: str) -> tuple[float, float]:
    """The time the network arithmetic alone takes: the multiply-adds of a run (below) at the
    batched-matmul rate measured here on the update's largest product, ``(contexts, 128, 64) x
    (contexts, 64, 64)``. Returns (floor s, measured GFLOP/s). No implementation of these
    hyperparameters can train faster on this device; SB3 time / floor bounds the speed-up.

    Multiply-adds per env step and agent, 64-64 actor and critic, 4 observations, 2 actions:
    ``net = 4*64 + 64*64 + 64*2 (actor) + 4*64 + 64*64 + 64 (critic)`` = 8,896. The rollout runs
    the actor once and the critic twice (the step's and the final observation's value); the
    update passes every sample 4 times (epochs), each time forward and backward (weights and
    inputs: 3 products of the forward's size)."""
    net = (4 * 64 + 64 * 64 + 64 * 2) + (4 * 64 + 64 * 64 + 64)
    actor = 4 * 64 + 64 * 64 + 64 * 2
    per_step = actor + 2 * (net - actor) + 4 * 3 * net
    x = torch.randn(contexts, 128, 64, device=device)
    w = torch.randn(contexts, 64, 64, device=device)
    b = torch.randn(contexts, 64, device=device)
    for _ in range(20):
        torch.baddbmm(b[:, None], x, w)
    repeats = 200
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        torch.baddbmm(b[:, None], x, w)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    flops_per_s = repeats * 2 * contexts * 128 * 64 * 64 / (time.perf_counter() - started)
    return 2 * per_step * contexts * steps / flops_per_s, flops_per_s / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per context")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--rejax", action="store_true", help="also train rejax PPO (JAX)")
    parser.add_argument(
        "--rollout-segment",
        type=int,
        default=None,
        help="batched-ppo's rollout_segment (default: its own)",
    )
    parser.add_argument(
        "--constant-lr",
        action="store_true",
        help="no learning-rate annealing (as with --rejax), for runs compared with a --rejax run",
    )
    parser.add_argument(
        "--compile",
        nargs="*",
        default=["off"],
        choices=["off", "on", "auto"],
        help="batched-ppo's compile modes to time, one run each (on: its wall time includes "
        "compiling; a second run in the same process shows the time without it); none: "
        "batched-ppo is not run (the peers alone)",
    )
    args = parser.parse_args()
    missing = [m for m in ("jax", "rejax", "gymnax") if importlib.util.find_spec(m) is None]
    if args.rejax and missing:  # before anything trains: the peer would fail at the end
        parser.error(
            f"--rejax needs {', '.join(missing)} installed beside ctxrl (see the docstring)"
        )
    lengths = np.geomspace(0.25, 2.0, args.contexts)
    card = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    print(
        f"{platform.machine()} {platform.processor()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {args.device}{card}, torch.compile mode "
        f"{torch_compile_mode()}"
    )
    runs: list[float] = []
    for mode in args.compile:
        ours, compiling, ours_returns = batched(
            lengths,
            args.steps,
            args.episodes,
            args.device,
            not (args.rejax or args.constant_lr),
            mode,
            args.rollout_segment,
        )
        runs.append(ours)
        per_context = (
            f" (per context {np.round(ours_returns).tolist()})" if args.contexts <= 32 else ""
        )
        print(
            f"batched-ppo (compile: {mode}): {args.contexts} contexts x {args.steps} steps in "
            f"{ours:.1f} s, {compiling:.1f} s of it compiling "
            f"({args.contexts * args.steps / ours:,.0f} steps/s); mean return "
            f"{ours_returns.mean():.1f}, lowest {ours_returns.min():.1f}{per_context}",
            flush=True,
        )
    # the ratios below use the fastest run (none with `--compile` alone: the peers only)
    ours = min(runs) if runs else float("nan")
    if args.rejax:
        import jax

        first, second, peer_returns = rejax_peer(lengths, args.steps)
        print(
            f"rejax PPO ({jax.devices()[0]}): first call (with compilation) {first:.1f} s, "
            f"second call {second:.1f} s ({args.contexts * args.steps / second:,.0f} steps/s); "
            f"mean return {peer_returns.mean():.1f}; batched-ppo / rejax steps/s: "
            f"{second / ours:.2f}x",
            flush=True,
        )
    if args.skip_sb3:
        return
    base, base_returns = sb3_baseline(lengths, args.steps, args.episodes)
    print(
        f"sb3 PPO, one context after another: {base:.1f} s "
        f"({args.contexts * args.steps / base:,.0f} steps/s); mean return "
        f"{base_returns.mean():.1f} (per context {np.round(base_returns).tolist()})"
    )
    print(f"speed-up: {base / ours:.1f}x")
    floor, gflops = matmul_floor(args.contexts, args.steps, args.device)
    print(
        f"matmul floor: {floor:.1f} s of network arithmetic at {gflops:.0f} GFLOP/s, so no "
        f"implementation exceeds {base / floor:.0f}x SB3 here; batched-ppo is at "
        f"{floor / ours:.0%} of the floor's speed"
    )


if __name__ == "__main__":
    main()

"""Traffic env throughput: agent steps/s per worker and in aggregate, 1 and 2 worker processes,
TraCI against libsumo, in one script run.

    python benchmarks/bench_traffic.py [--seconds 1800] [--episodes 2]

Each worker is a fresh process (libsumo runs one simulation per process) that builds the
default-context env and plays random phases for ``--episodes`` episodes of ``--seconds``
simulated seconds (10 s per agent step). The env construction (netconvert, SUMO start) is not
timed; the episodes' resets are.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as queue_module
import time


def _worker(backend: str, seconds: int, episodes: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    if backend == "libsumo":
        os.environ["LIBSUMO_AS_TRACI"] = "1"
    import sumo  # noqa: F401  (sets SUMO_HOME before sumo_rl is imported)

    from ctxrl.plugins import get_host

    env = get_host().registry.env("TrafficSignal").make(num_seconds=seconds)
    steps, started = 0, time.perf_counter()
    for episode in range(episodes):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            steps += 1
            done = terminated or truncated
    queue.put((steps, time.perf_counter() - started))
    env.close()


def run(backend: str, workers: int, seconds: int, episodes: int) -> tuple[float, float]:
    context = mp.get_context("spawn")
    queue: mp.Queue = context.Queue()  # type: ignore[type-arg]
    processes = [
        context.Process(target=_worker, args=(backend, seconds, episodes, queue))
        for _ in range(workers)
    ]
    for p in processes:
        p.start()
    results: list[tuple[int, float]] = []
    deadline = time.monotonic() + 1200
    while len(results) < workers:  # a worker that dies (its error on stderr) ends the run
        try:
            results.append(queue.get(timeout=1.0))
        except queue_module.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in processes:
                    p.kill()
                why = f"exit code {dead[0].exitcode}" if dead else "no result in 1200 s"
                raise SystemExit(f"a {backend} worker failed ({why}); its error is above") from None
    for p in processes:
        p.join()
    per_worker = sum(steps / elapsed for steps, elapsed in results) / workers
    aggregate = sum(steps for steps, _ in results) / max(elapsed for _, elapsed in results)
    return per_worker, aggregate


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--seconds", type=int, default=1800)
    parser.add_argument("--episodes", type=int, default=2)
    args = parser.parse_args()
    if args.seconds < 10 or args.episodes < 1:
        parser.error("--seconds needs at least 10 (one agent step) and --episodes at least 1")
    print("| backend | workers | agent steps/s per worker | aggregate steps/s |")
    print("|---|---|---|---|")
    for backend in ("traci", "libsumo"):
        for workers in (1, 2):
            per_worker, aggregate = run(backend, workers, args.seconds, args.episodes)
            print(f"| {backend} | {workers} | {per_worker:,.0f} | {aggregate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in one run (about 10 minutes on an H100 / H200):
#   1. batched env stepping against gymnax at B = 1 .. 65536        (bench_envs.py)
#   2. batched PPO (eager, compiled cold, compiled warm) against rejax at 64 / 256 / 1024
#      contexts x 524,288 steps (bench_ppo.py --compile off on on)
#   3. compile times and break-even points of compiled PPO and DQN (bench_compile.py)
#   4. the 100-context CartPole cart-mass matrix, 3 seeds x 500k steps (bench_sweep.py),
#      compile: auto (compiled on a GPU)
# Usage, from the repository root on a machine with a GPU, torch with CUDA, and jax, gymnax
# 0.0.x and rejax installed beside ctxrl (gymnax and rejax are never ctxrl dependencies; for a
# machine without network, benchmarks/gpu_wheels.sh fetches them and says how to install):
#   [PYTHON=python3] bash benchmarks/gpu_check.sh [OUT_DIR]
# Each step's output goes to OUT_DIR (default: gpu-results/) and to the terminal; a failing step
# does not stop the others. Record the numbers, with the card's name, in benchmarks/RESULTS.md.
set -u
out="${1:-gpu-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

"$py" benchmarks/bench_envs.py --device cuda --gymnax --max-sync 0 2>&1 | tee "$out/envs.md"
for contexts in 64 256 1024; do
    "$py" benchmarks/bench_ppo.py --device cuda --skip-sb3 --rejax --contexts "$contexts" \
        --steps 524288 --episodes 10 --compile off on on 2>&1 | tee "$out/ppo-$contexts.txt"
done
"$py" benchmarks/bench_compile.py --device cuda --agents 64 256 1024 --steps 131072 2>&1 \
    | tee "$out/compile.md"
"$py" benchmarks/bench_compile.py --device cuda --algorithm batched-dqn --agents 256 1024 \
    --steps 20000 2>&1 | tee "$out/compile-dqn.md"
"$py" benchmarks/bench_sweep.py --device cuda --only cartpole-masscart-100 --compile auto \
    --output-dir "$out/sweeps" 2>&1 | tee "$out/sweep.md"

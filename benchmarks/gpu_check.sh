#!/usr/bin/env bash
# Every GPU measurement of the speed issue, in one run under a time budget (default 540 s), the
# most important first; a step that would overrun the budget is cut (SIGINT) or skipped, and the
# others still run. Sized from the first run on an H200 (benchmarks/RESULTS.md, "On a GPU"):
#   1. rejax (JAX) PPO alone at 1024 CartPole contexts x 524,288 steps (~70 s with its compile)
#   2. batched PPO compiled (torch.compile's default mode) on the same contexts (~170 s of
#      training, printed before its evaluation, so a cut there keeps it)
#   3. batched PPO with CUDA graphs (torch.compile's reduce-overhead mode) on a quarter of the
#      steps, twice in one process (the second without compiling)
#   4. env stepping, eager and compiled twins, against gymnax at B = 1024 and 65,536 (~50 s)
#   5. rollout segments (steps per compiled call) 1 and 4 at 1024 agents, with CUDA graphs
#      (bench_rollout_segment.py, each number printed when known)
#   6. 64 contexts: batched PPO (default mode) and rejax in one run
#   7. the 100-context CartPole cart-mass matrix, 3 seeds x 500k steps, compile: auto (its run
#      directory under /tmp: thousands of files; its summary.json appended to the step's file)
# A 540 s budget reaches about step 4 on one card; the rest run when time is left.
# Usage, from the repository root on a machine with a GPU, torch with CUDA, and jax, gymnax
# 0.0.x and rejax installed beside ctxrl (gymnax and rejax are never ctxrl dependencies; for a
# machine without network, benchmarks/gpu_wheels.sh fetches them, builds ctxrl's own wheel and
# says how to install):
#   [PYTHON=python3] [BUDGET_S=540] bash benchmarks/gpu_check.sh [OUT_DIR]
# OUT_DIR (default gpu-results/) gets env.txt (the card, its driver and every version) and one
# <step>.txt per step: 8 files. Each step's tail also goes to the terminal. Record the numbers,
# with the card's name, in benchmarks/RESULTS.md.
set -u
out="${1:-gpu-results}"
budget_s="${BUDGET_S:-540}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=$(command -v "${PYTHON:-python}" || echo "${PYTHON:-python}")
case $py in /*) ;; *) py="$PWD/$py" ;; esac # absolute (not resolved): some lines run from /tmp
began=$SECONDS

step() { # NAME LIMIT_S COMMAND...: run COMMAND unless under half its limit (or 40 s) is left
    local name=$1 limit=$2
    shift 2
    local left=$((budget_s - (SECONDS - began)))
    local least=$((limit / 2 > 40 ? limit / 2 : 40))
    if [ "$left" -lt "$least" ]; then
        echo "== $name: skipped, $left s of the budget left" | tee "$out/$name.txt"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most $limit s)"
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" >"$out/$name.txt" 2>&1
    local status=$?
    echo "== $name: exit $status after $((SECONDS - start)) s" | tee -a "$out/$name.txt"
    tail -n 30 "$out/$name.txt" | grep -v "^== $name"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$py" -V
    "$py" -m pip list 2>/dev/null | grep -iE "^(torch|jax|jaxlib|jax-cuda[0-9a-z-]*|gymnax|rejax|ctxrl|setuptools) "
    # from /tmp: the ctxrl the benchmarks import (the installed one), not the checkout's ctxrl/
    (cd /tmp && "$py" -c "import ctxrl, torch; print('ctxrl', ctxrl.__version__, ctxrl.__file__, \
'| torch', torch.__version__, 'cuda', torch.version.cuda)")
    (cd /tmp && "$py" -c "import jax; print('jax', jax.__version__, jax.devices())") ||
        echo "(without jax, the rejax and gymnax steps fail)"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: torch ($py) sees no CUDA GPU here; every step would fail" >&2
    exit 1
fi

ppo=(benchmarks/bench_ppo.py --device cuda --skip-sb3 --steps 524288 --episodes 10)
step rejax-1024 150 "$py" "${ppo[@]}" --contexts 1024 --rejax --compile
step ppo-1024 250 "$py" "${ppo[@]}" --contexts 1024 --compile on --constant-lr
step ppo-1024-graphs 150 env CTXRL_TORCH_COMPILE_MODE=reduce-overhead "$py" "${ppo[@]}" \
    --contexts 1024 --steps 131072 --episodes 2 --compile on on --constant-lr
step envs 90 "$py" benchmarks/bench_envs.py --device cuda --gymnax --compile --max-sync 0 \
    --batches 1024 65536 --budget-s 1
step segments 200 env CTXRL_TORCH_COMPILE_MODE=reduce-overhead "$py" \
    benchmarks/bench_rollout_segment.py --device cuda --agents 1024 --segments 1 4 \
    --iterations 20 --repeats 1
step ppo-64 200 "$py" "${ppo[@]}" --contexts 64 --compile on --rejax
sweeps=$(mktemp -d /tmp/ctxrl-gpu-sweeps.XXXXXX) # new each run: a second run trains again
step sweep 400 "$py" benchmarks/bench_sweep.py --device cuda --only cartpole-masscart-100 \
    --compile auto --output-dir "$sweeps"
find "$sweeps" -path "*/exports/summary.json" -exec sh -c 'echo "== $1"; cat "$1"' _ {} \; \
    >>"$out/sweep.txt" 2>/dev/null
echo "== done after $((SECONDS - began)) s"

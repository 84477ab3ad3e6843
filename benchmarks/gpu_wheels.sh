#!/usr/bin/env bash
# Download, here, the wheels a GPU machine without network needs for benchmarks/gpu_check.sh:
# ctxrl's dependencies its image lacks (gymnasium, pydantic) and the JAX peers (gymnax 0.0.9 and
# rejax 0.1.3 with distrax), for CPython 3.12 on x86-64 Linux, into .whl/ (git-ignored locally).
# ctxrl's own wheel is built here too (pure Python), so the GPU machine builds nothing (its
# setuptools may predate the SPDX license field); run this again after any change to ctxrl.
# On the GPU machine, from the repository root with .whl/ carried along (`run`'s carry: .whl):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
#   PYTHON=python3 bash benchmarks/gpu_check.sh "$OUT"
set -eu
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl \
    gymnasium==1.3.0 farama-notifications==0.0.6 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    gymnax==0.0.9 rejax==0.1.3 distrax==0.1.9 tfp-nightly==0.26.0.dev20261027 \
    dm-tree==0.1.10 gast==0.7.0 decorator==5.3.1
rm -f .whl/ctxrl-*.whl
python3 -m pip wheel -q --no-deps -w .whl .  # in an isolated build environment from PyPI
rm -rf build
du -sh .whl

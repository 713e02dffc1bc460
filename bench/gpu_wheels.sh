#!/usr/bin/env bash
# Fetch, here (a machine with a package index), the wheels the GPU image lacks for bench/run_gpu.sh, for its
# Python 3.12 on x86-64: diffusers and datasets at the versions this package pins, and the datasets needs the
# image does not have (dill, multiprocess: per-Python wheels, so fetched for 3.12, not this machine's Python).
# The image already holds pyarrow, pandas, fsspec, xxhash, huggingface_hub, filelock, pyyaml (device KINDS.md).
#   bash bench/gpu_wheels.sh        # then carry ".whl" in the device call (~6 MB)
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl diffusers==0.42.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls -l .whl

#!/usr/bin/env bash
# Every GPU figure in one go (one device call): bash bench/run_gpu.sh [OUT_DIR]
# On a machine without diffusers/datasets, carry them as wheels in .whl/ (see the device notes) first:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -uo pipefail
OUT=${1:-${OUT:-bench_out}}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$(pwd) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
run() { name=$1; shift; echo "== $name: $*"; timeout 900 python "$@" 2>&1 | tee "$OUT/$name.txt" | grep -v Warning | tail -12; }
run generate_overhead bench/generate_overhead.py
run generate_overhead_compile bench/generate_overhead.py --compile --repeats 2
run contrastive_step bench/contrastive_step.py --workers 15
run mae_step bench/mae_step.py --workers 15
run blip_step bench/blip_step.py
run eval_throughput bench/eval_throughput.py
run mmdit_flux bench/mmdit_overhead.py --preset flux-dev
run mmdit_sd3 bench/mmdit_overhead.py --preset sd3-medium
# enable_model_cpu_offload needs a CUDA device: the generator with offload on, UNet and MM-DiT (rc and rows).
for p in tiny tiny-flux tiny-sd3; do
    echo "== cpu_offload: $p"
    timeout 300 python -m freeatm_hf.cli generate --output_dir "$OUT/offload-$p" --pipeline "$p" --num_images 2 \
        --batch_size 2 --num_inference_steps 2 --height 64 --width 64 --cpu_offload true 2>&1 | tail -2
    python -c "import datasets, sys; print(sys.argv[1], len(datasets.load_dataset(sys.argv[1], split='train')), 'rows')" \
        "$OUT/offload-$p" 2>&1 | tail -1 | tee -a "$OUT/cpu_offload.txt"
done

#!/usr/bin/env bash
# Every GPU figure in one go (one device call): bash bench/run_gpu.sh [OUT_DIR [NAME ...]]
# A device command runs at most 10 minutes, so the whole script keeps to DEADLINE seconds (default 540): each bench
# gets at most CAP seconds (default 150) and what is left; those that did not start are listed at the end, to be
# run in a second call by naming them (e.g. `bash bench/run_gpu.sh out mmdit_flux cpu_offload`).
# On a machine without diffusers/datasets (and no package index), bring them as wheels: on a connected machine
#   pip download diffusers datasets --no-deps -d .whl   (plus any of their dependencies the GPU machine lacks)
# then on the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -uo pipefail
OUT=${1:-${OUT:-bench_out}}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$(pwd) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
DEADLINE=${DEADLINE:-540} CAP=${CAP:-150}
shift || true
WANT=" $* "
SKIPPED=()
wanted() { [ "$WANT" = "  " ] || [[ "$WANT" == *" $1 "* ]]; }
left() { echo $((DEADLINE - SECONDS)); }
run() {
    name=$1; shift
    wanted "$name" || return 0
    if [ "$(left)" -lt 30 ]; then SKIPPED+=("$name"); return 0; fi
    t=$(left); [ "$t" -gt "$CAP" ] && t=$CAP
    echo "== $name (${t}s at most): $*"
    timeout "$t" python "$@" 2>&1 | tee "$OUT/$name.txt" | grep -v Warning | tail -12
    [ "${PIPESTATUS[0]}" = 124 ] && echo "!! $name ran out of its ${t}s" | tee -a "$OUT/$name.txt"
}
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
    wanted cpu_offload || break
    if [ "$(left)" -lt 30 ]; then SKIPPED+=("cpu_offload"); break; fi
    echo "== cpu_offload: $p"
    t=$(left); [ "$t" -gt 60 ] && t=60
    timeout "$t" python -m freeatm_hf.cli generate --output_dir "$OUT/offload-$p" --pipeline "$p" --num_images 2 \
        --batch_size 2 --num_inference_steps 2 --height 64 --width 64 --cpu_offload true 2>&1 | tail -2
    python -c "import datasets, sys; print(sys.argv[1], len(datasets.load_dataset(sys.argv[1], split='train')), 'rows')" \
        "$OUT/offload-$p" 2>&1 | tail -1 | tee -a "$OUT/cpu_offload.txt"
done
[ ${#SKIPPED[@]} -gt 0 ] && echo "not run (time): ${SKIPPED[*]}; next call: bash bench/run_gpu.sh OUT ${SKIPPED[*]}"
echo "done in ${SECONDS}s"

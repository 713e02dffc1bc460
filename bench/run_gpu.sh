#!/usr/bin/env bash
# Every GPU figure in one device call: bash bench/run_gpu.sh [OUT_DIR [NAME ...]]
# A session has ~15 device-minutes (a machine start takes 1-2 of them) and a command at most 10, so the script
# keeps to DEADLINE seconds (default 510; give the device call timeout_s 570) and each bench to its own cap;
# those that did not start are listed at the end (`bash bench/run_gpu.sh out mmdit_flux cpu_offload` runs only
# those, in a later session). Most important first: generation, MM-DiT, training steps, evaluation, compiled generation.
#
# The GPU image has no diffusers or datasets: `bash bench/gpu_wheels.sh` (here, once) fetches the pinned wheels
# into .whl/ for its Python 3.12; carry ".whl" and this script installs them. The device tool returns at most 8
# files: every figure is appended to OUT/bench.txt as it is printed (a cut-off run keeps what it printed) and the
# per-bench logs (stdout and stderr) are packed into OUT/logs.tgz after each bench.
set -uo pipefail
OUT=${1:-${OUT:-bench_out}}
mkdir -p "$OUT"
LOGS=/tmp/freeatm_bench_logs
rm -rf "$LOGS" && mkdir -p "$LOGS"
LOG="$OUT/bench.txt"
say() { echo "$*" | tee -a "$LOG"; }
# Missing or broken wheels are said first and loudly, but end nothing: this call may be the only one, and the
# benches that need neither diffusers nor datasets (the MM-DiT ones need no datasets, the contrastive step's first
# figures neither) still measure; the others fail fast, each with its traceback's tail.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tee -a "$LOG" || say "!! wheel install failed (see above)"
    export PYTHONPATH=/tmp/site
else
    say "!! no wheels in .whl/: run bash bench/gpu_wheels.sh here and carry \".whl\""
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd) PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python3 -c "import diffusers, datasets, transformers, torch; print('diffusers', diffusers.__version__, 'datasets', \
datasets.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" > "$LOGS/versions.txt" 2>&1
tee -a "$LOG" < "$LOGS/versions.txt"
grep '^diffusers' "$LOGS/versions.txt" > /dev/null \
    || say "!! diffusers/datasets do not import: see above (bench/gpu_wheels.sh); the benches that need them will fail"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$LOG"
DEADLINE=${DEADLINE:-510}
shift || true
WANT=" $* "
SKIPPED=()
wanted() { [ "$WANT" = "  " ] || [[ "$WANT" == *" $1 "* ]]; }
left() { echo $((DEADLINE - SECONDS)); }
run() {  # run NAME CAP_SECONDS MIN_SECONDS SCRIPT ARGS...: not started with less than MIN left (it could not finish)
    name=$1 cap=$2 min=$3; shift 3
    wanted "$name" || return 0
    if [ "$(left)" -lt "$min" ]; then SKIPPED+=("$name"); return 0; fi
    t=$(left); [ "$t" -gt "$cap" ] && t=$cap
    say "== $name (${t}s at most): $*"
    # The figures (stdout) stream whole into the log; warnings and tracebacks (stderr) go to the per-bench log,
    # their tail into the figures' log only when the bench failed. -k: a bench that ignores TERM is killed.
    timeout -k 10 "$t" python3 "$@" 2>"$LOGS/$name.err" | tee "$LOGS/$name.txt" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && say "!! $name ran out of its ${t}s"
    if [ "$rc" != 0 ] && [ "$rc" != 124 ]; then say "!! $name exited $rc:"; tail -8 "$LOGS/$name.err" | tee -a "$LOG"; fi
    say "   ($name done at ${SECONDS}s)"
    tar czf "$OUT/logs.tgz" -C "$LOGS" .  # after every bench: a run cut off later keeps these
}
# Most important first; the compiled figures (two cold compiles of an SD 1.5-sized UNet, ~2-3 min) come last so
# their warm-up cannot leave the others unmeasured. Every bench prints its figures as they are known.
run generate_overhead 170 110 bench/generate_overhead.py
# The ratios do not depend on the step count: 8 steps keep the 1024-px MM-DiT runs short.
run mmdit_sd3 80 55 bench/mmdit_overhead.py --preset sd3-medium --steps 8
run mmdit_flux 90 65 bench/mmdit_overhead.py --preset flux-dev --steps 8
run contrastive_step 80 60 bench/contrastive_step.py --workers 14
run mae_step 70 50 bench/mae_step.py --workers 14
run blip_step 60 45 bench/blip_step.py --steps 6
run eval_throughput 60 45 bench/eval_throughput.py --batches 5
run generate_compile 240 150 bench/generate_overhead.py --compile_only
# enable_model_cpu_offload needs a CUDA device: the generator with offload on, UNet and MM-DiT (rc and rows).
for p in tiny tiny-flux tiny-sd3; do
    wanted cpu_offload || break
    if [ "$(left)" -lt 40 ]; then SKIPPED+=("cpu_offload"); break; fi
    t=$(left); [ "$t" -gt 60 ] && t=60
    timeout "$t" python3 -m freeatm_hf.cli generate --output_dir "/tmp/offload-$p" --pipeline "$p" --num_images 2 \
        --batch_size 2 --num_inference_steps 2 --height 64 --width 64 --cpu_offload true > "$LOGS/offload-$p.txt" 2>&1
    rc=$?
    rows=$(python3 -c "import datasets, sys; print(len(datasets.load_dataset(sys.argv[1], split='train')))" \
        "/tmp/offload-$p" 2>&1 | tail -1)
    say "cpu_offload $p: rc $rc, rows $rows"
done
[ ${#SKIPPED[@]} -gt 0 ] && say "not run (time): ${SKIPPED[*]}; later: bash bench/run_gpu.sh OUT ${SKIPPED[*]}"
tar czf "$OUT/logs.tgz" -C "$LOGS" .
say "done in ${SECONDS}s"

#!/usr/bin/env bash
# The whole path on the shapes world, on a CPU in a few minutes:
#   generate → pretrain SimCLR-ATM and MAE-ATM briefly → kNN / linear probe → cards with model-index
#   → push dataset and models to a loopback Hub → the Space opens the published dataset.
# Usage: bash recipes/shapes_end_to_end.sh [OUT_DIR]      (OUT_DIR defaults to outputs/e2e)
set -euo pipefail
OUT=${1:-outputs/e2e}
# A rerun starts afresh, but only over a folder an earlier walkthrough made: a wrong argument (a parent folder,
# a trained model's) must not be wiped.
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null || echo file)" ] && [ ! -e "$OUT/.freeatm-walkthrough" ]; then
    echo "$OUT is not empty and no walkthrough made it: give a new or empty folder" >&2
    exit 2
fi
rm -rf "$OUT" && mkdir -p "$OUT" && touch "$OUT/.freeatm-walkthrough"
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

echo "== 1. generate 32 scenes with free attention masks"
freeatm generate --output_dir "$OUT/scenes" --num_images 32 --batch_size 8 --rows_per_shard 16 \
    --num_inference_steps 10 --device cpu

echo "== 2. pretrain SimCLR with attention pooling, and MAE with attention-guided masking (briefly)"
freeatm train simclr recipes/contrastive_cpu_smoke.yaml --dataset "$OUT/scenes" --output_dir "$OUT/simclr-atm" \
    --max_steps 8 --logging_steps 4
freeatm train mae recipes/mae_cpu_smoke.yaml --dataset "$OUT/scenes" --output_dir "$OUT/mae-atm" --num_train_epochs 2

echo "== 3. kNN and linear probe on rendered shapes (6 classes, chance 16.7 %)"
python -m freeatm_hf.toy.dataset --output_dir "$OUT/shapes_labelled" --num_train 120 --num_test 60
# Each at the size it was trained at (64 px, from the card facts; MAE its ViT's 32): no --image_size needed.
freeatm eval knn --model "$OUT/simclr-atm" --dataset "$OUT/shapes_labelled" --batch_size 32 --device cpu
freeatm eval knn --model "$OUT/mae-atm" --dataset "$OUT/shapes_labelled" --batch_size 32 --device cpu

echo "== 4. push to a loopback Hub"
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
python -m freeatm_hf.hub.local_hub --root "$OUT/hub" --port "$PORT" > "$OUT/hub.log" 2>&1 &
HUB=$!
trap 'kill $HUB 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q http "$OUT/hub.log" 2>/dev/null && break; sleep 0.1; done
export HF_ENDPOINT="http://127.0.0.1:$PORT" HF_TOKEN=hf_local_walkthrough HF_HUB_OFFLINE=0 HF_HUB_DISABLE_XET=1
freeatm push "$OUT/scenes" me/shapes-scenes
freeatm push "$OUT/simclr-atm" me/simclr-atm --repo_type model
freeatm push "$OUT/mae-atm" me/mae-atm --repo_type model

echo "== 5. the Space opens the published dataset, downloaded back through the Hub endpoint"
python - "$OUT" <<'PY'
import sys
from huggingface_hub import ModelCard, hf_hub_download, snapshot_download
from freeatm_hf.spaces import load_app
out = sys.argv[1]
folder = snapshot_download("me/shapes-scenes", repo_type="dataset", cache_dir=f"{out}/hub_cache")
app = load_app()
cache = app.RowCache(folder)
row = cache.get(0)
view, text, soft, masks, summary = app.render(row["image"], row["prompt"], list(row["objects"]), 0.4)
print(f"Space: row 0 of me/shapes-scenes ({folder}): {row['prompt']!r}, {len(summary)} objects, overlay {view.size}")
for name in ("simclr-atm", "mae-atm"):
    card = ModelCard.load(hf_hub_download(f"me/{name}", "README.md", cache_dir=f"{out}/hub_cache"))
    print(name, {r.metric_type: round(r.metric_value, 3) for r in card.data.eval_results})
del cache  # close the streaming reader before the interpreter shuts down
PY
echo "== done: $OUT"

#!/usr/bin/env bash
# Train the shapes text-to-image model, measure its masks, and install it as the embedded default.
#   bash recipes/shapes_t2i.sh gpu [OUT] [FROM]  one GPU, training only (MINUTES, default 7, saved every 3), so
#                                           that start-up, training and save fit one 10-minute command
#                                           (accelerate launch); FROM: continue that folder. Then `eval OUT`.
#                                           With PACK=DIR the model is packed into DIR as two .tgz files (the
#                                           device tool returns at most 8 files of 16 MiB):
#                                           PACK=$OUT bash recipes/shapes_t2i.sh gpu /tmp/t2i  (its own session:
#                                           with bench/run_gpu.sh it would not fit one session's device time)
#   bash recipes/shapes_t2i.sh cpu [OUT]    the CPU fallback that began the shipped model (2 cores, ~100 min)
#   bash recipes/shapes_t2i.sh more OUT FROM [MINUTES] [DECODER_STEPS]
#                                           continue FROM into OUT: optionally a sharper decoder first (the
#                                           encoder, so the UNet's latent space, stays fixed), then the UNet at
#                                           lr 3e-4 with a cosine decay over the time left (how the shipped model
#                                           continued on the CPU; its second run used DECODER_STEPS=600)
#   bash recipes/shapes_t2i.sh eval OUT     measure OUT's masks and draw its grid (run by cpu and more too)
# Resuming takes the weights only (fresh optimizer with warm-up) and draws scenes no earlier run drew;
# freeatm.json keeps the totals and every run.
set -euo pipefail
MODE=${1:-gpu}
OUT=${2:-outputs/shapes-t2i}
if [ "$MODE" = gpu ]; then
    accelerate launch -m freeatm_hf.toy.train_t2i --output_dir "$OUT" --max_minutes "${MINUTES:-7}" \
        --save_every_minutes 3 --lr_schedule cosine ${3:+--resume_from "$3"}
    if [ -n "${PACK:-}" ]; then
        mkdir -p "$PACK"
        tar czf "$PACK/t2i-unet.tgz" -C "$OUT" unet
        tar czf "$PACK/t2i-rest.tgz" -C "$OUT" --exclude ./unet .
        ls -l "$PACK"/t2i-*.tgz
    fi
    echo "trained $OUT; next: bash recipes/shapes_t2i.sh eval $OUT"
    exit 0
elif [ "$MODE" = more ]; then
    python -m freeatm_hf.toy.train_t2i --output_dir "$OUT" --resume_from "${3:?FROM folder}" \
        --decoder_steps "${5:-0}" --batch_size 32 --lr 3e-4 --max_minutes "${4:-95}" --lr_schedule cosine \
        --save_every_minutes 20
elif [ "$MODE" = cpu ]; then
    python -m freeatm_hf.toy.train_t2i --output_dir "$OUT" --vae_steps 500 --batch_size 32 --max_minutes 100 \
        --save_every_minutes 12
elif [ "$MODE" != eval ]; then
    echo "usage: bash recipes/shapes_t2i.sh gpu|cpu|more|eval ..." >&2
    exit 2
fi
# Which layers, steps, threshold and guidance scale localise best (chosen on validation scenes, scored on 200
# test scenes); the choice goes into OUT/freeatm.json, which `freeatm generate` reads, and the scores into the card.
freeatm eval masks --pipeline "$OUT" --sweep --guidance_sweep 2 4 6 8 --save_recommendation \
    --output "$OUT/mask_eval.json"
python -m freeatm_hf.toy.showcase --pipeline "$OUT" --output "$OUT/grid.png"
echo "to make it the embedded default: rm -rf freeatm_hf/toy/assets/shapes-t2i && cp -r $OUT freeatm_hf/toy/assets/shapes-t2i"

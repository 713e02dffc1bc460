"""BLIP pretraining step (ITC + ITM + LM) with position prompts ÷ without, same model, batch and max length.

    python bench/blip_step.py                                   # H100: ViT-B/16 at 224 + BERT-base, bf16, batch 128
    python bench/blip_step.py --size tiny --image_size 32 --batch_size 8 --device cpu --steps 3   # smoke

Position prompts only change the text (same padded length), so the difference measured is the data side:
building, shuffling and truncating the prompts (tokenizer in the loop) per sample.
"""

import argparse
import dataclasses

import torch
from _common import setup, throughput


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="base")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--max_length", type=int, default=72)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    from PIL import Image

    from freeatm_hf.train.blip import BlipArguments, build_blip, make_transform

    device, cuda, dtype, sync, dev = setup(args.device)
    base = BlipArguments(model_size=args.size, image_size=args.image_size, max_length=args.max_length)
    torch.manual_seed(0)
    model, tok = build_blip(base)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rows = {"image": [Image.new("RGB", (256, 256), (i, 0, 0)) for i in range(args.batch_size)],
            "prompt": ["a golden retriever with a tennis ball is playing in a park"] * args.batch_size,
            "objects": [[{"name": "golden retriever", "bbox": [10, 20, 120, 200]},
                         {"name": "tennis ball", "bbox": [150, 150, 180, 180]}]] * args.batch_size}
    variants = {}
    for prompts in ("none", "position"):
        # replace(), not the instance's __dict__: that holds the fields no flag sets (init=False) too
        tf = make_transform(dataclasses.replace(base, prompts=prompts), tok)

        def step(tf=tf):
            b = tf(rows)
            batch = {"pixel_values": torch.stack(b["pixel_values"]).to(device),
                     "input_ids": torch.stack(b["input_ids"]).to(device),
                     "attention_mask": torch.stack(b["attention_mask"]).to(device)}
            with torch.autocast(device.type, dtype=dtype, enabled=cuda):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        variants[prompts] = step
    pps = throughput(variants, args.batch_size, args.steps, sync)
    print(f"device: {dev}; BLIP-{args.size}, {args.image_size}px, batch {args.batch_size}, {args.max_length} tokens, {dtype}")
    print(f"plain captions   : {pps['none']:.1f} pairs/s")
    print(f"position prompts : {pps['position']:.1f} pairs/s")
    print(f"ratio            : {pps['position'] / pps['none']:.3f}x")


if __name__ == "__main__":
    main()

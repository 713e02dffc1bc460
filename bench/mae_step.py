"""MAE training step with attention-guided masking ÷ plain `ViTMAEForPreTraining` (random masking), same batch,
and the end-to-end pipeline (decode + joint crop/flip of image and map in data workers) ÷ pre-made tensors.

    python bench/mae_step.py                       # H100: ViT-B/16, bf16, batch 256
    python bench/mae_step.py --model_size tiny --image_size 32 --patch_size 8 --batch_size 16 --device cpu  # smoke
"""

import argparse
import tempfile

import torch
from _common import default_workers, loader_throughput, random_freeatm_rows, setup, throughput, timing_loader


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_size", default="base")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args()

    from transformers import ViTMAEForPreTraining

    from freeatm_hf.models import MAEConfig, MAEModel
    from freeatm_hf.train.mae import SIZES

    device, cuda, dtype, sync, dev = setup(args.device)
    cfg = MAEConfig(image_size=args.image_size, patch_size=args.patch_size, attn_implementation="sdpa",
                    **SIZES[args.model_size])
    n = (args.image_size // args.patch_size) ** 2
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    scores = torch.rand(args.batch_size, n, device=device)
    variants = {}
    for name in ("plain", "guided"):
        torch.manual_seed(0)
        model = (ViTMAEForPreTraining(cfg) if name == "plain" else MAEModel(cfg)).to(device)
        if name == "guided":
            model.beta = 0.8
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        kw = {"pixel_values": x} if name == "plain" else {"pixel_values": x, "patch_scores": scores}

        def step(model=model, opt=opt, kw=kw):
            with torch.autocast(device.type, dtype=dtype, enabled=cuda):
                loss = model(**kw).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        variants[name] = (model, step)
    ips = throughput({k: s for k, (_, s) in variants.items()}, args.batch_size, args.steps, sync, warmup=3)
    print(f"device: {dev}; ViTMAE-{args.model_size}/{args.patch_size}, {args.image_size}px, batch {args.batch_size}, {dtype}")
    print(f"plain ViTMAEForPreTraining : {ips['plain']:.1f} img/s")
    print(f"attention-guided (β = 0.8) : {ips['guided']:.1f} img/s")
    print(f"ratio guided/plain         : {ips['guided'] / ips['plain']:.3f}x")
    end_to_end(args, variants["guided"][0], device, dtype, sync, ips["guided"])


def end_to_end(args, model, device, dtype, sync, premade):
    from datasets import Dataset

    from freeatm_hf.generate.schema import dataset_features
    from freeatm_hf.train.mae import MAEArguments, collate, make_transform

    side = 256 if args.image_size >= 224 else args.image_size * 2
    rows = random_freeatm_rows(args.batch_size * 4, side)
    with tempfile.TemporaryDirectory() as d:
        Dataset.from_list(rows, features=dataset_features()).to_parquet(f"{d}/t.parquet")
        ds = Dataset.from_parquet(f"{d}/t.parquet").with_transform(
            make_transform(MAEArguments(image_size=args.image_size, patch_size=args.patch_size), model.config))
        workers = default_workers(args.workers)
        loader = timing_loader(ds, args.batch_size, workers, collate, device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(batch):
            with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        ips = loader_throughput(loader, step, args.batch_size, device, sync)
    print(f"end to end ({workers} workers): {ips:.1f} img/s = {ips / premade:.3f}x the step on pre-made tensors")


if __name__ == "__main__":
    main()

"""Two-view contrastive training step: Free-ATM attention pooling ÷ the image-level baseline, and the whole
input pipeline (decode + joint crop/flip in data workers + batched photometric on the device) ÷ the same
step on pre-made tensors.

    python bench/contrastive_step.py                                   # H100: ResNet-50, bf16, channels_last, batch 256
    python bench/contrastive_step.py --compile
    python bench/contrastive_step.py --backbone resnet18 --batch_size 16 --image_size 64 --steps 5 --device cpu  # smoke

Both variants use the same model code (`SimCLRModel`), batch and number of steps; the attention variant
pools 4 masks per image. Steps alternate between variants (ABAB) after a warm-up.
"""

import argparse
import tempfile

import torch
from _common import default_workers, loader_throughput, random_freeatm_rows, setup, throughput, timing_loader


def make_inputs(b, size, k, device, attention: bool):
    x1 = torch.randn(b, 3, size, size, device=device)
    x2 = torch.randn(b, 3, size, size, device=device)
    if not attention:
        return dict(pixel_values_1=x1, pixel_values_2=x2)
    masks = torch.zeros(b, k, size, size, device=device)
    for j in range(k):  # k horizontal bands, like objects side by side
        masks[:, j, :, j * size // k : (j + 1) * size // k] = 1.0
    return dict(pixel_values_1=x1, pixel_values_2=x2, masks_1=masks, masks_2=masks.clone(),
                instance_valid=torch.ones(b, k, dtype=torch.bool, device=device))


def step_fn(model, opt, dtype, device):
    def run(inputs):
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--objects", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--workers", type=int, default=None, help="data workers for the end-to-end run (default: cores)")
    p.add_argument("--side", type=int, default=None,
                   help="side of the dataset's pictures (default: the view side, at least 256; SD 1.5 makes 512)")
    args = p.parse_args()

    from freeatm_hf.models import SimCLRConfig, SimCLRModel

    device, cuda, dtype, sync, dev = setup(args.device)
    models, runs = {}, {}
    for pooling in ("image", "attention"):
        torch.manual_seed(0)
        m = SimCLRModel(SimCLRConfig(backbone=args.backbone, pooling=pooling)).to(device)
        if cuda:
            m = m.to(memory_format=torch.channels_last)
        if args.compile:
            m.backbone = torch.compile(m.backbone)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        inputs = make_inputs(args.batch_size, args.image_size, args.objects, device, pooling == "attention")
        run = step_fn(m, opt, dtype, device)
        models[pooling], runs[pooling] = m, (lambda r=run, i=inputs: r(i))
    ips = throughput(runs, args.batch_size, args.steps, sync, warmup=3)  # warm-up includes compilation
    print(f"device: {dev}; {args.backbone}, batch {args.batch_size}, {args.image_size}px, {dtype}, "
          f"{'compiled' if args.compile else 'eager'}")
    print(f"image-level baseline   : {ips['image']:.1f} img/s (two views each)")
    print(f"attention pooling (K={args.objects}): {ips['attention']:.1f} img/s")
    print(f"ratio attention/image  : {ips['attention'] / ips['image']:.3f}x")
    end_to_end(args, models["attention"], device, dtype, sync, ips["attention"])


def end_to_end(args, model, device, dtype, sync, premade_ips):
    """Real pipeline: PNG rows of a freeatm-schema dataset → DataLoader workers (decode, masks, joint crop/flip)
    → device → batched photometric + normalize → the same training step."""
    from datasets import Dataset

    from freeatm_hf.data.collate import collate_two_views
    from freeatm_hf.data.gpu_augment import BatchPhotometric, augment_views, blur_kernel_for
    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from freeatm_hf.generate.schema import dataset_features
    from freeatm_hf.train.contrastive import ContrastiveArguments, make_transform

    side = args.side or (max(args.image_size, 256) if args.image_size >= 224 else args.image_size)
    rows = random_freeatm_rows(args.batch_size * 4, side, objects=args.objects)  # the pre-made step's count
    with tempfile.TemporaryDirectory() as d:
        Dataset.from_list(rows, features=dataset_features()).to_parquet(f"{d}/train.parquet")
        ds = Dataset.from_parquet(f"{d}/train.parquet")
        cargs = ContrastiveArguments(image_size=args.image_size, gpu_photometric=True)
        ds = ds.with_transform(make_transform(cargs))
        workers = default_workers(args.workers)
        loader = timing_loader(ds, args.batch_size, workers, collate_two_views, device)
        aug = BatchPhotometric(kernel_size=blur_kernel_for(args.image_size)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        run = step_fn(model, opt, dtype, device)
        ips = loader_throughput(loader, lambda b: run(augment_views(b, aug, IMAGENET_MEAN, IMAGENET_STD)),
                                args.batch_size, device, sync)
        # What one worker makes alone, on a short epoch of small batches: how many workers a step needs.
        one = loader_throughput(timing_loader(ds, 32, 1, collate_two_views, device), lambda b: None, 32, device, sync)
    print(f"end to end ({workers} workers): {ips:.1f} img/s = {ips / premade_ips:.3f}x the step on pre-made tensors")
    print(f"one data worker alone ({side}px pictures): {one:.1f} img/s; the step on pre-made tensors needs "
          f"{premade_ips / one:.1f} workers")


if __name__ == "__main__":
    main()

"""kNN feature extraction from encoded images (decode + resize + centre crop included) ÷ a plain timm forward
on pre-made tensors, same backbone, batch and precision. The encoded path is the product's own:
`freeatm_hf.eval.knn.extract_features` over a `datasets` image column, as `freeatm eval knn` runs it.

    python bench/eval_throughput.py                       # H100: ResNet-50, 224 px, bf16, batch 512, GPU JPEG decode
    python bench/eval_throughput.py --backbone resnet18 --batch_size 32 --device cpu --batches 3   # smoke

On the GPU the JPEGs are decoded there in one batched call (`extract_features(decode="torchvision")`:
`torchvision.io.decode_jpeg(device="cuda")`), because CPU decoding (~1.6 ms per 512² JPEG per core) cannot keep up
with the forward. `--decode pil` measures the CPU loader instead.
"""

import argparse
import io

import numpy as np
import torch
from _common import setup, smooth_image, throughput


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch_size", type=int, default=512)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--source_size", type=int, default=512)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--decode", default="auto", choices=["auto", "pil", "torchvision"])
    p.add_argument("--num_workers", type=int, default=0, help="loader workers (reading bytes, or decoding with pil)")
    args = p.parse_args()

    import timm
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from torchvision.transforms import v2

    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from freeatm_hf.eval.knn import extract_features

    device, cuda, dtype, sync, dev = setup(args.device)
    model = timm.create_model(args.backbone, pretrained=False, num_classes=0).to(device).eval()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(args.batch_size):
        buf = io.BytesIO()
        smooth_image(rng, args.source_size).save(buf, "JPEG", quality=90)  # a photo's size, not noise's
        rows.append({"image": {"bytes": buf.getvalue(), "path": None}, "label": i % 10})
    ds = Dataset.from_list(rows).cast_column("image", ImageFeature())
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(int(args.image_size * 256 / 224), antialias=True),
                            v2.CenterCrop(args.image_size), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    premade = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)

    @torch.no_grad()
    def forward(x):
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            return model(x)

    def from_jpegs():
        return extract_features(model, ds, transform, batch_size=args.batch_size, device=device, decode=args.decode,
                                num_workers=args.num_workers)

    def plain():
        return forward(premade)

    ips = throughput({"plain": plain, "jpeg": from_jpegs}, args.batch_size, args.batches, sync)
    print(f"device: {dev}; {args.backbone}, {args.image_size}px, batch {args.batch_size}, {dtype}, "
          f"decode {args.decode} ({'GPU' if cuda else 'CPU'}) of {args.source_size}² JPEGs through extract_features")
    print(f"plain timm forward on tensors : {ips['plain']:.1f} img/s")
    print(f"from JPEG (decode+resize+crop): {ips['jpeg']:.1f} img/s")
    print(f"ratio                         : {ips['jpeg'] / ips['plain']:.3f}x")


if __name__ == "__main__":
    main()

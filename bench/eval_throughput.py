"""kNN feature extraction from encoded images (decode + resize + centre crop included) ÷ a plain timm forward
on pre-made tensors, same backbone, batch and precision.

    python bench/eval_throughput.py                       # H100: ResNet-50, 224 px, bf16, batch 512, GPU JPEG decode
    python bench/eval_throughput.py --backbone resnet18 --batch_size 32 --device cpu --batches 3   # smoke

On the GPU the JPEGs are decoded there in one batched call (`torchvision.io.decode_jpeg(device="cuda")`),
because CPU decoding (~1.6 ms per 512² JPEG per core) cannot keep up with the forward.
"""

import argparse
import io

import numpy as np
import torch
from _common import setup, throughput


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch_size", type=int, default=512)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--source_size", type=int, default=512)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    import timm
    from PIL import Image
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    device, cuda, dtype, sync, dev = setup(args.device)
    model = timm.create_model(args.backbone, pretrained=False, num_classes=0).to(device).eval()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(args.batch_size):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (args.source_size, args.source_size, 3), dtype=np.uint8)).save(buf, "JPEG",
                                                                                                              quality=90)
        jpegs.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    resize = int(args.image_size * 256 / 224)
    premade = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)

    @torch.no_grad()
    def forward(x):
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            return model(x)

    def from_jpegs():
        imgs = decode_jpeg(jpegs, device=device) if cuda else [decode_jpeg(j) for j in jpegs]
        x = torch.stack([F.center_crop(F.resize(i, [resize], antialias=True), [args.image_size]) for i in imgs])
        x = (x.float() / 255 - mean) / std
        return forward(x.contiguous(memory_format=torch.channels_last) if cuda else x)

    def plain():
        return forward(premade)

    ips = throughput({"plain": plain, "jpeg": from_jpegs}, args.batch_size, args.batches, sync)
    print(f"device: {dev}; {args.backbone}, {args.image_size}px, batch {args.batch_size}, {dtype}, "
          f"{'GPU' if cuda else 'CPU'} JPEG decode of {args.source_size}²")
    print(f"plain timm forward on tensors : {ips['plain']:.1f} img/s")
    print(f"from JPEG (decode+resize+crop): {ips['jpeg']:.1f} img/s")
    print(f"ratio                         : {ips['jpeg'] / ips['plain']:.3f}x")


if __name__ == "__main__":
    main()

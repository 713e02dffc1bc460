"""SimCLR's photometric augmentations for a whole batch on the accelerator, each sample with its own
random parameters: colour jitter (brightness, contrast, saturation, hue), grayscale, Gaussian blur.

The CPU cost of these (≈ 20 ms per view with torchvision on one core, most of it hue and a 23-px blur)
would make pretraining data-bound; here they are pointwise ops and one separable grouped convolution.
Each op follows torchvision's formula (tested against `torchvision.transforms.v2.functional`). The jitter
order is drawn once per batch rather than per sample.
"""

import torch
import torch.nn.functional as F
from torch import nn

_GRAY = (0.2989, 0.587, 0.114)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(a, b, ratio):
    return (ratio * a + (1 - ratio) * b).clamp(0, 1)


def adjust_brightness(x, f):
    return (x * f.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x, f):
    mean = grayscale(x).mean((1, 2, 3), keepdim=True)
    return _blend(x, mean, f.view(-1, 1, 1, 1))


def adjust_saturation(x, f):
    return _blend(x, grayscale(x), f.view(-1, 1, 1, 1))


def adjust_hue(x, f):
    """Rotate hue by `f` (fraction of a turn, in [-0.5, 0.5]) through HSV, as torchvision does."""
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = ((hr + hg + hb) / 6.0 + 1.0) % 1.0
    h = (h + f.view(-1, 1, 1)) % 1.0
    v = maxc
    i = torch.floor(h * 6.0)
    fr = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * fr)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - fr))).clamp(0, 1)
    mask = i.unsqueeze(1) == torch.arange(6, device=i.device).view(1, -1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), 1)
    a2 = torch.stack((t, v, v, q, p, p), 1)
    a3 = torch.stack((p, p, t, v, v, q), 1)
    a4 = torch.stack((a1, a2, a3), 1)  # (B, 3, 6, H, W)
    return (a4 * mask.unsqueeze(1)).sum(2)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable blur, one sigma per sample, reflect padding (torchvision's)."""
    b, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (pos.view(1, -1) / sigma.view(-1, 1)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B·C, K)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w)


def color_jitter(strength: float = 1.0) -> dict:
    """SimCLR's colour jitter at strength s: brightness, contrast, saturation 0.8·s, hue 0.2·s (SimCLR uses
    s = 1; MoCo-v2's (0.4, 0.4, 0.4, 0.1) is s = 0.5)."""
    s = strength
    return {"brightness": 0.8 * s, "contrast": 0.8 * s, "saturation": 0.8 * s, "hue": 0.2 * s}


class BatchPhotometric(nn.Module):
    """`forward(x)`: x float `(B, 3, H, W)` in [0, 1] → augmented, same shape (SimCLR's defaults, colour
    strength 1; `color_jitter(0.5)` gives MoCo-v2's)."""

    def __init__(self, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, p_jitter=0.8, p_gray=0.2,
                 p_blur=0.5, kernel_size=23, sigma=(0.1, 2.0)):
        super().__init__()
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.p_jitter, self.p_gray, self.p_blur = p_jitter, p_gray, p_blur
        self.kernel_size, self.sigma = kernel_size, sigma

    def sample(self, b: int, device) -> dict:
        def u(lo, hi):
            return torch.empty(b, device=device).uniform_(lo, hi)

        return {
            "jitter": torch.rand(b, device=device) < self.p_jitter,
            "brightness": u(1 - self.brightness, 1 + self.brightness),
            "contrast": u(1 - self.contrast, 1 + self.contrast),
            "saturation": u(1 - self.saturation, 1 + self.saturation),
            "hue": u(-self.hue, self.hue),
            "order": torch.randperm(4).tolist(),
            "gray": torch.rand(b, device=device) < self.p_gray,
            "blur": torch.rand(b, device=device) < self.p_blur,
            "sigma": u(*self.sigma),
        }

    def apply(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        ops = [lambda y: adjust_brightness(y, p["brightness"]), lambda y: adjust_contrast(y, p["contrast"]),
               lambda y: adjust_saturation(y, p["saturation"]), lambda y: adjust_hue(y, p["hue"])]
        jittered = x
        for i in p["order"]:
            jittered = ops[i](jittered)
        x = torch.where(p["jitter"].view(-1, 1, 1, 1), jittered, x)
        x = torch.where(p["gray"].view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        if self.kernel_size and self.p_blur > 0:
            x = torch.where(p["blur"].view(-1, 1, 1, 1), gaussian_blur(x, p["sigma"], self.kernel_size), x)
        return x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.sample(len(x), x.device))


def blur_kernel_for(size: int) -> int:
    """SimCLR's blur kernel: ~10 % of the image side, odd."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)




def augment_views(inputs: dict, augment: "BatchPhotometric | None", mean, std) -> dict:
    """Photometric augmentation (if given) and normalization of both views of a batch, on its device; uint8
    views are scaled to [0, 1] and bool masks made float first (what `TwoViewTransform(uint8_views=True,
    bool_masks=True)` sends through the loader)."""
    from torchvision.transforms.v2.functional import to_dtype

    device = inputs["pixel_values_1"].device
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=device).view(1, 3, 1, 1)
    out = dict(inputs)
    for k in ("pixel_values_1", "pixel_values_2"):
        x = to_dtype(out[k], torch.float32, scale=True) if out[k].dtype == torch.uint8 else out[k]  # as the CPU's
        x = augment(x) if augment is not None else x
        out[k] = (x - mean) / std
    for k in ("masks_1", "masks_2"):
        if k in out and out[k].dtype == torch.bool:
            out[k] = out[k].float()
    return out

"""Mask overlays for people to look at: the dataset card's examples and the Space use the same drawing."""

import numpy as np
from PIL import Image, ImageDraw

from .data.rows import rgb
from .masks import DEFAULT_THRESHOLD, full_resolution_mask

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def color(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def overlay(image: Image.Image, objects: list[dict], threshold: float | str = DEFAULT_THRESHOLD,
            alpha: float = 0.45, boxes: bool = True, labels: bool = True, scale: int = 1) -> Image.Image:
    """Draw each object's mask (from its stored `attention` map) in its colour, with box and name.

    `objects` are rows of a freeatm dataset's `objects` column (dicts with `name` and `attention`), so
    masks are re-binarized here at `threshold`. `scale` enlarges small images first (nearest).
    """
    base = rgb(image)
    # Masks and boxes at the image's size (those a dataset stores and a user gets), enlarged with the image.
    results = [full_resolution_mask(np.asarray(o["attention"]), (base.height, base.width), threshold)
               for o in objects]
    if scale != 1:
        base = base.resize((base.width * scale, base.height * scale), Image.NEAREST)
    out = np.asarray(base, dtype=np.float32).copy()
    for i, r in enumerate(results):
        if not r.empty:
            m = r.mask.repeat(scale, 0).repeat(scale, 1) if scale != 1 else r.mask
            out[m] = (1 - alpha) * out[m] + alpha * np.array(color(i), dtype=np.float32)
    img = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for i, (o, r) in enumerate(zip(objects, results)):
        if r.bbox is None:
            continue
        x0, y0, x1, y1 = (v * scale for v in r.bbox)
        if boxes:
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color(i), width=max(1, scale // 2))
        if labels:
            draw.text((x0 + 2, y0 + 1), o["name"], fill=color(i))
    return img


def heatmap(attention, size: tuple[int, int] | None = None) -> Image.Image:
    """A soft map as a colour image (dark blue → yellow), resized to `size=(height, width)`."""
    a = np.asarray(attention, dtype=np.float32)
    a = a / 255.0 if np.asarray(attention).dtype == np.uint8 else (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    rgb = np.stack([a, a ** 0.5 * 0.9, 0.5 * (1 - a)], -1)  # a simple perceptual-ish ramp
    img = Image.fromarray((rgb * 255).round().astype(np.uint8))
    return img.resize((size[1], size[0]), Image.BILINEAR) if size else img


def grid(images: list[Image.Image], columns: int, pad: int = 2, background=(255, 255, 255)) -> Image.Image:
    """Images (same size) in a grid."""
    w, h = images[0].size
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), background)
    for k, im in enumerate(images):
        canvas.paste(rgb(im), (pad + (k % columns) * (w + pad), pad + (k // columns) * (h + pad)))
    return canvas

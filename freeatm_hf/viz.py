"""Mask overlays for people to look at: the dataset card's examples and the Space use the same drawing."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
    for i, r in enumerate(results):
        if boxes and r.bbox is not None:
            x0, y0, x1, y1 = (v * scale for v in r.bbox)
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color(i), width=max(1, scale // 2))
    if labels:  # after every box, so that no box is drawn over a name
        _draw_labels(draw, img.size, [(o["name"], tuple(v * scale for v in r.bbox), color(i))
                                      for i, (o, r) in enumerate(zip(objects, results)) if r.bbox is not None])
    return img


def _draw_labels(draw: ImageDraw.ImageDraw, size: tuple[int, int], labels: list):
    """Each name on a tag in its object's colour at its box's corner. Plain text in the colour vanished on a
    background of that colour, and names of boxes with the same corner (an undrawn object's map often lands on
    another object) were written over each other."""
    font = ImageFont.load_default(size=max(10, round(min(size) / 24)))
    texts = [draw.textbbox((0, 0), name, font=font) for name, _, _ in labels]
    sizes = [(right - left + 4, bottom - top + 4) for left, top, right, bottom in texts]
    corners = label_positions([(s, box) for s, (_, box, _) in zip(sizes, labels)], size)
    for (name, _, fill), (left, top, _, _), (w, h), (x, y) in zip(labels, texts, sizes, corners):
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=fill)
        ink = (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 150 else (255, 255, 255)
        draw.text((x + 2 - left, y + 2 - top), name, fill=ink, font=font)


def label_positions(tags: list, size: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners for tags `((width, height), box)` in an image of `size=(width, height)`: above the box's
    top-left corner (inside it when there is no room above), within the image, and moved down past any tag already
    placed that it would cover."""
    placed: list[tuple[int, int, int, int]] = []
    for (w, h), (x0, y0, _, _) in tags:
        x = int(max(0, min(x0, size[0] - w)))
        y = int(y0 - h if y0 - h >= 0 else y0)
        moved = True
        while moved:
            moved = False
            for px, py, pw, ph in placed:
                if x < px + pw and px < x + w and y < py + ph and py < y + h:
                    y, moved = py + ph, True
        y = min(y, max(0, size[1] - h))
        placed.append((x, y, w, h))
    return [(x, y) for x, y, _, _ in placed]


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

"""Soft attention maps → (optionally refined at image resolution) → normalized maps → binary masks →
connected components → boxes.

All functions take NumPy or torch 2-D maps and return NumPy. A map with no contrast (all equal, or all
zero) has no object in it: it yields `MaskResult(empty=True)` with an empty mask and no box, never NaN.
"""

from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.4
# A map flatter than this, relative to its size, is float rounding, not a region: attention probabilities are
# ~1e-3 and float32 rounds them in steps of ~1e-10, far above any absolute epsilon.
_FLAT = 1e-6


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def normalize(soft_map) -> np.ndarray | None:
    """Min-max scale to [0, 1]; `None` for a flat map (nothing stands out) or a non-finite one."""
    m = _np(soft_map)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("attention map contains NaN or inf")
    lo, hi = m.min(), m.max()
    if hi - lo <= _FLAT * max(abs(hi), abs(lo)):
        return None
    return (m - lo) / (hi - lo)


def _histogram01(values: np.ndarray, bins: int) -> np.ndarray:
    """`np.histogram(values, bins, range=(0, 1))`'s counts. For values in [0, 1] and a power-of-two `bins`,
    floor(v·bins) is exact in floating point and is the bin np.histogram assigns (1.0 in the last), at a third of its
    cost: a training row's Otsu thresholds histogram a megapixel of resized maps."""
    if bins & (bins - 1) or not values.size or not (values.min() >= 0 and values.max() <= 1):  # NaN: np's way
        return np.histogram(values, bins=bins, range=(0.0, 1.0))[0]
    return np.bincount(np.minimum((values * bins).astype(np.intp), bins - 1), minlength=bins)


def otsu_threshold(values, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: maximizes the between-class variance of the histogram."""
    # float32 as it comes (float64 would copy it): its bins are those of the same values in float64.
    v = values if isinstance(values, np.ndarray) and values.dtype in (np.float32, np.float64) else _np(values)
    hist = _histogram01(v.ravel(), bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    p = hist / max(hist.sum(), 1)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centers)
    w1 = 1 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    if between.max() <= 0:  # one value throughout (a flat map): no cut splits it, nothing is foreground
        return 1.0
    # Every cut inside an empty gap between the modes scores the same; take the middle of that plateau
    # rather than its first bin, which would hug the lower mode.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    run = best[: 1 + int(np.argmax(np.diff(best) > 1)) if (np.diff(best) > 1).any() else len(best)]
    # Pixels strictly above the upper edge of the chosen bin are foreground.
    return float(edges[int(run[len(run) // 2]) + 1])


def check_threshold(threshold, name: str = "threshold") -> float | str:
    """A threshold on normalized maps as a float in [0, 1), or "otsu"; `name` is what the error calls it."""
    if threshold == "otsu":
        return threshold
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 <= t < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1) or 'otsu', got {threshold!r}")
    return t


def binarize(normalized, threshold: float | str = DEFAULT_THRESHOLD) -> np.ndarray:
    """`normalized > threshold`; `threshold="otsu"` picks it per map."""
    m = _np(normalized)
    t = check_threshold(threshold)
    return m > (otsu_threshold(m) if t == "otsu" else t)


def connected_components(mask) -> tuple[np.ndarray, int]:
    """8-connected labelling: `(labels, count)`, labels 1..count, 0 for background."""
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=int))
    return labels, int(n)


def bbox(mask, image_size: tuple[int, int] | None = None) -> tuple[float, float, float, float] | None:
    """Box `(x0, y0, x1, y1)` around the mask's pixels, scaled to `image_size=(height, width)`.

    Edges are pixel borders: a mask cell `(r, c)` of an `h×w` grid covers
    `[c·W/w, (c+1)·W/w) × [r·H/h, (r+1)·H/h)` of the image.
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    h, w = m.shape
    height, width = image_size or (h, w)
    sy, sx = height / h, width / w
    return (float(cols[0] * sx), float(rows[0] * sy), float((cols[-1] + 1) * sx), float((rows[-1] + 1) * sy))


@dataclass
class MaskResult:
    mask: np.ndarray  # bool, map resolution
    bbox: tuple[float, float, float, float] | None  # image pixels
    area: float  # fraction of the map above threshold
    num_components: int
    empty: bool
    normalized: np.ndarray | None  # the [0, 1] map, None when flat


def mask_from_map(soft_map, threshold: float | str = DEFAULT_THRESHOLD, image_size=None,
                  largest_component: bool = False, normalized: bool = False) -> MaskResult:
    """The full chain for one object. `largest_component` keeps only the biggest blob (and its box).
    `normalized`: the map is already on the [0, 1] scale of the threshold (a stored map resized), not scaled again."""
    norm = normalize(soft_map)  # refuses a map that is not 2-D or not finite
    if normalized:
        # On the threshold's scale one value throughout is a mask wherever it is above the threshold, as training
        # reads a stored map (an 8-bit map all 255 was an object filling the image there, no mask here).
        norm = _np(soft_map)
    shape = _np(soft_map).shape
    if norm is None:
        return MaskResult(np.zeros(shape, bool), None, 0.0, 0, True, None)
    mask = binarize(norm, threshold)
    labels, n = connected_components(mask)
    if largest_component and n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == (int(np.argmax(sizes)) + 1)
    empty = not mask.any()
    return MaskResult(mask, bbox(mask, image_size), float(mask.mean()), n, empty, norm)


def resize_map(soft_map, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to `size=(height, width)` (e.g. a stored 64×64 map to the image)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(_np(soft_map), dtype=torch.float32)[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def full_resolution_mask(attention, image_size: tuple[int, int], threshold: float | str = DEFAULT_THRESHOLD):
    """Mask at image resolution, `image_size=(height, width)` (not PIL's `.size`), from a stored attention map
    (8-bit image, array or tensor): an 8-bit map is
    `resize(attention) / 255 > threshold`, as the dataset card states and training reads it
    (`data.masks.row_masks`); scaling it again after the resize would lower the threshold where bilinear
    resizing flattened a peak. Any other map is min-max scaled at its own size, then resized, as training reads it
    (`data.masks.attention_map`): scaled after the resize, a 16-bit map's masks were larger than training's."""
    stored = np.asarray(attention).dtype == np.uint8
    if stored:
        m = resize_map(np.asarray(attention, dtype=np.float64) / 255.0, image_size)
    else:
        scaled = normalize(attention)
        if scaled is None:  # a flat map marks nothing, at any size
            return mask_from_map(np.zeros(image_size), threshold, image_size)
        m = resize_map(scaled, image_size)
    if threshold != "otsu":
        # Compared in float32, as training compares them: 102/255 and 0.4 are one float32, but that float32 is
        # above the float64 0.4, so a map's pixels stored at 0.4·255 were mask here and not in training's masks
        # (at 0.2, 0.4, 0.6 and 0.8, every object of the example dataset differed).
        t32 = float(np.float32(check_threshold(threshold)))
        threshold = t32 if t32 < 1 else threshold
    return mask_from_map(m, threshold, image_size, normalized=True)


# Guided filter settings for images in [0, 1]: edges whose local colour spread exceeds sqrt(eps) ≈ 0.03 are
# kept. Window: two attention cells (radius 8 px for a 16×16 map of a 64×64 image); one cell left blur in,
# two to four scored alike on the shapes model's validation scenes.
REFINE_MODES = ("none", "guided")  # how maps reach image resolution: resized, or guided-filtered
REFINE_EPS = 1e-3
REFINE_CELLS = 2


def _box(x, r: int):
    """Mean over the (2r+1)² window around each pixel of `(N, C, H, W)`, windows cut at the border (He et al.'s
    box filter divided by the pixel count N). Integral images: the cost does not grow with the window."""
    return _box_1d(_box_1d(x, r, -1), r, -2)


def _box_1d(x, r: int, dim: int):
    import torch

    n = x.shape[dim]
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    c = torch.cat([zero, x.cumsum(dim)], dim)  # c[i] = sum of x[:i]
    idx = torch.arange(n, device=x.device)
    hi, lo = (idx + r + 1).clamp(max=n), (idx - r).clamp(min=0)
    sums = c.index_select(dim, hi) - c.index_select(dim, lo)
    shape = [1] * x.dim()
    shape[dim] = n
    return sums / (hi - lo).to(x.dtype).view(shape)


def guided_filter(guide, maps, radius: int, eps: float = REFINE_EPS):
    """He, Sun & Tang's colour guided filter (ECCV 2010, §3.5): each map becomes, in every window, an affine
    function of the guide's colour, so its edges move to where the image has edges.

    `guide`: `(C, H, W)` float tensor (an image in [0, 1]); `maps`: `(K, H, W)`. Returns `(K, H, W)`.
    """
    import torch

    guide = guide.to(torch.float64 if maps.dtype == torch.float64 else torch.float32)
    maps = maps.to(guide.dtype)
    c, h, w = guide.shape
    k = maps.shape[0]
    mean_i = _box(guide[None], radius)[0]  # (C, H, W)
    mean_p = _box(maps[None], radius)[0]  # (K, H, W)
    mean_ip = _box((guide[None] * maps[:, None]).reshape(1, k * c, h, w), radius).view(k, c, h, w)
    cov_ip = mean_ip - mean_i[None] * mean_p[:, None]  # (K, C, H, W)
    mean_ii = _box((guide[:, None] * guide[None]).reshape(1, c * c, h, w), radius).view(c, c, h, w)
    sigma = mean_ii - mean_i[:, None] * mean_i[None]  # (C, C, H, W)
    lhs = sigma + eps * torch.eye(c, dtype=guide.dtype, device=guide.device)[:, :, None, None]  # (C, C, H, W)
    if c == 3:
        # Closed-form inverse of each pixel's symmetric 3×3 system: elementwise, far faster than a batched
        # solve over H·W tiny matrices.
        inv = _inverse_3x3(lhs)
        a = torch.einsum("cdhw,kdhw->kchw", inv, cov_ip)
    else:
        a = torch.linalg.solve(lhs.permute(2, 3, 0, 1), cov_ip.permute(2, 3, 1, 0)).permute(3, 2, 0, 1)
    b = mean_p - (a * mean_i[None]).sum(1)
    mean_a = _box(a.reshape(1, k * c, h, w), radius).view(k, c, h, w)
    mean_b = _box(b[None], radius)[0]
    return (mean_a * guide[None]).sum(1) + mean_b


def _inverse_3x3(m):
    """Inverse of `(3, 3, H, W)` matrices (one per pixel) by cofactors."""
    import torch

    cof = torch.empty_like(m)
    for i in range(3):
        for j in range(3):
            r0, r1 = [r for r in range(3) if r != i]
            c0, c1 = [c for c in range(3) if c != j]
            cof[j, i] = (-1) ** (i + j) * (m[r0, c0] * m[r1, c1] - m[r0, c1] * m[r1, c0])  # adjugate = cofactorᵀ
    det = m[0, 0] * cof[0, 0] + m[0, 1] * cof[1, 0] + m[0, 2] * cof[2, 0]
    return cof / det


def refine_maps(image, maps, eps: float = REFINE_EPS, device=None) -> list[np.ndarray]:
    """Soft maps (any resolution) → maps at the image's resolution whose edges follow the image's edges:
    bilinear upsampling, then a guided filter with the image as guide and a window of `REFINE_CELLS` map cells.

    `image`: PIL image or `(H, W, 3)` array (uint8 or float in [0, 1]); `maps`: sequence of 2-D maps;
    `device`: where to filter (the generator passes its GPU: a 512² image takes milliseconds there).
    """
    import torch
    import torch.nn.functional as F

    if len(maps) == 0:
        return []
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):  # a (C, H, W) tensor would be read as a 3-row image
        raise ValueError(f"expected an (H, W, C) image with 1, 3 or 4 channels, got shape {img.shape}")
    guide = torch.as_tensor(img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)).permute(2, 0, 1)
    guide = guide.to(device or "cpu")
    h, w = guide.shape[1:]
    stacked = torch.stack([torch.as_tensor(_np(m), dtype=torch.float32) for m in maps]).to(guide.device)
    if not torch.isfinite(stacked).all():
        raise ValueError("attention map contains NaN or inf")
    up = F.interpolate(stacked[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    radius = max(1, round(REFINE_CELLS * max(h / stacked.shape[1], w / stacked.shape[2])))
    return list(guided_filter(guide, up, radius, eps).cpu().numpy())

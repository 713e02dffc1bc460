"""Object masks for training, decoded from a row of a freeatm dataset (or a whole-image mask for real data)."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..masks import DEFAULT_THRESHOLD, normalize


def likely_drawn(peak: float | None, min_attention_peak: float | None) -> bool:
    """False only when the object's peak is known (finite) and below a set cut."""
    if not min_attention_peak or peak is None or not math.isfinite(peak):
        return True
    return peak >= min_attention_peak


def drawn_objects(objects, min_attention_peak: float | None = None) -> list[dict]:
    """The objects the generator most likely drew: those whose `attention_peak` (the raw map's highest mean
    attention probability) reaches `min_attention_peak`. A named object that was not drawn attracts little
    attention anywhere; its min-max normalized map still marks *some* region, which would teach a wrong
    instance. Objects without a peak (datasets written before it was stored, real data) are kept."""
    return [o for o in (objects or []) if likely_drawn(o.get("attention_peak"), min_attention_peak)]


def attention_map(value) -> np.ndarray:
    """A stored attention map as float32 in [0, 1]: an 8-bit map divided by 255, as the dataset card states
    (`masks.full_resolution_mask` reads it so); a binary one (PIL mode "1") as 0 and 1; any other depth min-max
    scaled, a flat one to zeros. Dividing a 1-bit or 16-bit map by 255 would drop or swell every mask."""
    a = np.asarray(value)
    if a.ndim != 2:
        raise ValueError(f"an attention map must be single-channel (height, width), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    scaled = normalize(a) if a.size else None  # the generator's own min-max (NaN refused, flat → None)
    return np.zeros(a.shape, np.float32) if scaled is None else scaled.astype(np.float32)


def maps_at(objects, size: tuple[int, int]) -> torch.Tensor:
    """`(K, H, W)` the objects' attention maps resized to `size`, each on its own (they need not share a size)."""
    if not objects:
        return torch.zeros(0, *size)
    return torch.cat([F.interpolate(torch.from_numpy(attention_map(o["attention"]))[None, None], size=size,
                                    mode="bilinear", align_corners=False)[0] for o in objects])


def row_masks(row: dict, size: tuple[int, int], threshold: float | str = DEFAULT_THRESHOLD, mode: str = "binary") -> torch.Tensor:
    """`(K, H, W)` float masks at image `size=(height, width)` for the row's objects.

    `mode="binary"`: the soft map above `threshold` (what the dataset's boxes use); `mode="soft"`: the map
    itself, zeroed below `threshold` (weights for pooling). A row without objects — real data — gets one
    whole-image mask, so real, synthetic and mixed data share one code path. Objects whose mask is empty are
    left out; if none is left, the whole-image mask is used.
    """
    if mode not in ("binary", "soft"):
        raise ValueError(f"mode must be 'binary' or 'soft', got {mode!r}")
    objects = row.get("objects") or []
    if objects:
        t = maps_at(objects, size)
        if threshold == "otsu":  # per map, on the resized map as the dataset's boxes were
            from ..masks import otsu_threshold

            keep = t > torch.tensor([otsu_threshold(m.numpy()) for m in t]).view(-1, 1, 1)
        else:
            keep = t > float(threshold)
        t = keep.float() if mode == "binary" else t * keep
        t = t[keep.flatten(1).any(1)]
        if len(t):
            return t
    return torch.ones(1, *size)

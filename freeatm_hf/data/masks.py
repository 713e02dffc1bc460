"""Object masks for training, decoded from a row of a freeatm dataset (or a whole-image mask for real data)."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..masks import DEFAULT_THRESHOLD


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


def row_masks(row: dict, size: tuple[int, int], threshold: float | str = DEFAULT_THRESHOLD, mode: str = "binary") -> torch.Tensor:
    """`(K, H, W)` float masks at image `size=(height, width)` for the row's objects.

    `mode="binary"`: the soft map above `threshold` (what the dataset's boxes use); `mode="soft"`: the map
    itself, zeroed below `threshold` (weights for pooling). A row without objects — real data — gets one
    whole-image mask, so real, synthetic and mixed data share one code path. Objects whose mask is empty are
    left out; if none is left, the whole-image mask is used.
    """
    if mode not in ("binary", "soft"):
        raise ValueError(f"mode must be 'binary' or 'soft', got {mode!r}")
    maps = [np.asarray(o["attention"], dtype=np.float32) / 255.0 for o in (row.get("objects") or [])]
    if maps:
        t = F.interpolate(torch.from_numpy(np.stack(maps))[None], size=size, mode="bilinear", align_corners=False)[0]
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

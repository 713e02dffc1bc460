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


def nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """The source index of each of `n_out` samples when `n_in` values are resized nearest-exact: the source pixel
    under each output pixel's centre, torch's own rule (read off `F.interpolate` of a ramp). Plain nearest, what
    torchvision's `resized_crop` applies to a `Mask`, takes the one under its top-left corner: half an output pixel
    off the image, which is resized by pixel centres."""
    ramp = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in)
    return F.interpolate(ramp, size=n_out, mode="nearest-exact").view(-1).long()


def bilinear_taps(pixels: torch.Tensor, n_image: int, n_map: int):
    """`(lower cell, upper cell, upper weight)` per pixel: how a map of `n_map` cells, bilinearly resized to
    `n_image` pixels as `F.interpolate(align_corners=False)` resizes it, reads at the given pixels."""
    scale = torch.tensor(n_map, dtype=torch.float32) / n_image  # interpolate's float scale
    src = ((pixels.float() + 0.5) * scale - 0.5).clamp_min(0)
    lower = src.long().clamp_max(n_map - 1)
    return lower, (lower + 1).clamp_max(n_map - 1), src - lower


def _grid(pixels: int, cells: int, per_cell: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(samples, edges)`: the pixels a share is measured at, `per_cell` per map cell at the middle of equal
    blocks of the image (every pixel when that is as many, or `per_cell` is None), and the blocks' edges."""
    n = pixels if per_cell is None else min(pixels, per_cell * cells)
    edges = torch.arange(n + 1, dtype=torch.float64) * (pixels / n)
    return ((edges[:-1] + edges[1:]) / 2).long(), edges


EXACT_BELOW = 256  # grid samples under which a mask's share is measured at every pixel


def _span(seen: torch.Tensor, edges: torch.Tensor) -> tuple[int, int]:
    """The pixels `[first, last)` of the blocks where a mask was seen, widened by a block each side: a mask's
    pixels lie within a block of a sample that saw it."""
    at = seen.nonzero().flatten()
    first, last = max(int(at[0]) - 1, 0), min(int(at[-1]) + 2, len(edges) - 1)
    return int(edges[first]), int(math.ceil(edges[last]))


def _coverage(edges: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """The share of each block that lies inside `[start, start + length)`."""
    lo, hi = edges[:-1], edges[1:]
    return ((hi.clamp(max=start + length) - lo.clamp(min=start)).clamp(min=0) / (hi - lo)).float()


def _sample(maps: torch.Tensor, thresholds: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
            size: tuple[int, int], mode: str) -> torch.Tensor:
    """`(K, len(rows), len(cols))`: maps `(K, h, w)` of one size, resized to image `size`, at those pixels."""
    c0, c1, cw = bilinear_taps(cols, size[1], maps.shape[2])
    r0, r1, rw = bilinear_taps(rows, size[0], maps.shape[1])
    # Along each row first, then between rows: the same products and sums in fewer, faster passes. The columns are
    # gathered as rows of the transposed maps, the rows blended in place, and the comparison writes its 0/1 as
    # floats (on a CPU a gather along the last dimension, a comparison to bool and bool → float are each slow).
    t = maps.transpose(1, 2)
    across = (t.index_select(1, c0) * (1 - cw)[:, None] + t.index_select(1, c1) * cw[:, None]).mT.contiguous()
    v = across.index_select(1, r0).mul_((1 - rw)[:, None]).add_(across.index_select(1, r1).mul_(rw[:, None]))
    above = torch.gt(v, thresholds.view(-1, 1, 1), out=torch.empty_like(v))
    return above if mode == "binary" else v.mul_(above)


class MapMasks:
    """A row's object masks at image `size=(height, width)`, as `row_masks` defines them (each stored map
    bilinearly resized to the image, then thresholded), evaluated only at the pixels a view reads.

    A 224² view of a 512² image reads a fifth of the image's pixels, and the stored maps are a few thousand
    cells: sampling them at just those pixels skips the full-resolution masks, the larger part of a training
    sample's CPU time (with `threshold="otsu"` the maps are resized once, for their thresholds). Values agree
    with `row_masks` to float rounding (the same weights; a pixel exactly on the threshold may fall either way).

    The share of each mask inside a crop, and whether a mask is empty, are measured on a grid of `grid` samples
    per map cell, each counted by the part of its block inside the crop (every pixel with `grid=None`); a mask
    seen at fewer than `EXACT_BELOW` samples is measured at every pixel of its box, where a block is a large part
    of it.

    A row without objects, or whose masks are all empty, reads as one whole-image mask (as in `row_masks`).
    """

    def __init__(self, objects, size: tuple[int, int], threshold: float | str = DEFAULT_THRESHOLD,
                 mode: str = "binary", grid: int | None = 2):
        if mode not in ("binary", "soft"):
            raise ValueError(f"mode must be 'binary' or 'soft', got {mode!r}")
        self.size, self.mode = size, mode
        maps = [torch.from_numpy(attention_map(o["attention"])) for o in objects or []]
        if threshold == "otsu":  # per map, on the map at image resolution, as `row_masks` and the card's boxes
            from ..masks import otsu_threshold

            thresholds = [otsu_threshold(m.numpy()) for m in maps_at(objects, size)]
        else:
            thresholds = [float(threshold)] * len(maps)
        cells = [max((m.shape[i] for m in maps), default=1) for i in (0, 1)]
        (self.grid_rows, self.row_edges), (self.grid_cols, self.col_edges) = (_grid(n, c, grid)
                                                                              for n, c in zip(size, cells))
        self._group(maps, thresholds)
        on_grid = self.sample(self.grid_rows, self.grid_cols) if maps else torch.zeros(0, 1, 1)
        keep = on_grid.flatten(1).any(1)
        self._group([m for m, k in zip(maps, keep) if k], [t for t, k in zip(thresholds, keep) if k])
        self.grid_mass = on_grid[keep]
        self.grid_total = self.grid_mass.flatten(1).sum(1)
        # A mask seen at few samples is measured at every pixel of its box: there a block's worth of error is a
        # large share of the mask.
        self.exact = {}
        for k in (self.grid_mass.flatten(1) > 0).sum(1).lt(EXACT_BELOW).nonzero().flatten().tolist():
            (r0, r1), (c0, c1) = (_span(self.grid_mass[k].any(axis), edges)
                                  for axis, edges in ((1, self.row_edges), (0, self.col_edges)))
            one = self.maps[k][None], torch.tensor([self.thresholds[k]])
            mass = _sample(*one, torch.arange(r0, r1), torch.arange(c0, c1), size, mode)[0]
            self.exact[k] = (r0, c0, mass, mass.sum())

    def _group(self, maps, thresholds):
        """Maps of one size are sampled together, a stack at a time (a row's maps usually share one)."""
        self.maps, self.thresholds, self.count = maps, thresholds, len(maps)
        shapes = dict.fromkeys(m.shape for m in maps)
        self.groups = [(torch.tensor(i), torch.stack([maps[j] for j in i]), torch.tensor([thresholds[j] for j in i]))
                       for i in ([j for j, m in enumerate(maps) if m.shape == s] for s in shapes)]

    @property
    def whole(self) -> bool:
        return self.count == 0

    def __len__(self) -> int:
        return max(self.count, 1)

    def sample(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """`(K, len(rows), len(cols))` float masks at the given image rows and columns."""
        if self.whole:
            return torch.ones(1, len(rows), len(cols))
        if len(self.groups) == 1:  # one stack of all the maps, in order (the usual case): no copy into `out`
            return _sample(*self.groups[0][1:], rows, cols, self.size, self.mode)
        out = torch.empty(self.count, len(rows), len(cols))
        for index, maps, thresholds in self.groups:
            out[index] = _sample(maps, thresholds, rows, cols, self.size, self.mode)
        return out

    def crop(self, top: int, left: int, height: int, width: int, out: int) -> torch.Tensor:
        """`(K, out, out)`: the masks of the box resized to `out²` by nearest neighbour (nearest-exact), as
        `TwoViewTransform` resizes a `tv_tensors.Mask`."""
        return self.sample(top + nearest_index(height, out), left + nearest_index(width, out))

    def share(self, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """`(K,)` each mask's share of its mass inside the box (on the grid, or exactly: see the class); 1 for the
        whole-image mask, which stands for the image itself and so lies entire in any crop of it."""
        if self.whole:
            return torch.ones(1)
        # Each sample stands for its block, counted by the share of the block inside the box: a box edge
        # through a block counts it in part, not all or nothing by where its middle falls.
        r, c = _coverage(self.row_edges, top, height), _coverage(self.col_edges, left, width)
        shares = torch.einsum("kij,i,j->k", self.grid_mass, r, c) / self.grid_total
        for k, (r0, c0, mass, total) in self.exact.items():
            inside = mass[max(top - r0, 0) : max(top + height - r0, 0), max(left - c0, 0) : max(left + width - c0, 0)]
            shares[k] = inside.sum() / total
        return shares

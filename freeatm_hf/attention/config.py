import math
from dataclasses import dataclass


@dataclass
class CaptureConfig:
    """Which cross-attention maps are captured and how they are combined.

    Resolutions are named by their down-sampling factor relative to the latent, so one default fits
    every UNet: factors 2 and 4 are the 32×32 and 16×16 layers of SD 1.x/2.x at 512 px and the 64×64 and
    32×32 layers of SDXL at 1024 px. The literature (DAAM, Free-ATM, P2P) finds these localise best; the
    finest layers are noisy and the coarsest too blurry.

    Args:
        down_factors (`tuple[int]`, *optional*, defaults to `(2, 4)`): layer resolutions to capture.
        include_mid (`bool`, *optional*, defaults to `False`): also capture the mid block; its down factor must be in `down_factors`.
        step_window (`tuple[float, float]`, *optional*, defaults to `(0.0, 1.0)`): fraction `[start, end)` of
            the denoiser calls whose maps are summed (one call per timestep of the scheduler: one per denoising
            step for most schedulers, two for Heun's).
        factor_weights (`dict[int, float]`, *optional*): weight of each factor when resolutions are
            averaged (default: equal).
        map_size (`tuple[int, int]`, *optional*): (height, width) of the aggregated maps; defaults to
            the latent size. The generator's guided refinement takes them from there to the image's size.
        mmdit_blocks (`str`, *optional*, defaults to `"double"`): MM-DiT blocks to capture: `"double"` (the
            joint text+image blocks: all of SD3's, Flux's first 19), `"single"` (Flux's single-stream blocks,
            whose one sequence is [text, image]) or `"all"`.
        layer_weights (`dict[str, float]`, *optional*): weight of individual layers or blocks within their
            resolution, keyed by module-name prefix (`"transformer_blocks.0"`, `"single_transformer_blocks"`,
            `"up_blocks.1"`); the longest matching prefix wins, unmatched layers weigh 1, and a layer of weight 0
            is not captured at all. MM-DiT blocks all share one resolution, so this is how they are weighted.
    """

    down_factors: tuple[int, ...] = (2, 4)
    include_mid: bool = False
    step_window: tuple[float, float] = (0.0, 1.0)
    factor_weights: dict[int, float] | None = None
    map_size: tuple[int, int] | None = None
    mmdit_blocks: str = "double"
    layer_weights: dict[str, float] | None = None

    def __post_init__(self):
        if self.mmdit_blocks not in ("double", "single", "all"):
            raise ValueError(f"mmdit_blocks must be double, single or all, got {self.mmdit_blocks!r}")
        self.down_factors = tuple(int(f) for f in self.down_factors)
        self.step_window = tuple(float(s) for s in self.step_window)
        if len(self.step_window) != 2:
            raise ValueError(f"step_window is two fractions, start and end, got {self.step_window}")
        start, end = self.step_window
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"step_window must satisfy 0 <= start < end <= 1, got {self.step_window}")
        if not self.down_factors or any(f < 1 or f & (f - 1) for f in self.down_factors):
            raise ValueError(f"down_factors must be powers of two, got {self.down_factors}")
        if self.factor_weights is not None:
            self.factor_weights = {int(k): float(v) for k, v in self.factor_weights.items()}
            missing = set(self.down_factors) - set(self.factor_weights)
            if missing:
                raise ValueError(f"factor_weights has no weight for factors {sorted(missing)}")
            used = [self.factor_weights[f] for f in self.down_factors]
            if not all(math.isfinite(w) and w >= 0 for w in used) or sum(used) <= 0:
                # Found now, not as a NaN map after the whole batch is denoised.
                raise ValueError(f"factor_weights must be finite and >= 0 with a positive sum, got {self.factor_weights}")
        if self.layer_weights is not None:
            self.layer_weights = {str(k): float(v) for k, v in self.layer_weights.items()}
            bad = {k: v for k, v in self.layer_weights.items() if not math.isfinite(v) or v < 0}
            if bad:
                raise ValueError(f"layer_weights must be finite and >= 0, got {bad}")

    def weight(self, factor: int) -> float:
        return 1.0 if self.factor_weights is None else self.factor_weights[factor]

    def layer_weight(self, name: str) -> float:
        """The weight of the attention module `name` (e.g. `transformer_blocks.3.attn`): its longest matching
        prefix in `layer_weights` (whole name parts only), else 1."""
        matches = [k for k in (self.layer_weights or {}) if name == k or name.startswith(k + ".")]
        return self.layer_weights[max(matches, key=len)] if matches else 1.0

    def check_layer_weights(self, names) -> None:
        """Every `layer_weights` key must name (a prefix of) one of the capturable modules `names`: a misspelt key
        would otherwise leave every weight at 1 without a word."""
        names = list(names)
        unmatched = [k for k in (self.layer_weights or {}) if not any(n == k or n.startswith(k + ".") for n in names)]
        if unmatched:
            raise ValueError(f"layer_weights keys {unmatched} match none of the captured attention modules, e.g. "
                             f"{names[:3]} (a key is a module-name prefix of whole parts)")

    def to_dict(self) -> dict:
        return {
            "down_factors": list(self.down_factors), "include_mid": self.include_mid,
            "step_window": list(self.step_window),
            "factor_weights": None if self.factor_weights is None else {str(k): v for k, v in self.factor_weights.items()},
            "map_size": None if self.map_size is None else list(self.map_size), "mmdit_blocks": self.mmdit_blocks,
            "layer_weights": self.layer_weights,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CaptureConfig":
        """Inverse of `to_dict`; unknown keys (e.g. a recommended threshold) are ignored."""
        keys = ("down_factors", "include_mid", "step_window", "factor_weights", "map_size", "mmdit_blocks",
                "layer_weights")
        known = {k: d[k] for k in keys if k in d}
        if known.get("map_size") is not None:
            known["map_size"] = tuple(known["map_size"])
        return cls(**known)

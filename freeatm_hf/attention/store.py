"""Device-side accumulators for the captured maps: one fp32 buffer per resolution, fixed size.

Memory does not grow with the number of steps or layers: every call adds into the same
`(batch, tokens, h*w)` buffer, and a 0-d tensor beside it counts (by layer weight) how many maps went in.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import CaptureConfig


def grid_size(latent_hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """Feature-map size of a UNet level: stride-2 convs with padding 1 round up."""
    h, w = latent_hw
    for _ in range(int(math.log2(factor))):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


class AttentionStore:
    """Sums head-averaged cross-attention probabilities of selected token columns.

    Call `begin(...)` before a generation; the processors call `add(...)`; `token_maps()` /
    `object_maps()` read the result.
    """

    def __init__(self, config: CaptureConfig | None = None):
        self.config = config or CaptureConfig()
        self.buffers: dict[int, torch.Tensor] = {}
        # Summed layer weights per factor, as device tensors: a Python number changed inside a compiled denoiser
        # would be a guard, and every step a recompile.
        self.counts: dict[int, torch.Tensor] = {}
        self.step = -1
        self.num_steps = 0
        self._count_steps: Callable[[], int] | None = None
        self.active = False
        self.token_index: torch.Tensor | None = None

    def begin(self, token_index: torch.Tensor, latent_hw: tuple[int, int], num_steps: int | Callable[[], int],
              device=None):
        """Reset for a batch. `token_index` is `(batch, tokens)`: the key columns to keep per sample.

        `num_steps` is the number of denoiser calls the step window divides, or a function returning it that is
        asked at the first call: a pipeline sets its scheduler's timesteps only as it starts denoising, and some
        schedulers call the denoiser more than once per inference step (Heun 2N-1 times, PNDM N+1).

        Buffers of the same shape are zeroed in place rather than reallocated, so a compiled denoiser
        sees the same tensors batch after batch and nothing is allocated per batch.
        """
        if not callable(num_steps):
            self._check_window(num_steps)
        device = torch.device(device) if device is not None else token_index.device
        shapes = {f: (*token_index.shape, math.prod(grid_size(tuple(latent_hw), f))) for f in self.config.down_factors}
        if self.token_index is not None and self.token_index.shape == token_index.shape and self.token_index.device == device:
            self.token_index.copy_(token_index)
        else:
            self.token_index = token_index.to(device)
        for f, shape in shapes.items():
            buf = self.buffers.get(f)
            if buf is not None and buf.shape == shape and buf.device == device:
                buf.zero_()
                self.counts[f].zero_()
            else:
                self.buffers[f] = torch.zeros(shape, dtype=torch.float32, device=device)
                self.counts[f] = torch.zeros((), dtype=torch.float32, device=device)
        self.batch_size, self.num_tokens = token_index.shape
        self.latent_hw = tuple(latent_hw)
        self._count_steps = num_steps if callable(num_steps) else None
        self.num_steps = 0 if callable(num_steps) else num_steps
        self.step = -1
        self.active = False

    def _check_window(self, num_steps: int):
        start, end = self.config.step_window
        if num_steps > 0 and not any(start <= i / num_steps < end for i in range(num_steps)):
            # Found out only after the whole batch was denoised otherwise.
            raise ValueError(f"step_window {list(self.config.step_window)} holds none of the {num_steps} denoiser "
                             "calls of this run: widen it or use more steps")

    def next_step(self):
        """Called once per denoiser forward; decides whether this call is inside the window."""
        self.step += 1
        if self.step == 0 and self._count_steps is not None:
            self.num_steps = self._count_steps()
            self._check_window(self.num_steps)  # before the first call runs
        if self.num_steps <= 0:
            self.active = True
            return
        if self.step >= self.num_steps:
            # An extra pass per step (self-attention guidance, a custom loop): its batch can pass for the conditional
            # half, and the window's fractions no longer match the run.
            raise RuntimeError(f"the pipeline called the denoiser more often than the scheduler has timesteps "
                               f"({self.num_steps}): its extra passes would be recorded as the prompt's attention; "
                               "pipelines that run the denoiser more than once per timestep are not supported")
        start, end = self.config.step_window
        self.active = start <= self.step / self.num_steps < end

    def add(self, factor: int, attn, query: torch.Tensor, key: torch.Tensor, attention_mask=None, weight: float = 1.0):
        """Add softmax(q kᵀ·scale) of the conditional half, head-mean, selected columns.

        `query`/`key` are the projections `(n, N, heads·d)` / `(n, L, heads·d)` of the layer, where the
        batch `n` is `[unconditional, conditional]` under classifier-free guidance (diffusers' order) or
        conditional only.
        """
        b = self.batch_size
        n, length = query.shape[0], query.shape[1]
        if n not in (b, 2 * b):
            raise RuntimeError(f"attention batch {n} is neither the image batch {b} nor twice it (CFG)")
        expected = math.prod(grid_size(self.latent_hw, factor))
        if length != expected:
            raise RuntimeError(f"layer at factor {factor} has {length} queries, expected {expected}")
        heads = attn.heads
        d = query.shape[-1] // heads
        # In fp32: logits rounded to bf16 are off by up to ~5 % in probability at the logit sizes of trained models.
        # Only the conditional half, and the keys are a few dozen text tokens: cheap.
        q = query[n - b :].float().view(b, length, heads, d).transpose(1, 2)
        k = key[n - b :].float().view(b, key.shape[1], heads, d).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            logits = logits + attention_mask[n - b :].view(b, 1, -1, key.shape[1]).float()
        probs = logits.softmax(-1).mean(1)  # (b, N, L)
        self.add_selected(factor, probs.gather(-1, self.token_index[:, None, :].expand(b, length, self.num_tokens)),
                          weight)

    def add_selected(self, factor: int, selected: torch.Tensor, weight: float = 1.0):
        """Add already selected, head-averaged probabilities `(batch, N, tokens)` of one layer call, with the
        layer's weight (the maps are weighted means over layer calls)."""
        expected = math.prod(grid_size(self.latent_hw, factor))
        if selected.shape != (self.batch_size, expected, self.num_tokens):
            raise RuntimeError(f"selected maps {tuple(selected.shape)} do not fit the store "
                               f"({self.batch_size}, {expected}, {self.num_tokens}) at factor {factor}")
        self.buffers[factor].add_(selected.transpose(1, 2), alpha=weight)
        self.counts[factor].add_(weight)

    def weights_added(self) -> dict[int, float]:
        """Summed layer weights added per factor (layer calls, unweighted), read off the device."""
        return {f: c.item() for f, c in self.counts.items()}

    def token_maps(self) -> dict[int, torch.Tensor]:
        """Mean map per factor, `(batch, tokens, h, w)`, over every layer call inside the window."""
        out = {}
        for f, buf in self.buffers.items():
            if self.counts[f].item() == 0:
                raise RuntimeError(f"no attention was captured at factor {f}: no such layer, or no step in the window")
            out[f] = (buf / self.counts[f]).view(self.batch_size, self.num_tokens, *grid_size(self.latent_hw, f))
        return out

    def aggregate(self, map_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Token maps resized to one size and averaged over resolutions with the configured weights."""
        size = tuple(map_size or self.config.map_size or self.latent_hw)
        total, weight = None, 0.0
        for f, m in self.token_maps().items():
            m = m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            w = self.config.weight(f)
            total = m * w if total is None else total + m * w
            weight += w
        return total / weight

    def object_maps(self, groups: list[list[list[int]]], map_size=None) -> list[list[torch.Tensor]]:
        """Per sample, per object: the mean of its tokens' aggregated maps.

        `groups[b][o]` lists the columns of `token_index[b]` that belong to object `o` of sample `b`.
        """
        agg = self.aggregate(map_size)
        return [[agg[b, cols].mean(0) for cols in objs] for b, objs in enumerate(groups)]

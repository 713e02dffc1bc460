"""`FreeATMGenerator`: a diffusers text-to-image pipeline that also returns one mask per object noun."""

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..attention import AttentionStore, CaptureConfig, capture_unet, object_token_indices
from ..attention.joint import capture_joint
from ..attention.tokens import ObjectTokens
from ..masks import DEFAULT_THRESHOLD, REFINE_MODES, MaskResult, check_threshold, mask_from_map, normalize, refine_maps
from ..prompts import Prompt, as_prompt
from .config import DEFAULT_GUIDANCE
from .pipelines import pipeline_recommendation

logger = logging.getLogger(__name__)


@dataclass
class GeneratedObject:
    name: str
    label: int
    token_indices: tuple[int, ...]
    # float32, mean attention probability at map resolution (not normalized); with refine="guided", that map
    # guided-filtered at the image's resolution
    soft_map: np.ndarray
    mask: MaskResult
    # The captured map's highest mean attention probability, before normalization and refinement. Objects the
    # generator did not draw attract little attention anywhere, so a low peak flags them
    # (`freeatm_hf.data.masks.likely_drawn`). None when the map is empty or not finite.
    attention_peak: float | None = None

    @property
    def attention_uint8(self) -> np.ndarray:
        """The normalized map as 8-bit (how datasets store it); zeros when the map is flat."""
        if self.mask.normalized is None:
            return np.zeros(self.soft_map.shape, np.uint8)
        return np.round(self.mask.normalized * 255).astype(np.uint8)


@dataclass
class GenerationOutput:
    images: list  # PIL images, or as output_type asks: "np" (H, W, C) arrays, "pt" (C, H, W) tensors
    prompts: list[Prompt]
    seeds: list[int]
    objects: list[list[GeneratedObject]]
    truncated: list[list[str]] = field(default_factory=list)  # nouns cut off by the text encoder's limit


def check_guidance(scale, name: str = "guidance_scale") -> float:
    """A finite, non-negative guidance scale: NaN compares false with everything, so the pipelines would quietly skip
    classifier-free guidance (their `guidance_scale > 1` test) and the card would record `nan`."""
    value = float(scale)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {scale}")
    return value


class FreeATMGenerator:
    """Wraps a `StableDiffusionPipeline` / `StableDiffusionXLPipeline` (or any pipeline with a
    `UNet2DConditionModel` and a CLIP tokenizer).

    Args:
        pipe: the diffusers pipeline; moved, offloaded and compiled as the user likes.
        capture (`CaptureConfig`, *optional*): which layers and steps make the maps. Defaults to the setting
            the model folder recommends (`freeatm.json`, see `pipeline_recommendation`), else
            `CaptureConfig()`.
        threshold (`float` or `"otsu"`, *optional*): binarization of the normalized maps; defaults to the
            folder's recommended threshold, else 0.4.
        refine (`"guided"` or `"none"`, *optional*): `"guided"` brings each map to the image's resolution with a
            guided filter (the generated image as guide), so mask edges follow the object's edges instead of
            the attention grid's. Defaults to the folder's recommendation, else `"none"`.
        guidance_scale (`float`, *optional*): classifier-free guidance used when a call gives none; defaults to
            the folder's recommendation, else 7.5.
        revision (`str`, *optional*): the branch, tag or commit a Hub pipeline was loaded at, so that the
            recommendation read is the one saved with those weights (a loaded pipeline knows only its repo id).

    Example:
        >>> gen = FreeATMGenerator(pipe)
        >>> out = gen([Prompt.from_nouns("a dog with a ball on a lawn", ["dog", "ball"])], seeds=[0])
        >>> out.objects[0][0].mask.bbox
    """

    def __init__(self, pipe, capture: CaptureConfig | None = None, threshold: float | str | None = None,
                 refine: str | None = None, guidance_scale: float | None = None, revision: str | None = None):
        if getattr(pipe, "unet", None) is not None and getattr(pipe, "tokenizer", None) is not None:
            self.kind = "unet"
        elif getattr(pipe, "transformer", None) is not None and hasattr(pipe, "tokenizer_2"):
            # MM-DiT: Flux orders the joint sequence [text, image], SD3 [image, text].
            self.kind = "flux" if type(pipe).__name__.startswith("Flux") else "sd3"
        else:
            # A ValueError: the pipeline is a user's model id or folder (an unconditional DDPM has a UNet and no
            # text to attend to).
            raise ValueError(f"{type(pipe).__name__}: not a text-to-image pipeline freeatm can capture; supported are "
                             "UNet pipelines (SD 1.x/2.x, SDXL) and MM-DiT pipelines (SD3, Flux)")
        self.pipe = pipe
        # A pipeline does not remember the revision it was loaded at: without it, the recommendation read is main's.
        recommended = (pipeline_recommendation(pipe, revision) if None in (capture, threshold, refine, guidance_scale)
                       else None) or {}
        if capture is None:
            capture = CaptureConfig.from_dict(recommended.get("capture") or {})
        if threshold is None:  # `is None`, not `or`: a recommended 0 is a value (guidance 0.0 for a Turbo model)
            threshold = recommended["threshold"] if recommended.get("threshold") is not None else DEFAULT_THRESHOLD
        if refine is None:
            refine = recommended.get("refine") or "none"
        if refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
        self.refine = refine
        if guidance_scale is None:
            g = recommended.get("guidance_scale")
            guidance_scale = DEFAULT_GUIDANCE if g is None else g
        self.guidance_scale = check_guidance(guidance_scale)
        if self.kind != "unet" and capture.down_factors == CaptureConfig().down_factors:
            # Every MM-DiT block works on the patch grid (latent / 2): the UNet default does not apply.
            capture = replace(capture, down_factors=(2,))
        _check_capture_fits(self.kind, capture)
        self.capture = capture
        # Checked here: the first mask is made after a whole denoising run, and only for a prompt with nouns.
        self.threshold = check_threshold(threshold)
        self.store = AttentionStore(self.capture)
        self._processors: dict = {}  # reused across calls (see capture_unet)

    @property
    def default_size(self) -> tuple[int, int]:
        if self.kind == "unet":
            # As the SD pipeline reads it: an int, or (height, width) for a UNet trained on non-square latents.
            size = self.pipe.unet.config.sample_size
            h, w = (size, size) if isinstance(size, int) else size[:2]
        else:
            h = w = self.pipe.default_sample_size
        return h * self.pipe.vae_scale_factor, w * self.pipe.vae_scale_factor

    def object_tokens(self, prompt: Prompt, max_sequence_length: int) -> list[ObjectTokens]:
        """Token columns of each object in the text sequence the denoiser attends to.

        UNet: CLIP positions. SD3: the CLIP positions (0–76) *and* the T5 positions (77 + i; the pipeline pads
        CLIP to its tokenizer's length, 77, and appends T5) — the object's map averages both; an object cut from
        one encoder keeps the other. Flux: T5 positions only (CLIP is pooled).
        """
        names = {"unet": ("tokenizer", "tokenizer_2"), "flux": ("tokenizer_2",), "sd3": ("tokenizer", "tokenizer_3")}
        self._check_prompt_encoded_as_written(prompt.text, [getattr(self.pipe, n, None) for n in names[self.kind]])
        if self.kind == "unet":
            return object_token_indices(self.pipe.tokenizer, prompt)
        if self.kind == "flux":
            return object_token_indices(self.pipe.tokenizer_2, prompt, max_sequence_length)
        clip = object_token_indices(self.pipe.tokenizer, prompt)
        if getattr(self.pipe, "text_encoder_3", None) is None:
            return clip
        t5 = object_token_indices(self.pipe.tokenizer_3, prompt, max_sequence_length)
        offset = self.pipe.tokenizer_max_length
        merged = []
        for c, t in zip(clip, t5):
            idx = (() if c.truncated else c.token_indices) + (() if t.truncated else tuple(offset + i for i in t.token_indices))
            merged.append(ObjectTokens(c.name, idx, truncated=not idx))
        return merged

    def _check_prompt_encoded_as_written(self, text: str, tokenizers):
        """The token columns are found in `text`; a pipeline with textual inversion encodes it after expanding each
        multi-vector token ("<toy>" → "<toy> <toy>_1 <toy>_2"), which moves every later word to another column."""
        convert = getattr(self.pipe, "maybe_convert_prompt", None)
        if convert is None:
            return
        for tokenizer in tokenizers:
            if tokenizer is not None and convert(text, tokenizer) != text:
                raise ValueError(f"{text!r} holds a multi-vector textual inversion token, which the pipeline expands "
                                 "before encoding: the nouns' token columns would be other tokens'. This is not "
                                 "supported with capture (single-vector tokens are)")

    def _denoiser_calls(self, denoising_end) -> int:
        """The denoiser calls the step window divides, known once the pipeline has set the scheduler's timesteps.

        One per timestep: one per step for most schedulers, but Heun makes 2N-1 and PNDM N+1. SDXL's
        `denoising_end` (base + refiner) stops early by cutting its local copy of the timesteps, not the
        scheduler's, so the same cut is made here.
        """
        timesteps = self.pipe.scheduler.timesteps
        if isinstance(denoising_end, float) and 0 < denoising_end < 1:
            n = self.pipe.scheduler.config.num_train_timesteps
            return int((timesteps >= int(round(n - denoising_end * n))).sum())
        return len(timesteps)

    def __call__(self, prompts, seeds: list[int] | int, num_inference_steps: int = 25,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                 **pipe_kwargs) -> GenerationOutput:
        """Generate one image per prompt, with a mask per tracked noun.

        Args:
            prompts (`list` of `Prompt`, `str` or `dict`): one batch. A `Prompt` (or `{"text", "nouns"}`) names the
                nouns to track; a plain string tracks none (no masks). A single prompt is a batch of one.
            seeds (`list[int]` or `int`): one per prompt; image `i` is drawn from `torch.Generator().manual_seed(
                seeds[i])`.
            num_inference_steps, guidance_scale, height, width: as the pipeline's; `guidance_scale` defaults to
                the generator's. Other keyword arguments go to the pipeline (`output_type`, `negative_prompt`...).
        """
        if isinstance(prompts, (str, dict, Prompt)):
            # A bare string would otherwise be iterated: one prompt per character.
            prompts = [prompts]
        if isinstance(seeds, int):
            seeds = [seeds]
        prompts = [as_prompt(p) for p in prompts]
        guidance_scale = self.guidance_scale if guidance_scale is None else check_guidance(guidance_scale)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: one seed per image")
        other_text = [k for k in ("prompt_2", "prompt_3") if pipe_kwargs.get(k) is not None]
        if other_text:
            # The objects' token columns are found in the prompt; SDXL, SD3 and Flux lay their other encoders'
            # tokens at the same (or offset) positions, which hold other words when those encoders read other text.
            raise ValueError(f"{', '.join(other_text)} is not supported with capture: every text encoder must read "
                             "the prompt whose nouns are tracked")
        for key, only in (("num_images_per_prompt", 1), ("return_dict", True)):
            # One image per prompt and seed, read from the pipeline's output object: else diffusers' "generators
            # of length 1" error, or a tuple without `.images`.
            if pipe_kwargs.get(key, only) != only:
                raise ValueError(f"{key}={pipe_kwargs[key]!r} is not supported with capture (only {only!r}): "
                                 "for several images of a prompt, repeat it with other seeds")
        if self.refine == "guided" and pipe_kwargs.get("output_type") == "latent":
            raise ValueError("refine='guided' filters the maps with the decoded image: not with output_type='latent'")
        if pipe_kwargs.get("pag_scale") or "PAG" in type(self.pipe).__name__:
            # Perturbed-attention guidance adds a batch of perturbed passes to the denoiser's batch.
            raise ValueError(f"{type(self.pipe).__name__}: perturbed-attention guidance is not supported with capture")
        negative = any(pipe_kwargs.get(k) is not None for k in ("negative_prompt", "negative_prompt_embeds"))
        if self.kind == "flux" and pipe_kwargs.get("true_cfg_scale", 1.0) > 1 and negative:
            # Flux's true CFG runs the transformer a second time per step on the negative prompt: its attention
            # would be added to the prompt's maps and the step window would be counted twice as fast.
            raise ValueError("Flux true CFG (true_cfg_scale > 1 with a negative prompt) is not supported with "
                             "capture: use guidance_scale (Flux's distilled guidance) instead")
        if self.kind == "sd3" and pipe_kwargs.get("skip_guidance_layers") is not None:
            # Skip-layer guidance runs the transformer once more per guided step, on the prompt alone with layers
            # skipped: its attention would be added to the maps and the step window counted too fast.
            raise ValueError("SD3 skip-layer guidance (skip_guidance_layers) is not supported with capture: leave "
                             "it unset (classifier-free guidance alone)")
        height = height or self.default_size[0]
        width = width or self.default_size[1]
        # MM-DiT transformers see the latent in 2×2 patches (Flux would silently round the size down).
        factor = self.pipe.vae_scale_factor * (1 if self.kind == "unet" else 2)
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of {factor} for {type(self.pipe).__name__}, got "
                             f"{height}x{width}")
        latent_hw = (height // self.pipe.vae_scale_factor, width // self.pipe.vae_scale_factor)

        max_seq = pipe_kwargs.get("max_sequence_length", 512 if self.kind == "flux" else 256)
        tokens = [self.object_tokens(p, max_seq) for p in prompts]
        token_index, groups = _token_columns(tokens)
        device = self.pipe._execution_device
        store = self.store
        denoising_end = pipe_kwargs.get("denoising_end")
        store.begin(token_index, latent_hw, lambda: self._denoiser_calls(denoising_end), device=device)
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        if self.kind == "unet":
            context = capture_unet(self.pipe.unet, store, self._processors)
        else:
            context = capture_joint(self.pipe.transformer, store, text_first=self.kind == "flux",
                                    processors=self._processors)
        with context:
            images = self.pipe(
                prompt=[p.text for p in prompts], generator=generators, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, height=height, width=width, **pipe_kwargs,
            ).images
        maps = store.object_maps(groups)

        objects, truncated = [], []
        for b, (prompt, toks) in enumerate(zip(prompts, tokens)):
            kept = [(o, t) for o, t in zip(prompt.objects, toks) if not t.truncated]
            cut = [t.name for t in toks if t.truncated]
            if cut:
                if self.kind == "unet":
                    limit = f"{self.pipe.tokenizer.model_max_length}-token CLIP"
                elif self.kind == "flux":
                    limit = f"{max_seq}-token T5"
                else:
                    limit = f"{self.pipe.tokenizer_max_length}-token CLIP and {max_seq}-token T5"
                # The seed and the text, not the place in this batch: a generation calls batch by batch, and its
                # row i has seed + i.
                text = prompt.text if len(prompt.text) <= 60 else prompt.text[:57] + "..."
                logger.warning("image of seed %d, prompt %r: %s cut off by the %s limit; no mask for them",
                               seeds[b], text, cut, limit)
            truncated.append(cut)
            soft = [m.float().cpu().numpy() for m in maps[b]]
            peaks = [float(m.max()) if m.size and np.isfinite(m).all() else None for m in soft]
            if self.refine == "guided":
                # A flat map stays flat: the filter's float32 ripple (~1e-6 relative) would pass for a region.
                soft = [np.full(r.shape, m.flat[0], np.float32) if normalize(m) is None else r.astype(np.float32)
                        for m, r in zip(soft, refine_maps(_hwc(images[b]), soft, device=device))]
            objects.append([
                GeneratedObject(o.name, o.label, t.token_indices, m,
                                mask_from_map(m, self.threshold, image_size=(height, width)), peak)
                for (o, t), m, peak in zip(kept, soft, peaks)
            ])
        return GenerationOutput(list(images), prompts, [int(s) for s in seeds], objects, truncated)


def _check_capture_fits(kind: str, capture: CaptureConfig):
    """Refuse the other denoiser family's capture settings: dropped, they would still be stated in the card."""
    if kind == "unet" and capture.mmdit_blocks != CaptureConfig().mmdit_blocks:
        raise ValueError(f"mmdit_blocks={capture.mmdit_blocks!r} picks MM-DiT blocks (SD3, Flux); a UNet pipeline has "
                         "none: leave it unset")
    if kind != "unet" and capture.include_mid:
        raise ValueError(f"include_mid captures a UNet's mid block; an MM-DiT ({kind}) has none: leave it unset")
    if kind != "unet" and tuple(capture.down_factors) != (2,):
        raise ValueError(f"down_factors {list(capture.down_factors)}: every MM-DiT ({kind}) block works on the patch "
                         "grid (factor 2); leave it unset or give 2, and weigh blocks with layer_weights")


def _hwc(image):
    """An output image as the guided filter takes it, `(H, W, C)`: PIL and "np" images are; a "pt" one is
    `(C, H, W)` (latents are refused before generating; `refine_maps` checks the channels)."""
    return image.permute(1, 2, 0).float().cpu().numpy() if isinstance(image, torch.Tensor) else image


def _token_columns(tokens, multiple: int = 8) -> tuple[torch.Tensor, list[list[list[int]]]]:
    """Union of the token positions each sample needs, padded to a rectangle, and per object the
    columns of that rectangle it owns. Padding repeats position 0 and is never read; the width is
    rounded up to a multiple of 8 so a compiled denoiser sees few distinct shapes."""
    per_sample = [sorted({i for t in objs if not t.truncated for i in t.token_indices}) or [0] for objs in tokens]
    width = -(-max(len(p) for p in per_sample) // multiple) * multiple
    index = torch.zeros(len(tokens), width, dtype=torch.long)
    groups = []
    for b, (cols, objs) in enumerate(zip(per_sample, tokens)):
        index[b, : len(cols)] = torch.tensor(cols)
        where = {tok: j for j, tok in enumerate(cols)}
        groups.append([[where[i] for i in t.token_indices] for t in objs if not t.truncated])
    return index, groups

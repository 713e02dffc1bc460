"""MAE with attention-guided masking (Free-ATM §3.3.2): of the 75 % masked patches, a share β is chosen by
the highest attention score and the rest at random; β grows linearly to 0.8 over training, so masking
moves from random toward the foreground without a teacher network (unlike Hard Patches Mining).

The model *is* transformers' `ViTMAEForPreTraining` (a subclass that only adds the β-driven `noise`): its
weights load into stock ViTMAE classes unchanged, and `export_vit` writes a plain `ViTModel` folder.
"""

import logging

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

logger = logging.getLogger(__name__)


class MAEConfig(ViTMAEConfig):
    """`ViTMAEConfig` (defaults: ViT-B/16, 224 px, mask ratio 0.75, norm-pix loss on) plus `beta_max`
    (defaults to 0.8), the final share of masked patches chosen by attention. LayerNorm eps defaults to 1e-6,
    as in MAE's own code and timm's ViT (ViTMAEConfig's 1e-12 is its port's), so the encoder exports to timm
    exactly."""

    model_type = "freeatm_mae"

    def __init__(self, beta_max: float = 0.8, norm_pix_loss: bool = True, **kwargs):
        if not 0.0 <= beta_max <= 1.0:
            raise ValueError(f"beta_max must be in [0, 1], got {beta_max}")
        self.beta_max = beta_max
        kwargs.setdefault("layer_norm_eps", 1e-6)
        super().__init__(norm_pix_loss=norm_pix_loss, **kwargs)
        pair = lambda x: tuple(x) if isinstance(x, (list, tuple)) else (x, x)  # noqa: E731
        if any(s % p for s, p in zip(pair(self.image_size), pair(self.patch_size))):
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}: MAE "
                             "masks whole patches")


def num_patches(config) -> int:
    return (config.image_size // config.patch_size) ** 2


def guided_noise(scores: torch.Tensor | None, beta: float, mask_ratio: float, batch: int, n: int,
                 generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """ViTMAE's `noise` (small = kept, large = masked) so that exactly `round(β·m)` of the `m` masked patches
    are the highest-scoring ones and the other masked patches are uniformly random among the rest.

    `scores` is `(batch, n)`; a row of NaN (an image without masks) gets plain random masking.
    """
    device = device or (scores.device if scores is not None else None)
    noise = torch.rand(batch, n, generator=generator, device=device)
    if scores is None or beta <= 0:
        return noise
    # The count ViTMAE masks, n − int(n·(1 − ratio)), not ratio·n: they differ where ratio·n is no whole number,
    # and β = 1 must then still choose every masked patch.
    hard = round(beta * (n - int(n * (1 - mask_ratio))))
    if hard == 0:
        return noise
    has = ~torch.isnan(scores).any(1)
    # Equal scores are ordered by the same noise, so they do not always pick the same patches: patches in noise order,
    # then stably by score. A tiny random addend (1e-6 · noise) left most ties to topk's own order: it spans ~8 float32
    # steps at a score of 1 (a saturated 8-bit map, a binary mask), and patches of one step are ties again.
    s = torch.nan_to_num(scores.float(), nan=0.0)
    by_noise = noise.argsort(dim=1, descending=True)
    top = by_noise.gather(1, s.gather(1, by_noise).argsort(dim=1, descending=True, stable=True)[:, :hard])
    boosted = noise.clone()
    boosted.scatter_(1, top, 2.0 + noise.gather(1, top))  # above every random value: masked first
    return torch.where(has[:, None], boosted, noise)


def patch_scores(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per patch, the highest object map averaged over the patch: `(K, H, W)` → `(H/p · W/p,)`.

    No maps (real data) → NaN scores, i.e. random masking for that image.
    """
    h, w = maps.shape[-2:]
    if maps.shape[0] == 0:
        return torch.full(((h // patch_size) * (w // patch_size),), float("nan"))
    pooled = torch.nn.functional.avg_pool2d(maps[None].float(), patch_size)[0]  # (K, h/p, w/p)
    return pooled.amax(0).flatten()


def sincos_position_embedding(num_patches: int, dim: int) -> torch.Tensor:
    """`(1, 1 + num_patches, dim)`: MAE's fixed 2-D sin-cos table (a zero row for CLS), laid out as MAE's code
    and its released weights have it (width half first), which is how transformers builds it too."""
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    g = int(num_patches**0.5)
    table = build_2d_sinusoidal_position_embedding(height=g, width=g, embed_dim=dim, cls_token=True)
    half = dim // 2
    return torch.cat([table[..., half:], table[..., :half]], dim=-1)[None]


class MAEModel(ViTMAEForPreTraining):
    """`ViTMAEForPreTraining` whose masking follows `patch_scores` by the current β (`beta`), which
    `freeatm_hf.train.mae.BetaScheduleCallback(config.beta_max)` ramps per optimizer step: with a plain `Trainer`,
    add that callback (`freeatm train mae` does), or β stays 0 and the masking random."""

    config_class = MAEConfig
    accepts_loss_kwargs = False  # a mean already (see SimCLRModel)

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self._init_fixed_embeddings()
        # The current β, set by `BetaScheduleCallback`: a Python float (not a weight, not saved), so reading it
        # never syncs with the device.
        self._beta, self._beta_set, self._warned_unset = 0.0, False, False

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float):
        self._beta, self._beta_set = float(value), True

    @torch.no_grad()
    def _init_fixed_embeddings(self):
        """MAE's initialisation of what transformers 5 leaves at zero (checked with 5.24: `ViTMAEEmbeddings`
        skips its init once the patch projection is flagged initialised, and the decoder's is zeroed): the fixed
        sin-cos position embeddings of encoder and decoder, which are never trained, so at zero the encoder sees a
        bag of patches and every mask token asks the decoder for the same patch; and the CLS and mask tokens.
        `from_pretrained` overwrites all of it with the checkpoint's values."""
        emb = self.vit.embeddings
        if emb.position_embeddings.is_meta:
            return
        n = emb.patch_embeddings.num_patches
        emb.position_embeddings.copy_(sincos_position_embedding(n, emb.position_embeddings.shape[-1]))
        self.decoder.decoder_pos_embed.copy_(sincos_position_embedding(n, self.decoder.decoder_pos_embed.shape[-1]))
        torch.nn.init.normal_(emb.cls_token, std=self.config.initializer_range)
        torch.nn.init.normal_(self.decoder.mask_token, std=self.config.initializer_range)

    # Stock ViTMAE's positional order (`model(x, noise)`), the scores by keyword only: second, they took a caller's
    # noise for scores and masked at random.
    def forward(self, pixel_values=None, noise=None, *args, patch_scores=None, **kwargs):
        if noise is None and pixel_values is not None:
            noise = self._masking_noise(pixel_values, patch_scores)
        return super().forward(pixel_values, noise, *args, **kwargs)

    # Outside any compiled graph (`--torch_compile`): β, read there, would be a guard that fails at every step as it
    # ramps, recompiling the whole model each step until dynamo's recompile limit leaves it eager.
    @torch.compiler.disable
    def _masking_noise(self, pixel_values, patch_scores):
        if (self.training and patch_scores is not None and self.config.beta_max > 0 and not self._beta_set
                and not self._warned_unset):
            # Trained without the schedule, the config's beta_max would be stated and the baseline trained.
            self._warned_unset = True
            logger.warning("MAEModel.beta was never set, so masking stays random (the MAE baseline) although "
                           "beta_max is %s: add freeatm_hf.train.mae.BetaScheduleCallback(%s) to the Trainer's "
                           "callbacks, or set model.beta", self.config.beta_max, self.config.beta_max)
        # The input's own patch grid, not the config's: with `interpolate_pos_encoding` the image may be another size.
        p = self.config.patch_size
        n = (pixel_values.shape[-2] // p) * (pixel_values.shape[-1] // p)
        return guided_noise(patch_scores, self.beta, self.config.mask_ratio, pixel_values.shape[0], n,
                            device=pixel_values.device)


def export_vit(model: MAEModel, folder, add_pooling_layer: bool = False):
    """Write the encoder as a stock `transformers.ViTModel` folder (fine-tune with
    `ViTForImageClassification.from_pretrained(folder, num_labels=...)`). MAE's fixed sin-cos position
    embeddings and the CLS token carry over; the decoder is left behind."""
    from transformers import ViTConfig, ViTModel

    c = model.config
    vit_config = ViTConfig(hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                           num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                           hidden_act=c.hidden_act, layer_norm_eps=c.layer_norm_eps, image_size=c.image_size,
                           patch_size=c.patch_size, num_channels=c.num_channels, qkv_bias=c.qkv_bias)
    vit = ViTModel(vit_config, add_pooling_layer=add_pooling_layer)
    state = {k[len("vit."):]: v for k, v in model.state_dict().items() if k.startswith("vit.")}
    missing, unexpected = vit.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing or unexpected:
        raise RuntimeError(f"encoder weights do not map onto ViTModel: missing {missing}, unexpected {unexpected}")
    vit.save_pretrained(folder)
    # The input pipeline the weights were trained with (ImageNet statistics, MAE's bicubic crops), not
    # ViTImageProcessor's defaults (0.5 mean and std, bilinear), so that AutoImageProcessor feeds what the encoder
    # expects.
    from transformers import ViTImageProcessor
    from transformers.image_utils import PILImageResampling

    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, training_interpolation

    resample = PILImageResampling[training_interpolation("mae").upper()]
    ViTImageProcessor(size={"height": c.image_size, "width": c.image_size}, image_mean=list(IMAGENET_MEAN),
                      image_std=list(IMAGENET_STD), resample=resample).save_pretrained(folder)
    return folder

"""BLIP pretraining (ITC + ITM with hard negatives + LM) assembled from transformers' BLIP parts, for
training with position prompts (Free-ATM §3.3.3; the prompts live in `data/position_prompts.py`).

Attribute names follow the stock classes, so `vision_model`, `text_encoder`, `vision_proj`, `text_proj`
and `itm_head` load into `BlipForImageTextRetrieval`, and `vision_model` + `text_decoder` into
`BlipForConditionalGeneration` (`export_stock`). What does not transfer: BLIP's original decoder shares all
but the self-attention layers with the text encoder; transformers has no such sharing, so here the decoder
is a separate `BlipTextLMHeadModel` (more parameters, same losses). ITC uses the in-batch negatives with a
learned temperature, or with `momentum_distill=True` BLIP's momentum encoders: image and text queues of
momentum features as extra negatives and targets softened by the momentum model (α, distillation).
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BlipConfig, BlipPreTrainedModel
from transformers import initialization as init
from transformers.models.blip.modeling_blip import BlipVisionEmbeddings, BlipVisionModel
from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel, BlipTextModel
from transformers.utils import ModelOutput

from .momentum import MomentumWatch, ema_update_, enqueue_

BLIP_LABEL_SMOOTHING = 0.1  # BLIP's BertLMHeadModel: CrossEntropyLoss(label_smoothing=0.1)


class BlipATMConfig(BlipConfig):
    """`BlipConfig` plus the pretraining settings: `itc_temperature` (initial, 0.07; learned, clamped to
    [0.001, 0.5]), `enc_token_id` (the [ENC] token that replaces the first token for ITM, as BLIP does;
    default: keep the first token), loss weights, and BLIP's momentum distillation for ITC
    (`momentum_distill`, off by default; `momentum` 0.995, `queue_size` 57600, `distill_alpha` 0.4, reached
    by a ramp over BLIP's first epochs: `DistillAlphaCallback`). The LM loss smooths its labels by 0.1, as BLIP's
    decoder does, unless the text config says otherwise (transformers' default is 0)."""

    model_type = "freeatm_blip"

    def __init__(self, itc_temperature: float = 0.07, enc_token_id: int | None = None, itc_weight: float = 1.0,
                 itm_weight: float = 1.0, lm_weight: float = 1.0, momentum_distill: bool = False,
                 momentum: float = 0.995, queue_size: int = 57600, distill_alpha: float = 0.4, **kwargs):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {distill_alpha}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {queue_size}")
        self.itc_temperature, self.enc_token_id = itc_temperature, enc_token_id
        self.itc_weight, self.itm_weight, self.lm_weight = itc_weight, itm_weight, lm_weight
        self.momentum_distill, self.momentum = momentum_distill, momentum
        self.queue_size, self.distill_alpha = queue_size, distill_alpha
        text = kwargs.get("text_config")
        if text is None or (isinstance(text, dict) and "label_smoothing" not in text):
            kwargs["text_config"] = {**(text or {}), "label_smoothing": BLIP_LABEL_SMOOTHING}
        super().__init__(**kwargs)


@dataclass
class BlipATMOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_lm: torch.FloatTensor | None = None
    sim_i2t: torch.FloatTensor | None = None


def positive_targets(b: int, image_ids: torch.Tensor | None, ids_all: torch.Tensor | None = None, columns=None,
                     device=None) -> torch.Tensor:
    """ITC targets of the batch's `b` rows over `columns` candidates (the batch first, then any queue): one-hot
    on the pair itself, or, with `image_ids`, spread evenly over every candidate of the same image, as BLIP's
    retrieval fine-tuning does (an image with several captions, or its features from an earlier epoch still in
    the queue, is not a negative)."""
    columns = b if columns is None else columns
    if image_ids is None:
        return torch.eye(b, columns, device=device)
    ids_all = image_ids if ids_all is None else ids_all
    same = (image_ids[:, None] == ids_all[None, :]).float()
    return same / same.sum(1, keepdim=True)


def itc_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, temperature,
             image_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over the batch (pair i is the positive of image i and of text i; with `image_ids`, every
    pair of the same image is)."""
    sim_i2t = image_feat @ text_feat.T / temperature
    target = positive_targets(len(sim_i2t), image_ids, device=sim_i2t.device)  # symmetric: both directions
    return (F.cross_entropy(sim_i2t, target) + F.cross_entropy(sim_i2t.T, target)) / 2, sim_i2t


def same_caption(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`(B, B)`: whether pairs i and j have the same caption (the same tokens where attended). Generated data
    repeats captions ("a photo of a tench" for every tench, a one-shape scene of the shapes world): the text of
    one such pair describes the other's image as well."""
    ids = input_ids.masked_fill(attention_mask == 0, -1)
    return (ids[:, None, :] == ids[None, :, :]).all(-1)


def sample_hard_negatives(sim_i2t: torch.Tensor, generator: torch.Generator | None = None,
                          image_ids: torch.Tensor | None = None, same_text: torch.Tensor | None = None):
    """BLIP's hard negatives: for each text an image, for each image a text, drawn in proportion to
    softmax(similarity) with the positive pair's weight set to zero, so the positive is never drawn (with
    `image_ids`, no pair of the same image is; without, each pair is its own image; with `same_text` (see
    `same_caption`), no pair whose caption is the same: that "negative" would be a match labelled a mismatch,
    and the most similar one, the first drawn). A text or image left with no candidate gets -1."""
    with torch.no_grad():
        w_i2t = F.softmax(sim_i2t.float(), dim=1) + 1e-5
        w_t2i = F.softmax(sim_i2t.float().T, dim=1) + 1e-5
        ids = torch.arange(len(sim_i2t), device=sim_i2t.device) if image_ids is None else image_ids
        same = ids[:, None] == ids[None, :]
        if same_text is not None:
            same = same | same_text
        none_left = same.all(1)
        # multinomial refuses a row of zeros: such a row draws from a placeholder, and its draw is dropped.
        w_i2t.masked_fill_(same & ~none_left[:, None], 0)
        w_t2i.masked_fill_(same & ~none_left[:, None], 0)
        neg_image_for_text = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1).masked_fill(none_left, -1)
        neg_text_for_image = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1).masked_fill(none_left, -1)
    return neg_image_for_text, neg_text_for_image


class BlipATMModel(MomentumWatch, BlipPreTrainedModel):
    """BLIP pretraining (ITC + ITM + LM). With `momentum_distill`, the momentum encoders move only through
    `momentum_update()`: with a plain `Trainer`, add `freeatm_hf.train.callbacks.MomentumUpdateCallback()` and
    `DistillAlphaCallback()` (`freeatm train blip` does; a warning says so after a few steps without)."""

    config_class = BlipATMConfig
    main_input_name = "pixel_values"
    accepts_loss_kwargs = False  # a mean already (see SimCLRModel)
    # With momentum distillation: each online module's momentum copy, and the state the queues keep.
    MOMENTUM_MODULES = {"vision_model": "vision_model_m", "vision_proj": "vision_proj_m",
                        "text_encoder": "text_encoder_m", "text_proj": "text_proj_m"}
    QUEUE_BUFFERS = ("image_queue", "text_queue", "queue_ptr")  # (image_id_queue: its own init, -1)

    def __init__(self, config: BlipATMConfig):
        super().__init__(config)
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(config.text_config, add_pooling_layer=False)
        self.text_decoder = BlipTextLMHeadModel(config.text_config)
        self.vision_proj = nn.Linear(config.vision_config.hidden_size, config.image_text_hidden_size)
        self.text_proj = nn.Linear(config.text_config.hidden_size, config.image_text_hidden_size)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(float(config.itc_temperature)))
        # The current distillation weight, set by `DistillAlphaCallback` (None: the config's): a Python float,
        # not a weight, not saved.
        self.distill_alpha: float | None = None
        if config.momentum_distill:
            self.vision_model_m = BlipVisionModel(config.vision_config).requires_grad_(False)
            self.vision_proj_m = copy.deepcopy(self.vision_proj).requires_grad_(False)
            self.text_encoder_m = BlipTextModel(config.text_config, add_pooling_layer=False).requires_grad_(False)
            self.text_proj_m = copy.deepcopy(self.text_proj).requires_grad_(False)
            d = config.image_text_hidden_size
            self.register_buffer("image_queue", torch.zeros(config.queue_size, d))
            self.register_buffer("text_queue", torch.zeros(config.queue_size, d))
            # The image id of each queued pair (-1: none given), so the same image's features are not negatives.
            self.register_buffer("image_id_queue", torch.full((config.queue_size,), -1, dtype=torch.long))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.post_init()
        if config.momentum_distill:
            self.reset_momentum()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            # The guarded init leaves what a checkpoint loaded alone: this also runs when only some other key
            # of the model itself is missing (e.g. the image id queue, from a checkpoint saved before it).
            init.constant_(self.temp, self.config.itc_temperature)
            if self.config.momentum_distill:
                init.constant_(self.image_id_queue, -1)

    @torch.no_grad()
    def set_image_size(self, image_size: int):
        """Take `image_size` inputs: every vision tower's (the momentum one too) position table resized by bicubic
        interpolation of its patch grid, the class position kept, as BLIP does between its 224-px pretraining and
        384-px fine-tuning. Without it a smaller input silently takes the table's first rows: patch (r, c) of a
        14×14 grid would get the position of (r·14 + c) // 24, (r·14 + c) % 24 on the 24×24 grid."""
        vision = self.config.vision_config
        if image_size % vision.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of the vision patch size {vision.patch_size}")
        if image_size == vision.image_size:
            return
        for emb in self.modules():
            if isinstance(emb, BlipVisionEmbeddings):
                n = (image_size // vision.patch_size) ** 2
                target = emb.position_embedding.new_empty(1, n + 1, emb.embed_dim)
                table = emb.interpolate_pos_encoding(target, image_size, image_size)
                emb.position_embedding = nn.Parameter(table.contiguous(),
                                                      requires_grad=emb.position_embedding.requires_grad)
                emb.image_size, emb.num_patches, emb.num_positions = image_size, n, n + 1
        vision.image_size = image_size

    # -- momentum distillation (BLIP's ITC with momentum encoders and queues) ------------------------------
    def momentum_pairs(self):
        return [(getattr(self, online), getattr(self, mom)) for online, mom in self.MOMENTUM_MODULES.items()]

    @torch.no_grad()
    def reset_momentum(self, encoders: bool = True, queues: bool = True):
        """Momentum encoders := the online ones; queues := random unit vectors (what BLIP starts from). Called at
        construction, and after loading weights that had no momentum part (a stock BLIP checkpoint)."""
        if encoders:
            for online, momentum in self.momentum_pairs():
                momentum.load_state_dict(online.state_dict())
        if queues:
            for q in (self.image_queue, self.text_queue):
                q.copy_(F.normalize(torch.randn(q.shape, device=q.device), dim=-1))
            self.image_id_queue.fill_(-1)
            self.queue_ptr.zero_()

    def momentum_update(self, momentum: float | None = None):
        """momentum ← m·momentum + (1−m)·online, after each optimizer step (`MomentumUpdateCallback`)."""
        if self.config.momentum_distill:
            self._note_moved()
            ema_update_(self.momentum_pairs(), self.config.momentum if momentum is None else momentum)

    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, image_ids: torch.Tensor | None = None):
        """Write the batch's momentum features and image ids (gathered from every process) into the ring buffers."""
        if image_ids is None:
            image_ids = torch.full((len(image_feat),), -1, dtype=torch.long, device=image_feat.device)
        enqueue_([self.image_queue, self.text_queue, self.image_id_queue], self.queue_ptr,
                 [image_feat, text_feat, image_ids])

    def itc_momentum_loss(self, pixel_values, input_ids, attention_mask, image_feat, text_feat, image_ids=None):
        """BLIP's ITC: negatives are the batch's momentum features and the queues; each target is
        α·softmax(momentum similarities) + (1 − α)·positives (one-hot, or with `image_ids` every batch or queue
        entry of the same image, as in BLIP's retrieval fine-tuning). Returns the loss and the batch block of the
        image→text similarities (for hard negatives); in training the queues take the batch's momentum features."""
        alpha = self.config.distill_alpha if self.distill_alpha is None else self.distill_alpha
        b = len(image_feat)
        with torch.no_grad():
            image_m = self.vision_model_m(pixel_values=pixel_values).last_hidden_state
            image_feat_m = F.normalize(self.vision_proj_m(image_m[:, 0]), dim=-1)
            text_m = self.text_encoder_m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            text_feat_m = F.normalize(self.text_proj_m(text_m[:, 0]), dim=-1)
            image_all = torch.cat([image_feat_m, self.image_queue.clone()])
            text_all = torch.cat([text_feat_m, self.text_queue.clone()])
            ids_all = None if image_ids is None else torch.cat([image_ids, self.image_id_queue.clone()])
            positives = positive_targets(b, image_ids, ids_all, len(text_all), device=image_feat.device)
            target_i2t = alpha * F.softmax(image_feat_m @ text_all.T / self.temp, dim=1) + (1 - alpha) * positives
            target_t2i = alpha * F.softmax(text_feat_m @ image_all.T / self.temp, dim=1) + (1 - alpha) * positives
        sim_i2t = image_feat @ text_all.T / self.temp
        sim_t2i = text_feat @ image_all.T / self.temp
        loss = (F.cross_entropy(sim_i2t, target_i2t) + F.cross_entropy(sim_t2i, target_t2i)) / 2
        if self.training:
            self.enqueue(image_feat_m, text_feat_m, image_ids)
        return loss, sim_i2t[:, :b]

    # -- the pieces, computed exactly as the stock BlipForImageTextRetrieval does ---------------------------
    def image_embeds(self, pixel_values):
        return self.vision_model(pixel_values=pixel_values).last_hidden_state

    def itc_features(self, image_embeds, input_ids, attention_mask):
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1), F.normalize(self.text_proj(text[:, 0]), dim=-1)

    def itm_logits(self, image_embeds, input_ids, attention_mask):
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                                encoder_attention_mask=atts).last_hidden_state
        return self.itm_head(out[:, 0])

    def forward(self, pixel_values, input_ids, attention_mask=None, image_ids: torch.Tensor | None = None,
                return_loss: bool = True, **kwargs) -> BlipATMOutput:
        """`image_ids` (optional, one integer per pair) says which pairs show the same image: those are not each
        other's negatives in ITC (nor in the momentum queue) or in ITM's hard-negative draw."""
        if self.config.momentum_distill:
            self._note_training_forward("MomentumUpdateCallback() and DistillAlphaCallback()")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        image_embeds = self.image_embeds(pixel_values)
        image_feat, text_feat = self.itc_features(image_embeds, input_ids, attention_mask)
        if self.config.momentum_distill:
            loss_itc, sim_i2t = self.itc_momentum_loss(pixel_values, input_ids, attention_mask, image_feat, text_feat,
                                                       image_ids)
        else:
            loss_itc, sim_i2t = itc_loss(image_feat, text_feat, self.temp, image_ids)

        itm_ids = input_ids.clone()
        if self.config.enc_token_id is not None:
            itm_ids[:, 0] = self.config.enc_token_id
        b = len(input_ids)
        neg_img, neg_txt = sample_hard_negatives(sim_i2t.detach(), image_ids=image_ids,
                                                 same_text=same_caption(input_ids, attention_mask))
        # The same pairs for both: whether any other pair is a candidate is symmetric (same image, same caption).
        has = neg_img >= 0
        if has.any():  # else one image, or one caption, all through: no negative pair to match against
            neg_img, neg_txt = neg_img[has], neg_txt[has]
            images = torch.cat([image_embeds, image_embeds[neg_img], image_embeds[has]])
            ids = torch.cat([itm_ids, itm_ids[has], itm_ids[neg_txt]])
            masks = torch.cat([attention_mask, attention_mask[has], attention_mask[neg_txt]])
            logits = self.itm_logits(images, ids, masks)
            labels = torch.cat([torch.ones(b), torch.zeros(len(logits) - b)]).long().to(logits.device)
            loss_itm = F.cross_entropy(logits, labels)
        else:
            loss_itm = torch.zeros((), device=image_embeds.device)

        c = self.config
        if c.lm_weight:
            dec_ids = input_ids.clone()
            dec_ids[:, 0] = c.text_config.bos_token_id
            # Padding by the attention mask, not by pad id: CLIP-style tokenizers pad with their end token, and
            # masking that id would never teach the decoder to stop.
            lm_labels = dec_ids.masked_fill(attention_mask == 0, -100)
            atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
            loss_lm = self.text_decoder(input_ids=dec_ids, attention_mask=attention_mask,
                                        encoder_hidden_states=image_embeds, encoder_attention_mask=atts,
                                        labels=lm_labels, reduction="mean").loss
        else:  # retrieval fine-tuning (ITC + ITM only): the decoder is not run
            loss_lm = torch.zeros((), device=loss_itc.device)
        loss = c.itc_weight * loss_itc + c.itm_weight * loss_itm + c.lm_weight * loss_lm
        return BlipATMOutput(loss=loss, loss_itc=loss_itc.detach(), loss_itm=loss_itm.detach(),
                             loss_lm=loss_lm.detach(), sim_i2t=sim_i2t.detach())


def export_stock(model: BlipATMModel, folder, kind: str = "retrieval"):
    """Save the matching parts as a stock `BlipForImageTextRetrieval` (kind="retrieval") or
    `BlipForConditionalGeneration` (kind="captioning") folder."""
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    cfg = BlipConfig(vision_config=model.config.vision_config.to_dict(), text_config=model.config.text_config.to_dict(),
                     projection_dim=model.config.projection_dim, image_text_hidden_size=model.config.image_text_hidden_size)
    stock = (BlipForImageTextRetrieval if kind == "retrieval" else BlipForConditionalGeneration)(cfg)
    state = {k: v for k, v in model.state_dict().items() if k in stock.state_dict()}
    missing, _ = stock.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(f"stock {type(stock).__name__} parts missing from the checkpoint: {missing[:5]}")
    stock.save_pretrained(folder)
    return folder

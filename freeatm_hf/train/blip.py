"""freeatm train blip: BLIP pretraining (ITC + ITM + LM) with position prompts or plain captions.

    freeatm train blip --dataset outputs/scenes --output_dir outputs/blip-atm --init_from <BLIP folder>
    freeatm train blip recipes/blip_cpu_smoke.yaml                         # from scratch, tiny, CPU
"""

import functools
import logging
from dataclasses import dataclass, field

import torch

from .arguments import DataArguments, check_views, fit_and_save, resume_point
from .trainer import FreeatmTrainer

logger = logging.getLogger(__name__)


class BlipTrainer(FreeatmTrainer):
    """Logs the three BLIP losses (averaged over the training steps since the last log, and over processes, as
    Trainer's `loss` is) next to their weighted sum."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._parts: dict[str, list[torch.Tensor]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            for k in ("loss_itc", "loss_itm", "loss_lm"):  # kept on the device: no sync per step
                self._parts.setdefault(k, []).append(getattr(outputs, k).detach())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._parts:
            means = torch.stack([torch.stack(v).float().mean() for v in self._parts.values()])
            means = self.accelerator.reduce(means, reduction="mean")  # every process logs, as Trainer gathers `loss`
            logs = {**logs, **dict(zip(self._parts, means.tolist()))}
            self._parts = {}
        super().log(logs, *args, **kwargs)


BLIP_SIZES = {
    "tiny": (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8),
             dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)),
    "base": (dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16),
             dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)),
}


MAX_LENGTH = 72  # text tokens: a caption and a few position prompts
MIN_LENGTH = 3  # a start token, one word, an end token
MAX_GRID = 32  # blocks per side: finer than a 16-px patch of a 512-px image names nothing the model can see


@dataclass
class BlipArguments(DataArguments):
    prompts: str = field(default="position", metadata={"help": "position (Free-ATM) or none (baseline)."})
    grid: int = field(default=3, metadata={"help": "Position grid side N (blocks 1..N², row-major)."})
    shuffle_prompts: bool = field(default=True, metadata={"help": "Shuffle the position prompts per sample."})
    init_from: str | None = field(default=None, metadata={
        "help": "A BLIP checkpoint folder (Salesforce/blip-... layout) to start from; its tokenizer is used."})
    model_size: str = field(default="base", metadata={"help": "From scratch: base (ViT-B/16 + BERT-base) or tiny."})
    image_size: int = field(default=224, metadata={
        "help": "Input side (BLIP pretrains at 224). A checkpoint of another size (--init_from) gets its position "
                "embeddings interpolated to it, as BLIP does between pretraining and fine-tuning."})
    max_length: int | None = field(default=None, metadata={
        "help": f"Text tokens (captions are cut by whole prompts). Default {MAX_LENGTH}, or a smaller text position "
                "table of the --init_from checkpoint."})
    crop_scale_min: float = field(default=0.5, metadata={"help": "RandomResizedCrop scale lower bound."})
    momentum_distill: bool = field(default=False, metadata={
        "help": "BLIP's momentum encoders for ITC: queues of momentum features as negatives, soft targets."})
    momentum: float = field(default=0.995, metadata={"help": "Momentum encoders' EMA rate (with --momentum_distill)."})
    queue_size: int = field(default=57600, metadata={"help": "Feature queue length (with --momentum_distill)."})
    distill_alpha: float = field(default=0.4, metadata={"help": "Weight of the momentum model's soft targets."})

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.grid <= MAX_GRID:
            # Below 1 every prompt said "block 0" while the card stated a 3×3 grid; a huge grid hung in the check
            # that the tokenizer tells every block number apart.
            raise ValueError(f"--grid is the number of blocks per side, 1 to {MAX_GRID}; got {self.grid}")
        if self.max_length is not None and self.max_length < MIN_LENGTH:
            # Below it a caption keeps no word between its start and end tokens: the LM and ITC train on nothing.
            raise ValueError(f"--max_length must be at least {MIN_LENGTH} tokens, got {self.max_length}")
        if self.model_size not in BLIP_SIZES:
            raise ValueError(f"--model_size must be one of {', '.join(BLIP_SIZES)}, got {self.model_size!r}")
        check_views(self.image_size, self.crop_scale_min)
        patch = BLIP_SIZES[self.model_size][0]["patch_size"]
        if not self.init_from and self.image_size % patch:  # a checkpoint's positions are interpolated instead
            raise ValueError(f"--image_size {self.image_size} is not a multiple of the {self.model_size} model's patch "
                             f"size {patch}")
        # The model's config refuses them too, but only once the data has loaded, and not by their flags.
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"--momentum is an EMA rate, in [0, 1); got {self.momentum}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"--distill_alpha is a weight, in [0, 1]; got {self.distill_alpha}")
        if self.queue_size < 1:
            raise ValueError(f"--queue_size must be at least 1, got {self.queue_size}")

    def momentum_config(self) -> dict:
        return {"momentum_distill": self.momentum_distill, "momentum": self.momentum, "queue_size": self.queue_size,
                "distill_alpha": self.distill_alpha}

    def data_info(self, ds) -> dict:
        return {**super().data_info(ds), "prompts": self.prompts, "grid": self.grid}


@torch.no_grad()
def _copy_missing(model, missing_keys, target: str, source: str) -> list[str]:
    """Fill the checkpoint's missing `target…` tensors from the loaded `source…` ones of the same shape."""
    state = model.state_dict()
    copied = []
    for key in missing_keys:
        if key.startswith(target):
            origin = source + key[len(target):]
            if origin in state and state[origin].shape == state[key].shape:
                state[key].copy_(state[origin])
                copied.append(key)
    return copied


@torch.no_grad()
def start_decoder_from_encoder(model, missing_keys) -> list[str]:
    """A checkpoint without a caption decoder (the retrieval layout, `BlipForImageTextRetrieval`: Salesforce's
    blip-itm-*) starts the decoder from its text encoder, as BLIP's pretraining shares all but the decoder's
    causal self-attention between the two (its self-attention has the same shapes and starts as the encoder's
    too); the LM head's transform starts fresh and its bias at zero (no init of transformers' covers that bias:
    it was left as uninitialised memory, an LM loss of 1e23). Returns the decoder keys copied."""
    if "text_decoder.cls.predictions.bias" in missing_keys:
        model.text_decoder.cls.predictions.bias.zero_()
    copied = _copy_missing(model, missing_keys, "text_decoder.bert.", "text_encoder.")
    if copied:
        logger.info("%d caption decoder tensors started from the text encoder (the checkpoint has no decoder)",
                    len(copied))
    return copied


def start_encoder_from_decoder(model, missing_keys) -> list[str]:
    """The mirror of `start_decoder_from_encoder`: a checkpoint without a text encoder (the captioning layout,
    `BlipForConditionalGeneration`: Salesforce's blip-image-captioning-*) starts the encoder from its caption
    decoder's BERT, what BLIP shares between the two. The ITC projections and the ITM head have no counterpart
    there: they start fresh, and the log says so. Returns the encoder keys copied."""
    copied = _copy_missing(model, missing_keys, "text_encoder.", "text_decoder.bert.")
    if copied:
        heads = ("text_proj.", "vision_proj.", "itm_head.")
        fresh = sorted({k.split(".")[0] for k in missing_keys if k.startswith(heads)})
        logger.info("%d text encoder tensors started from the caption decoder (the checkpoint has no text encoder)%s",
                    len(copied), f"; {', '.join(fresh)} start fresh" if fresh else "")
    return copied


def build_blip(args: BlipArguments):
    """(model, tokenizer): from a BLIP checkpoint folder, or from scratch with the offline CLIP BPE tokenizer."""
    from ..models.blip import BLIP_LABEL_SMOOTHING, BlipATMConfig, BlipATMModel

    if args.init_from:
        from transformers import AutoTokenizer, BlipConfig

        tok = AutoTokenizer.from_pretrained(args.init_from)
        base = BlipConfig.from_pretrained(args.init_from)
        limit = base.text_config.max_position_embeddings
        if args.max_length is None:
            args.max_length = min(MAX_LENGTH, limit)
        elif args.max_length > limit:  # found now, not as a shape error in the text embeddings at the first step
            raise ValueError(f"--max_length {args.max_length} is longer than {args.init_from}'s text position table "
                             f"({limit} tokens): give --max_length {limit} or less")
        # BLIP's own label smoothing for the LM loss: a stock config states transformers' default, 0.
        text = {**base.text_config.to_dict(), "label_smoothing": BLIP_LABEL_SMOOTHING}
        cfg = BlipATMConfig(vision_config=base.vision_config.to_dict(), text_config=text,
                            image_text_hidden_size=base.image_text_hidden_size,
                            enc_token_id=getattr(tok, "enc_token_id", None), **args.momentum_config())
        model, info = BlipATMModel.from_pretrained(args.init_from, config=cfg, output_loading_info=True)
        start_decoder_from_encoder(model, info["missing_keys"])
        start_encoder_from_decoder(model, info["missing_keys"])
        model.set_image_size(args.image_size)
        if cfg.momentum_distill:
            # A stock BLIP checkpoint has no momentum encoders or queues: start them as BLIP does.
            missing = set(info["missing_keys"])
            fresh = any(k.startswith(tuple(f"{m}." for m in BlipATMModel.MOMENTUM_MODULES.values())) for k in missing)
            queues = bool(missing & set(BlipATMModel.QUEUE_BUFFERS))
            model.reset_momentum(encoders=fresh, queues=queues)
        return model, tok
    from ..generate.clip_vocab import load_tokenizer

    args.max_length = args.max_length or MAX_LENGTH
    tok = load_tokenizer(model_max_length=args.max_length)
    vision, text = BLIP_SIZES[args.model_size]
    cfg = BlipATMConfig(
        # BlipVisionConfig's default initializer_range is 1e-10 (meant for loading weights): from scratch every
        # image would embed alike and the image tower would barely learn. 0.02, as the text side and ViTs use.
        vision_config={**vision, "image_size": args.image_size, "initializer_range": 0.02},
        text_config={**text, "vocab_size": len(tok), "encoder_hidden_size": vision["hidden_size"],
                     "max_position_embeddings": args.max_length, "bos_token_id": tok.bos_token_id,
                     "pad_token_id": tok.pad_token_id, "sep_token_id": tok.eos_token_id,
                     # Trainer aligns (and warns of) a config eos other than the tokenizer's at every from-scratch run.
                     "eos_token_id": tok.eos_token_id},
        image_text_hidden_size=256 if args.model_size == "base" else 16, **args.momentum_config(),
    )
    return BlipATMModel(cfg), tok


def make_transform(args: BlipArguments, tokenizer):
    from torchvision.transforms import v2

    from ..data.position_prompts import PositionPromptTransform
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    max_length = args.max_length or MAX_LENGTH
    geo = PositionPromptTransform(size=args.image_size, scale=(args.crop_scale_min, 1.0), grid=args.grid,
                                  tokenizer=tokenizer, max_length=max_length, shuffle=args.shuffle_prompts)
    finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    positions = args.prompts == "position"
    min_peak = args.resolve_min_attention_peak() if positions else None  # the baseline reads no objects
    # A partial of a module-level function, not a closure: data workers started by spawn or forkserver (macOS,
    # Windows, Python 3.14 on Linux) get the dataset, transform included, by pickling.
    return functools.partial(_prompted_pairs, geo=geo, finish=finish, tokenizer=tokenizer, max_length=max_length,
                             positions=positions, min_peak=min_peak)


def _prompted_pairs(batch, geo, finish, tokenizer, max_length: int, positions: bool, min_peak: float | None):
    from ..data.masks import drawn_objects
    from ..data.rows import one_caption

    pixels, texts = [], []
    for image, prompt, objects in zip(batch["image"], batch["prompt"], batch["objects"]):
        objects = drawn_objects(objects, min_peak) if positions else []
        names = [o["name"] for o in objects]
        boxes = [o["bbox"] for o in objects]
        img, text = geo(image, one_caption(prompt), names, boxes)
        pixels.append(finish(img))
        texts.append(text)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {"pixel_values": pixels, "input_ids": list(enc.input_ids), "attention_mask": list(enc.attention_mask)}


def train(args: BlipArguments, training_args):
    from transformers import default_data_collator, set_seed

    if args.prompts not in ("position", "none"):
        raise ValueError(f"prompts must be 'position' or 'none', got {args.prompts!r}")
    resume = resume_point(training_args)  # a refused resume is said before any data is read
    if args.init_from:  # as is a checkpoint that is not there
        from ..hub.sources import check_model_source

        check_model_source(args.init_from, "--init_from")
    ds = args.load(seed=training_args.seed, require_text=True)
    set_seed(training_args.seed)
    model, tok = build_blip(args)
    ds = args.read_through(ds, make_transform(args, tok))
    training_args.remove_unused_columns = False
    callbacks = []
    if model.config.momentum_distill:
        from .callbacks import DistillAlphaCallback, MomentumUpdateCallback

        callbacks += [MomentumUpdateCallback(), DistillAlphaCallback()]
    # The tokenizer as the processing class, so that Trainer saves it into every checkpoint (each one evaluates
    # and exports on its own); the default collator all the same, as the rows come padded and padding through
    # the tokenizer would turn every pixel into a Python list and back (~50× slower collation).
    trainer = BlipTrainer(model=model, args=training_args, train_dataset=ds, callbacks=callbacks,
                          processing_class=tok, data_collator=default_data_collator)
    return fit_and_save(trainer, args, ds, training_args, resume)

"""freeatm train mae: MAE pretraining with attention-guided masking (β from 0 to `beta_max` over the run).

    freeatm train mae --dataset outputs/scenes --output_dir outputs/mae-atm --num_train_epochs 1600
    freeatm train mae recipes/mae_atm.yaml
"""

import functools
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from ..data.rows import rgb
from .arguments import DataArguments, check_views, fit_and_save, resume_point
from .trainer import FreeatmTrainer


@dataclass
class MAEArguments(DataArguments):
    model_size: str = field(default="base", metadata={"help": "ViT size: base (ViT-B/16), large, or tiny (tests)."})
    image_size: int = field(default=224, metadata={"help": "Input side."})
    patch_size: int = field(default=16, metadata={"help": "Patch side."})
    mask_ratio: float = field(default=0.75, metadata={"help": "Share of patches masked."})
    beta_max: float = field(default=0.8, metadata={"help": "Final share of masked patches chosen by attention."})
    guided: bool = field(default=True, metadata={"help": "Attention-guided masking (False: the MAE baseline)."})
    crop_scale_min: float = field(default=0.2, metadata={"help": "RandomResizedCrop scale lower bound."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.mask_ratio < 1.0:
            # 0 masks nothing (a loss of 0, nothing learnt); 1 leaves the encoder no patch to see.
            raise ValueError(f"--mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.model_size not in SIZES:
            raise ValueError(f"--model_size must be one of {', '.join(SIZES)}, got {self.model_size!r}")
        check_views(self.image_size, self.crop_scale_min)
        if self.patch_size < 1 or self.image_size < self.patch_size:  # 0 was a ZeroDivisionError traceback
            raise ValueError(f"--patch_size must be at least 1 and at most --image_size, got {self.patch_size} "
                             f"(image size {self.image_size})")
        # Both refused by MAEConfig too, but only once the data had loaded, and not by their flags.
        if self.image_size % self.patch_size:
            raise ValueError(f"--image_size {self.image_size} must be a multiple of --patch_size {self.patch_size}: "
                             "MAE masks whole patches")
        if self.guided and not 0.0 <= self.beta_max <= 1.0:  # unguided, it is not read
            raise ValueError(f"--beta_max is a share of the masked patches, in [0, 1]; got {self.beta_max}")


SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
                 decoder_intermediate_size=64),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


class BetaScheduleCallback(TrainerCallback):
    """β = beta_max · step / (max_steps − 1) before every optimizer step: 0 at the first, `beta_max` at the last,
    linear in between (`MAETrainer` logs it). Per step rather than per epoch: over the paper's hundreds of epochs
    the two agree, while a run of one epoch (or `--max_steps` under one) would stay at β = 0, the unguided
    baseline, under a card saying "guided"."""

    def __init__(self, beta_max: float):
        self.beta_max = beta_max

    def value(self, state) -> float:
        last = max(int(state.max_steps or 1) - 1, 1)
        return self.beta_max * min(1.0, state.global_step / last)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)
        model.beta = self.value(state)



def make_transform(args: MAEArguments, config):
    from torchvision.transforms import v2

    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, training_interpolation

    min_peak = args.resolve_min_attention_peak() if args.guided else None  # the baseline reads no maps
    side = args.image_size
    resize = v2.InterpolationMode(training_interpolation("mae"))
    crop = v2.RandomResizedCrop(side, scale=(args.crop_scale_min, 1.0), interpolation=resize,
                                antialias=True)
    finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    # A partial of a module-level function, not a closure: data workers started by spawn or forkserver (macOS,
    # Windows, Python 3.14 on Linux) get the dataset, transform included, by pickling.
    return functools.partial(_crop_and_scores, crop=crop, resize=resize, finish=finish, side=side,
                             patch_size=config.patch_size, guided=args.guided, min_peak=min_peak)


def _crop_and_scores(batch, crop, resize, finish, side: int, patch_size: int, guided: bool, min_peak: float | None):
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    from ..data.masks import MapMasks, drawn_objects
    from ..models.mae import patch_scores

    no_scores = torch.full(((side // patch_size) ** 2,), float("nan"))  # random masking
    pixels, scores = [], []
    for image, objects in zip(batch["image"], batch["objects"]):
        image = F.pil_to_tensor(rgb(image))
        p = crop.make_params([image])
        box = (p["top"], p["left"], p["height"], p["width"])
        img = F.resized_crop(tv_tensors.Image(image), *box, [side, side],
                             interpolation=resize, antialias=True)
        flip = bool(torch.rand(1) < 0.5)  # v2.RandomHorizontalFlip's own draw, after the crop's
        pixels.append(finish(F.horizontal_flip(img) if flip else img).as_subclass(torch.Tensor))
        s = no_scores
        if guided:
            # The raw maps (no threshold), read only at the pixels of the crop: never built at image size.
            maps = MapMasks(drawn_objects(objects, min_peak), tuple(image.shape[-2:]), float("-inf"), "soft")
            if not maps.whole:
                m = maps.crop(*box, side)
                s = patch_scores(m.flip(-1) if flip else m, patch_size)
        scores.append(s)
    return {"pixel_values": pixels, "patch_scores": scores}


def collate(samples):
    return {"pixel_values": torch.stack([s["pixel_values"] for s in samples]),
            "patch_scores": torch.stack([s["patch_scores"] for s in samples])}


def build_model(args: MAEArguments):
    from ..models import MAEConfig, MAEModel

    return MAEModel(MAEConfig(image_size=args.image_size, patch_size=args.patch_size, mask_ratio=args.mask_ratio,
                              beta_max=args.beta_max if args.guided else 0.0, **SIZES[args.model_size]))


class MAETrainer(FreeatmTrainer):
    """Trainer that logs the current β next to the loss."""

    def log(self, logs, *args, **kwargs):
        logs = {**logs, "beta": self.accelerator.unwrap_model(self.model).beta}
        super().log(logs, *args, **kwargs)


def train(args: MAEArguments, training_args):
    from transformers import set_seed

    if args.streaming:
        raise ValueError("MAE training reads map-style datasets; drop --streaming")
    resume = resume_point(training_args)  # a refused resume is said before any data is read
    ds = args.load(seed=training_args.seed)
    set_seed(training_args.seed)
    model = build_model(args)
    ds = args.read_through(ds, make_transform(args, model.config))
    training_args.remove_unused_columns = False
    callbacks = [BetaScheduleCallback(args.beta_max if args.guided else 0.0)]
    trainer = MAETrainer(model=model, args=training_args, train_dataset=ds, data_collator=collate,
                         callbacks=callbacks)
    return fit_and_save(trainer, args, ds, training_args, resume)

"""Thin Trainer subclasses: checkpoints resumed as `from_pretrained` reads them; photometric augmentations
batched on the device, right before the forward."""

import json
import os

from transformers import Trainer

from ..data.gpu_augment import BatchPhotometric, augment_views, blur_kernel_for, color_jitter
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


class FreeatmTrainer(Trainer):
    """Trainer that resumes a checkpoint's weights as `from_pretrained` reads them, and refuses one that lacks some.

    Trainer's own resume is a lenient `load_state_dict` of the file: with transformers 5 a ViTMAE checkpoint is
    written under the library's older key names (`save_pretrained` converts them back), so every encoder and
    decoder layer came back "missing", a warning, and the run went on from freshly initialised layers with the
    optimizer's moments and schedule restored. `from_pretrained` renames keys and ties shared weights. A model
    configured otherwise than the checkpoint's (`changed_config`) is refused too."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        if (self.is_fsdp_enabled or self.is_deepspeed_enabled or not hasattr(target, "from_pretrained")
                or not os.path.isfile(os.path.join(resume_from_checkpoint, "config.json"))):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        changed = changed_config(resume_from_checkpoint, target.config)
        if changed:
            raise ValueError(f"{resume_from_checkpoint} was trained with other model settings ({'; '.join(changed)}): "
                             "a resumed run would train the rest with them, and its card and config.json state them "
                             "for the whole run. Resume with the checkpoint's settings, or train afresh into another "
                             "--output_dir")
        try:
            loaded, info = type(target).from_pretrained(resume_from_checkpoint, config=target.config,
                                                        output_loading_info=True)
        except OSError as e:  # no weights file (a save cut short): Trainer said so as a ValueError too
            raise ValueError(f"can't resume from {resume_from_checkpoint}: {e}") from e
        wrong = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if wrong:
            raise ValueError(f"{resume_from_checkpoint} does not hold this model's weights ("
                             + "; ".join(f"{k.replace('_', ' ')}: {sorted(map(str, v))[:5]}" for k, v in wrong.items())
                             + "): resume a checkpoint of the same method and model, or train afresh")
        target.load_state_dict(loaded.state_dict())


# What a config.json records of how the model was saved, not of what it trains.
SAVE_RECORDS = {"transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype", "use_cache"}


def changed_config(checkpoint: str, config) -> list[str]:
    """The settings of `checkpoint`'s config.json that `config` gives otherwise ("key old → new", a nested config's
    as "text_config.key"). The method's own settings (MoCo's pooling and momentum, MAE's mask ratio and β, BLIP's
    distillation) are not Trainer's, which `check_resumed_settings` compares; the weights load whatever they say.
    Nothing for another model type: its weights are refused by name."""
    with open(os.path.join(checkpoint, "config.json")) as f:
        if json.load(f).get("model_type") != config.model_type:
            return []
    # Both read as full configs: a config.json leaves out the values it holds at their defaults.
    saved, now = _flat(type(config).from_pretrained(checkpoint).to_dict()), _flat(config.to_dict())
    return [f"{k} {saved[k]} → {now[k]}" for k in sorted(saved.keys() & now.keys())
            if k.rsplit(".", 1)[-1] not in SAVE_RECORDS and saved[k] != now[k]]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class ContrastiveTrainer(FreeatmTrainer):
    """With `gpu_photometric=True` the data workers deliver geometrically augmented, un-normalized views;
    colour jitter, grayscale and blur (per-sample parameters) and normalization happen here, on the device."""

    def __init__(self, *args, gpu_photometric: bool = False, image_size: int = 224, color_strength: float = 1.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.gpu_augment = (BatchPhotometric(**color_jitter(color_strength), kernel_size=blur_kernel_for(image_size))
                            if gpu_photometric else None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.gpu_augment is not None:
            inputs = augment_views(inputs, self.gpu_augment if model.training else None, IMAGENET_MEAN, IMAGENET_STD)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

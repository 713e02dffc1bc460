"""Thin Trainer subclasses: checkpoints resumed as `from_pretrained` reads them; photometric augmentations
batched on the device, right before the forward."""

import os

from transformers import Trainer

from ..data.gpu_augment import BatchPhotometric, augment_views, blur_kernel_for, color_jitter
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


class FreeatmTrainer(Trainer):
    """Trainer that resumes a checkpoint's weights as `from_pretrained` reads them, and refuses one that lacks some.

    Trainer's own resume is a lenient `load_state_dict` of the file: with transformers 5 a ViTMAE checkpoint is
    written under the library's older key names (`save_pretrained` converts them back), so every encoder and
    decoder layer came back "missing", a warning, and the run went on from freshly initialised layers with the
    optimizer's moments and schedule restored. `from_pretrained` renames keys and ties shared weights."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        if (self.is_fsdp_enabled or self.is_deepspeed_enabled or not hasattr(target, "from_pretrained")
                or not os.path.isfile(os.path.join(resume_from_checkpoint, "config.json"))):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
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

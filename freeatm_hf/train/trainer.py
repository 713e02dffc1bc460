"""A thin Trainer subclass: photometric augmentations batched on the device, right before the forward."""

import torch
from transformers import Trainer

from ..data.gpu_augment import BatchPhotometric, blur_kernel_for
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


class ContrastiveTrainer(Trainer):
    """With `gpu_photometric=True` the data workers deliver geometrically augmented, un-normalized views;
    colour jitter, grayscale and blur (per-sample parameters) and normalization happen here, on the device."""

    def __init__(self, *args, gpu_photometric: bool = False, image_size: int = 224, **kwargs):
        super().__init__(*args, **kwargs)
        self.gpu_augment = BatchPhotometric(kernel_size=blur_kernel_for(image_size)) if gpu_photometric else None

    def _views(self, inputs: dict, training: bool) -> dict:
        device = inputs["pixel_values_1"].device
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        for k in ("pixel_values_1", "pixel_values_2"):
            x = self.gpu_augment(inputs[k]) if training else inputs[k]
            inputs[k] = (x - mean) / std
        return inputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.gpu_augment is not None:
            inputs = self._views(dict(inputs), model.training)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

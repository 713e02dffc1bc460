"""A thin Trainer subclass: photometric augmentations batched on the device, right before the forward."""

from transformers import Trainer

from ..data.gpu_augment import BatchPhotometric, augment_views, blur_kernel_for, color_jitter
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


class ContrastiveTrainer(Trainer):
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

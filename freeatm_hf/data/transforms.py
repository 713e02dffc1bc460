"""Two augmented views of an image and its object masks, geometry applied identically to both.

Geometry (random resized crop, flip) goes through torchvision.transforms.v2 with the masks as
`tv_tensors.Mask`, so image and masks can never drift apart; photometric augmentations touch only the
image (v2 passes masks through them unchanged). An instance that (almost) leaves either crop is dropped
from the pair: there is nothing of it left to be a positive.
"""

from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .masks import MapMasks
from .rows import rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def training_interpolation(model_type: str) -> str:
    """The resize a method's training crops use, which its evaluations and exports state too: bicubic for MAE (the
    MAE recipe's), torchvision's bilinear default for the others."""
    return "bicubic" if model_type.removeprefix("freeatm_") == "mae" else "bilinear"


def simclr_photometric(strength: float = 1.0, blur: bool = True, size: int = 224) -> v2.Compose:
    """SimCLR's colour augmentations: colour jitter of strength s at p 0.8 (see `color_jitter`; SimCLR s = 1,
    MoCo-v2 s = 0.5), grayscale at p 0.2, blur at p 0.5."""
    from .gpu_augment import blur_kernel_for, color_jitter

    ops = [v2.RandomApply([v2.ColorJitter(**color_jitter(strength))], p=0.8), v2.RandomGrayscale(p=0.2)]
    if blur:
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_for(size), sigma=(0.1, 2.0))], p=0.5))
    return v2.Compose(ops)


def resized_crop_mask(masks: torch.Tensor, box: tuple[int, int, int, int], size: int) -> tv_tensors.Mask:
    """`masks` (`(..., H, W)`: masks or a label map) cropped to `box` (top, left, height, width) and resized to
    `size`² nearest-exact: torchvision resizes a Mask by plain nearest (source ⌊i·in/out⌋, ignoring any
    interpolation given to resized_crop), which lays it half an output pixel below and right of the image."""
    return F.resize(F.crop(tv_tensors.Mask(masks), *box), [size, size],
                    interpolation=v2.InterpolationMode.NEAREST_EXACT)


@dataclass
class TwoViewTransform:
    """Callable `(image uint8 (3, H, W) | PIL, masks) → dict` of two views and kept masks; `masks` is a
    `(K, H, W)` tensor or a `data.masks.MapMasks`, read only where the views fall.

    Args:
        size (`int`, defaults to 224): output side.
        scale (`tuple`, defaults to `(0.2, 1.0)`): random resized crop scale (MoCo-v2 / SimCLR use 0.08–1 on
            ImageNet; multi-object scenes lose whole objects at small scales).
        min_visible (`float`, defaults to 0.1): an instance is kept when at least this share of its mask mass
            is inside *both* crops (measured on the uncropped masks within the crop box; `MapMasks` measure it
            on their grid). A whole-image mask (real data; a row with no mask left) is the image, entire in any
            crop: always kept, as the mask-free baseline keeps every view.
        photometric (`bool`, defaults to `True`): colour jitter, grayscale, blur here on the CPU; set `False`
            to run them batched on the accelerator instead.
        color_strength (`float`, defaults to 1.0): colour jitter strength s (SimCLR 1, MoCo-v2 0.5).
        uint8_views (`bool`, defaults to `False`): leave the views uint8, for the device to scale
            (`gpu_augment.augment_views`): a quarter of the bytes through the loader's queues and the copy to the
            device. Needs `normalize=False`.
        bool_masks (`bool`, defaults to `False`): the masks as bool, for binary masks (resized by nearest
            neighbour, they stay 0 and 1), an eighth of the bytes of float32; the device makes them float again.
    """

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    min_visible: float = 0.1
    photometric: bool = True
    normalize: bool = True
    color_strength: float = 1.0
    uint8_views: bool = False
    bool_masks: bool = False

    def __post_init__(self):
        if self.uint8_views and self.normalize:
            raise ValueError("uint8_views leaves the views for the device to scale and normalize: set normalize=False")
        self.crop = v2.RandomResizedCrop(self.size, scale=self.scale, antialias=True)
        self.colour = simclr_photometric(self.color_strength, size=self.size) if self.photometric else None
        self.to_float = v2.Compose([v2.ToDtype(torch.float32, scale=True)] + (
            [v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)] if self.normalize else []))

    def view(self, image: torch.Tensor, masks: torch.Tensor):
        """One view: `(image (3, S, S), masks (K, S, S), share of each mask's mass inside the crop)`."""
        p = self.crop.make_params([image])
        box = (p["top"], p["left"], p["height"], p["width"])
        img = F.resized_crop(tv_tensors.Image(image), *box, [self.size, self.size], antialias=True)
        if isinstance(masks, MapMasks):
            m, share = tv_tensors.Mask(masks.crop(*box, self.size)), masks.share(*box)
        else:
            m = resized_crop_mask(masks, box, self.size)
            inside = masks[:, p["top"] : p["top"] + p["height"], p["left"] : p["left"] + p["width"]].flatten(1).sum(1)
            share = inside / masks.flatten(1).sum(1).clamp_min(1e-6)
            share[masks.flatten(1).amin(1) >= 1] = 1.0  # the whole image (as `MapMasks.share` has it)
        if torch.rand(()) < 0.5:
            img, m = F.horizontal_flip(img), F.horizontal_flip(m)
        if self.colour is not None:
            img = self.colour(img)
        img = img.as_subclass(torch.Tensor) if self.uint8_views else self.to_float(img).as_subclass(torch.Tensor)
        return img, (m.bool() if self.bool_masks else m).as_subclass(torch.Tensor), share

    def __call__(self, image, masks: torch.Tensor | MapMasks) -> dict:
        if not isinstance(image, torch.Tensor):
            image = F.pil_to_tensor(rgb(image))
        mask_size = tuple(masks.size if isinstance(masks, MapMasks) else masks.shape[-2:])
        if mask_size != tuple(image.shape[-2:]):
            raise ValueError(f"masks {mask_size} and image {tuple(image.shape[-2:])} differ in size")
        v1, m1, s1 = self.view(image, masks)
        v2_, m2, s2 = self.view(image, masks)
        keep = (s1 >= self.min_visible) & (s2 >= self.min_visible)
        return {"pixel_values_1": v1, "pixel_values_2": v2_, "masks_1": m1[keep], "masks_2": m2[keep], "kept": keep}

"""The pieces SimCLR and MoCo share: a timm CNN backbone, projection head, and instance features."""

import functools

import torch
from torch import nn

from .pooling import attention_pool

POOLINGS = ("attention", "image")


def create_backbone(name: str, pretrained: bool = False) -> nn.Module:
    """A timm CNN returning its pre-pool feature map (`forward_features`)."""
    import timm

    check_cnn_backbone(name)
    return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")


@functools.cache
def check_cnn_backbone(name: str):
    """Refuse, by name, what is not a timm CNN: an unknown model, or one whose `forward_features` is not a
    `(B, C, H, W)` map (a ViT's or Mixer's token sequence, a Swin's channels-last map), which the per-object
    pooling would misread or fail on at the first batch. Probed on the meta device: no weights, no compute."""
    import timm

    if ":" in name:  # an hf-hub: or local-dir: model is built from its config file, which only timm reads
        return
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:5]
        raise ValueError(f"--backbone {name!r} is not a timm model" + (f"; e.g. {close}" if close else ""))
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=0, global_pool="")
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        shape = tuple(model.forward_features(torch.empty(1, *size)).shape)
    if len(shape) != 4 or shape[1] != model.num_features:
        raise ValueError(f"--backbone {name!r} is not a CNN: its features come as {shape}, not a (B, C, H, W) map "
                         "that SimCLR and MoCo pool per object; give a timm CNN (resnet50, convnext_tiny, "
                         "efficientnet_b0…), or pretrain a ViT with `freeatm train mae`")


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> nn.Sequential:
    """SimCLR / MoCo-v2 MLP: (Linear → BN → ReLU) × (num_layers−1) → Linear."""
    layers, d = [], in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(d, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        d = hidden_dim
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def paired_instances(masks_1: torch.Tensor | None, masks_2: torch.Tensor | None,
                     valid: torch.Tensor | None) -> torch.Tensor | None:
    """`(B, K)` instances to contrast: the collator's `instance_valid` (every slot when not given) and, of those,
    the ones with some mask left in both views. An object can pass the visibility check on its full-resolution
    mask and still vanish when a thin mask is resized with the crop: pooled, it would be a zero vector, a
    constant pair (or, in MoCo, a constant key in the queue)."""
    if (masks_1 is None) != (masks_2 is None):
        # One view would be pooled per object, the other whole: object i contrasted with image i, without a word.
        raise ValueError("attention pooling takes the masks of both views (masks_1 and masks_2), or neither")
    if masks_1 is None:
        return valid
    present = (masks_1.flatten(2) > 0).any(-1) & (masks_2.flatten(2) > 0).any(-1)
    return present if valid is None else valid.bool() & present


def instance_features(backbone: nn.Module, pixel_values: torch.Tensor, masks: torch.Tensor | None,
                      valid: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """`(N, C)` features of every valid instance in the batch (row-major over images, then instances).

    `pooling="image"` ignores the masks: one global-average-pooled feature per image (the baseline).
    """
    fmap = backbone.forward_features(pixel_values)
    if pooling == "image" or masks is None:
        return fmap.mean((2, 3))
    pooled = attention_pool(fmap, masks)  # (B, K, C)
    return pooled.flatten(0, 1) if valid is None else pooled[valid]

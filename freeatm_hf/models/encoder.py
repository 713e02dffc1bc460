"""The pieces SimCLR and MoCo share: a timm CNN backbone, projection head, and instance features."""

import torch
from torch import nn

from .pooling import attention_pool

POOLINGS = ("attention", "image")


def create_backbone(name: str, pretrained: bool = False) -> nn.Module:
    """A timm CNN returning its pre-pool feature map (`forward_features`)."""
    import timm

    return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> nn.Sequential:
    """SimCLR / MoCo-v2 MLP: (Linear → BN → ReLU) × (num_layers−1) → Linear."""
    layers, d = [], in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(d, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        d = hidden_dim
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def instance_features(backbone: nn.Module, pixel_values: torch.Tensor, masks: torch.Tensor | None,
                      valid: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """`(N, C)` features of every valid instance in the batch (row-major over images, then instances).

    `pooling="image"` ignores the masks: one global-average-pooled feature per image (the baseline).
    """
    fmap = backbone.forward_features(pixel_values)
    if pooling == "image" or masks is None:
        return fmap.mean((2, 3))
    pooled = attention_pool(fmap, masks)  # (B, K, C)
    return pooled[valid]

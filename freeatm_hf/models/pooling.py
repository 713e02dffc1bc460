"""Attention pooling of a feature map per object (Free-ATM Eq. 2): z^m = Σ_ij a_ij z_ij / Σ_ij a_ij."""

import torch
import torch.nn.functional as F


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`(B, K, H, W)` masks to the feature grid by area averaging (each cell: the share of it covered)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    b, k = masks.shape[:2]
    return F.adaptive_avg_pool2d(masks.flatten(0, 1)[:, None].float(), size)[:, 0].view(b, k, *size)


def attention_pool(features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`features (B, C, h, w)`, `masks (B, K, H, W)` → `(B, K, C)` mask-weighted means of the features.

    An all-zero mask gives a zero vector (its row is padding and must be excluded by the caller).
    """
    a = resize_masks(masks, features.shape[-2:]).to(features.dtype)
    num = torch.einsum("bkhw,bchw->bkc", a, features)
    return num / a.flatten(2).sum(-1, keepdim=True).clamp_min(eps)

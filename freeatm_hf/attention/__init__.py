from .config import CaptureConfig
from .store import AttentionStore, grid_size
from .tokens import ObjectTokens, object_token_indices
from .unet import CaptureProcessor, capture_unet, cross_attention_factors

__all__ = [
    "AttentionStore", "CaptureConfig", "CaptureProcessor", "ObjectTokens", "capture_unet",
    "cross_attention_factors", "grid_size", "object_token_indices",
]

"""Pretraining methods, each a Trainer-compatible `PreTrainedModel` registered with the Auto classes."""

from transformers import AutoConfig, AutoModel

from .blip import BlipATMConfig, BlipATMModel
from .mae import MAEConfig, MAEModel
from .moco import MoCoConfig, MoCoModel
from .simclr import ContrastiveOutput, SimCLRConfig, SimCLRModel

METHODS = {"simclr": (SimCLRConfig, SimCLRModel), "moco": (MoCoConfig, MoCoModel), "mae": (MAEConfig, MAEModel),
           "blip": (BlipATMConfig, BlipATMModel)}

for _config, _model in METHODS.values():
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)

__all__ = ["METHODS", "BlipATMConfig", "BlipATMModel", "ContrastiveOutput", "MAEConfig", "MAEModel", "MoCoConfig", "MoCoModel", "SimCLRConfig", "SimCLRModel"]

"""Tiny real weight files: a push refuses a `*.safetensors` file no loader could read (`push._check_weights`)."""

from pathlib import Path


def write_weights(path: Path, *values: float):
    """A safetensors file of one tensor of `values`: distinct values make distinct files (another run's weights)."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.tensor(values or (0.0,), dtype=torch.float32)}, str(path))

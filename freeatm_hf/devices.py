"""One reading of `--device` for every command that takes one."""

import torch


def resolve_device(name: str | torch.device | None, flag: str = "--device") -> torch.device:
    """`name` as a torch device; unset, the GPU when there is one, else the CPU. A name torch cannot read, or a
    device this machine lacks, is refused here, by name: torch's own error came as a list of twenty backends (an
    unknown type), or at the first tensor moved, after the model and the data had loaded."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{flag} {name!r} is not a device: give cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"{flag} {name}: this machine has no CUDA GPU that torch can use; give cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{flag} {name}: this machine's GPUs are cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {name}: this machine has no MPS device; give cpu")
    return device


def unpinned_on_cpu(training_args):
    """`TrainingArguments` with pinned data-loader memory left off on the CPU: Trainer pins by default, and torch
    warns at every loader that there is no accelerator to pin memory for."""
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False
    return training_args

"""Capture wrappers that show the wrapped processor's call signature.

diffusers' attention modules pass a processor only the extra keyword arguments (`cross_attention_kwargs`,
`joint_attention_kwargs`) that `inspect.signature(processor.__call__)` names, and drop the rest with a warning.
A wrapper showing its own `(*args, **kwargs)` would drop every argument the wrapped processor takes (IP-Adapter
masks, a custom processor's option), and the image would change under capture.

A processor with weights (IP-Adapter's, with its `to_k_ip`/`to_v_ip`) is an `nn.Module`, registered as the
attention module's child `processor`: torch refuses a plain object in that slot, and one popped out of it would
leave the weights out of `.to(device)` and model offloading. Its wrapper is an `nn.Module` too, holding it.
"""

import functools
import inspect

import torch


@functools.cache
def _signed_subclass(wrapper_cls: type, processor_cls: type) -> type:
    """`wrapper_cls` whose `__call__` reports `processor_cls.__call__`'s parameters; one class per pair, so a
    compiled denoiser sees the same type batch after batch. An `nn.Module` as well when `processor_cls` is one."""

    def __call__(self, *args, **kwargs):
        return wrapper_cls.__call__(self, *args, **kwargs)

    __call__.__signature__ = inspect.signature(processor_cls.__call__)
    namespace = {"__call__": __call__, "__module__": wrapper_cls.__module__, "__qualname__": wrapper_cls.__qualname__}
    if not issubclass(processor_cls, torch.nn.Module):
        return type(wrapper_cls.__name__, (wrapper_cls,), namespace)

    def __init__(self, *args, **kwargs):
        torch.nn.Module.__init__(self)  # before the wrapper's own __init__ assigns the wrapped module
        wrapper_cls.__init__(self, *args, **kwargs)

    return type(wrapper_cls.__name__, (wrapper_cls, torch.nn.Module), {**namespace, "__init__": __init__})


def wrap_processor(wrapper_cls: type, original, *args, **kwargs):
    """`wrapper_cls(original, *args, **kwargs)`, seen by diffusers as taking what `original` takes."""
    return _signed_subclass(wrapper_cls, type(original))(original, *args, **kwargs)

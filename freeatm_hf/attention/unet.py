"""Capture for UNet cross-attention (SD 1.x/2.x, SDXL): wrap each `attn2` processor.

The wrapper calls the layer's own processor unchanged, so the output (fused SDPA or whatever was
installed) is bit-identical. Query and key projections are picked up by forward hooks on `to_q`/`to_k`
as the original processor computes them, so capture adds no projection FLOPs: only `q kᵀ` for the
conditional half, a softmax and a gather of the needed columns.
"""

from contextlib import contextmanager

import torch

from .config import CaptureConfig
from .signature import wrap_processor
from .store import AttentionStore


class CaptureProcessor:
    """Wraps an attention processor; reports the layer's probabilities to an `AttentionStore`."""

    def __init__(self, original, store: AttentionStore, factor: int):
        self.original = original
        self.store = store
        self.factor = factor
        self.weight = 1.0  # set at install from CaptureConfig.layer_weights
        self.query: torch.Tensor | None = None
        self.key: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        self.query = self.key = None
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        if self.store.active and self.query is not None and self.key is not None:
            self.store.add(self.factor, attn, self.query, self.key, attention_mask, self.weight)
        # Drop the references so the projections are freed as soon as the stock path would free them.
        self.query = self.key = None
        return out

    def _hook_query(self, module, args, output):
        self.query = output

    def _hook_key(self, module, args, output):
        self.key = output


def cross_attention_factors(unet) -> dict[str, int]:
    """Name of every cross-attention module of a `UNet2DConditionModel` → its down-sampling factor.

    Walks the blocks as the UNet runs them, so it holds for any number of levels and any block that
    does not down- or up-sample. Mid-block layers are keyed with their factor too; callers filter them.
    """
    factors, f = {}, 1
    for i, block in enumerate(unet.down_blocks):
        for name, _ in block.named_modules():
            if name.endswith("attn2"):
                factors[f"down_blocks.{i}.{name}"] = f
        if getattr(block, "downsamplers", None):
            f *= 2
    if unet.mid_block is not None:
        for name, _ in unet.mid_block.named_modules():
            if name.endswith("attn2"):
                factors[f"mid_block.{name}"] = f
    for i, block in enumerate(unet.up_blocks):
        for name, _ in block.named_modules():
            if name.endswith("attn2"):
                factors[f"up_blocks.{i}.{name}"] = f
        if getattr(block, "upsamplers", None):
            f //= 2
    return factors


@contextmanager
def capture_unet(unet, store: AttentionStore, processors: dict | None = None):
    """Install capture on the chosen `attn2` layers of `unet`; always restore the originals on exit.

    `unet` may be a `torch.compile`d module. Pass the same `processors` dict on every call to reuse the
    wrapper objects: a compiled UNet then keeps its graph (it is guarded on the processor objects)
    instead of recompiling each batch.
    """
    config: CaptureConfig = store.config
    inner = getattr(unet, "_orig_mod", unet)
    factors = cross_attention_factors(inner)
    config.check_layer_weights(factors)
    chosen = {
        name: f for name, f in factors.items()
        if f in config.down_factors and (config.include_mid or not name.startswith("mid_block"))
        and config.layer_weight(name) > 0
    }
    mid = sorted({f for n, f in factors.items() if n.startswith("mid_block")})
    if config.include_mid and not set(mid) & set(config.down_factors):
        # Maps are kept per resolution: the mid block joins only at a factor that is captured.
        raise ValueError(f"include_mid=True, but this UNet's mid block works at down factor(s) {mid}, which "
                         f"down_factors={list(config.down_factors)} leaves out: add {mid[0] if mid else '?'} to it")
    missing = set(config.down_factors) - set(chosen.values())
    if missing:
        available = sorted({f for n, f in factors.items() if config.include_mid or not n.startswith("mid_block")})
        zeroed = " (layer_weights of 0 leave layers out)" if config.layer_weights else ""
        raise ValueError(f"this UNet has no cross-attention at down factors {sorted(missing)}{zeroed}; "
                         f"available: {available}")
    processors = {} if processors is None else processors
    modules = dict(inner.named_modules())
    originals, handles = {}, []
    try:
        for name, f in chosen.items():
            attn = modules[name]
            if getattr(attn, "fused_projections", False):
                raise ValueError("the UNet's attention projections are fused (pipe.fuse_qkv_projections()): the "
                                 "capture reads the key projection `to_k`, which the fused processor skips; call "
                                 "pipe.unfuse_qkv_projections() before generating with capture")
            proc = processors.get(name)
            if proc is None or proc.original is not attn.processor or proc.store is not store:
                proc = processors[name] = wrap_processor(CaptureProcessor, attn.processor, store, f)
            proc.weight = config.layer_weight(name)
            originals[name] = attn.processor
            handles.append(attn.to_q.register_forward_hook(proc._hook_query))
            handles.append(attn.to_k.register_forward_hook(proc._hook_key))
            attn.processor = proc
        # On the outer module: for a compiled UNet the step counter stays in eager Python.
        handles.append(unet.register_forward_pre_hook(lambda module, args: store.next_step()))
        yield store
    finally:
        for h in handles:
            h.remove()
        for name, proc in originals.items():
            modules[name].processor = proc

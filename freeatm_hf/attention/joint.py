"""Capture for MM-DiT joint attention (SD3 / SD3.5, Flux): text and image tokens share one softmax.

The layer's own processor runs unchanged. While it runs, its call to
`torch.nn.functional.scaled_dot_product_attention` is served by the *same* fused kernel the dispatcher would
pick (`torch._fused_sdp_choice`), called through its aten op so that it also returns the log-sum-exp of
every query row. The output is the kernel's output (bit-identical image); the probabilities of image
queries over the chosen text columns — normalised over *all* keys of the joint sequence — are then
exp(q·k·scale − lse) for those columns only. Nothing of size (image × joint sequence) is ever built. Where
the kernel returns no LSE (the math path), the LSE is computed explicitly: correct, slower.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from .signature import wrap_processor
from .store import AttentionStore


class _Current:
    """The capturing layer whose processor is running (None outside one), and the SDPA function that was in place
    when capture began (restored on exit, and served to every call that is not captured). A plain attribute
    rather than a ContextVar: dynamo cannot trace a ContextVar's set, so each block split the compiled graph."""

    layer = None
    sdpa = F.scaled_dot_product_attention


_CURRENT = _Current()


@torch.library.custom_op("freeatm::sdpa_with_lse", mutates_args=())
def _sdpa_with_lse_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = _sdpa_with_lse(q, k, v, scale)
    return out.contiguous(), lse.contiguous()


@_sdpa_with_lse_op.register_fake
def _(q, k, v, scale):
    return q.new_empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype), q.new_empty(q.shape[:-1], dtype=torch.float32)


def sdpa_with_lse(q, k, v, scale=None):
    """`(output, lse)` from the kernel `F.scaled_dot_product_attention` would choose for these inputs. One opaque
    op to torch.compile: the kernel choice (`torch._fused_sdp_choice`, an int) is made when it runs, and the
    compiled graph does not break around it."""
    return _sdpa_with_lse_op(q, k, v, q.shape[-1] ** -0.5 if scale is None else float(scale))


def _sdpa_with_lse(q, k, v, scale: float):
    choice = torch._fused_sdp_choice(q, k, v, None, 0.0, False, scale=scale)
    if choice == int(SDPBackend.FLASH_ATTENTION):
        if q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        else:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
        return out, lse
    if choice == int(SDPBackend.EFFICIENT_ATTENTION):
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False,
                                                                          scale=scale)[:2]
        return out, lse[..., : q.shape[-2]]
    if choice == int(SDPBackend.CUDNN_ATTENTION):
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False,
                                                                      scale=scale)[:2]
        return out, lse.view(*q.shape[:-1])
    out = _CURRENT.sdpa(q, k, v, scale=scale)
    lse = (q.float() @ k.float().transpose(-1, -2) * scale).logsumexp(-1)
    return out, lse


def _capturing_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    layer = _CURRENT.layer
    # Only the layer's attention over its whole joint sequence is the prompt's: a processor may attend once more
    # inside the layer (IP-Adapter: image queries over its image-prompt tokens), with other keys at the text's place.
    joint = layer is not None and query.shape[-2] == key.shape[-2] == layer.n_txt + layer.n_img
    if not joint or attn_mask is not None or dropout_p or is_causal or enable_gqa:
        return _CURRENT.sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                             scale=scale, enable_gqa=enable_gqa)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    out, lse = sdpa_with_lse(query, key, value, scale)
    layer.record(query, key, lse, scale)
    return out


class JointCaptureProcessor:
    """Wraps a joint-attention processor; reports image→text probabilities of the conditional half.

    A double-stream layer gets text and image as two inputs. A single-stream layer (`single=True`, Flux) gets
    one [text, image] sequence; `text_len` is then set by a pre-hook on its block, which knows the split."""

    def __init__(self, original, store: AttentionStore, text_first: bool, single: bool = False):
        self.original, self.store, self.text_first, self.single = original, store, text_first, single
        self.n_img = self.n_txt = 0
        self.text_len = None
        self.weight = 1.0  # set at install from CaptureConfig.layer_weights

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if not self.store.active or (encoder_hidden_states is None and not (self.single and self.text_len)):
            return self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        if encoder_hidden_states is None:
            self.n_txt, self.n_img = self.text_len, hidden_states.shape[1] - self.text_len
        else:
            self.n_img, self.n_txt = hidden_states.shape[1], encoder_hidden_states.shape[1]
        outer, _CURRENT.layer = _CURRENT.layer, self
        try:
            return self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        finally:
            _CURRENT.layer = outer

    def record(self, q, k, lse, scale):
        """q, k: (n, heads, S, d) over the joint sequence; lse: (n, heads, S)."""
        b = self.store.batch_size
        if q.shape[0] not in (b, 2 * b):  # e.g. perturbed-attention guidance: the last rows are not the prompt's
            raise RuntimeError(f"attention batch {q.shape[0]} is neither the image batch {b} nor twice it (CFG)")
        img = slice(self.n_txt, None) if self.text_first else slice(0, self.n_img)
        txt0 = 0 if self.text_first else self.n_img
        cols = self.store.token_index + txt0  # (b, T) key positions of the selected text tokens
        qi = q[-b:, :, img]  # (b, h, N, d)
        kk = k[-b:]
        ks = kk.gather(2, cols[:, None, :, None].expand(b, kk.shape[1], cols.shape[1], kk.shape[-1]))
        # In fp32: the kernel's LSE is exact for these (half-precision) inputs, and a logit rounded to bf16 before
        # exp(logit - lse) would be off by up to ~8 % at typical logit sizes. Only T text columns: cheap.
        logits = (qi.float() @ ks.float().transpose(-1, -2)) * scale  # (b, h, N, T)
        probs = (logits - lse[-b:, :, img, None].float()).exp().mean(1)
        self.store.add_selected(2, probs, self.weight)


def joint_attention_modules(transformer, blocks: str = "double") -> dict:
    """Name → attention module to capture. `"double"`: SD3's `transformer_blocks.*.attn` and Flux's
    double-stream `transformer_blocks.*.attn`; `"single"`: Flux's `single_transformer_blocks.*.attn`; `"all"`."""
    prefixes = {"double": ("transformer_blocks.",), "single": ("single_transformer_blocks.",),
                "all": ("transformer_blocks.", "single_transformer_blocks.")}[blocks]
    return {name: m for name, m in transformer.named_modules()
            if name.startswith(prefixes) and name.endswith(".attn") and hasattr(m, "processor")}


def _text_len_hook(proc: JointCaptureProcessor):
    def hook(module, args, kwargs):
        enc = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        proc.text_len = None if enc is None else enc.shape[1]
    return hook


@contextmanager
def capture_joint(transformer, store: AttentionStore, text_first: bool, processors: dict | None = None):
    """Install capture on every joint block; restore processors and `F.scaled_dot_product_attention` on exit."""
    if tuple(store.config.down_factors) != (2,):
        raise ValueError("MM-DiT layers all work at the patch grid: use down_factors=(2,)")
    inner = getattr(transformer, "_orig_mod", transformer)
    blocks = store.config.mmdit_blocks
    modules = joint_attention_modules(inner, blocks)
    if not modules or (blocks == "all" and not joint_attention_modules(inner, "single")):
        raise ValueError(f"{type(inner).__name__} has no {'single-stream' if blocks != 'double' else 'joint'} "
                         f"attention blocks (mmdit_blocks={blocks!r})")
    store.config.check_layer_weights(modules)
    modules = {name: m for name, m in modules.items() if store.config.layer_weight(name) > 0}
    if not modules:
        raise ValueError(f"layer_weights {store.config.layer_weights} give every {blocks} block weight 0")
    processors = {} if processors is None else processors
    originals, handles = {}, []
    try:
        for name, attn in modules.items():
            single = name.startswith("single_transformer_blocks.")
            proc = processors.get(name)
            if proc is None or proc.original is not attn.processor or proc.store is not store:
                proc = processors[name] = wrap_processor(JointCaptureProcessor, attn.processor, store, text_first,
                                                         single)
            proc.weight = store.config.layer_weight(name)
            originals[name] = attn.processor
            attn.processor = proc
            if single:
                block = inner.get_submodule(name.rsplit(".", 1)[0])
                handles.append(block.register_forward_pre_hook(_text_len_hook(proc), with_kwargs=True))
        if F.scaled_dot_product_attention is not _capturing_sdpa:  # a user's own replacement too, restored on exit
            _CURRENT.sdpa = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = _capturing_sdpa
        handles.append(transformer.register_forward_pre_hook(lambda module, args: store.next_step()))
        yield store
    finally:
        if F.scaled_dot_product_attention is _capturing_sdpa:
            F.scaled_dot_product_attention = _CURRENT.sdpa
        for h in handles:
            h.remove()
        for name, proc in originals.items():
            modules[name].processor = proc

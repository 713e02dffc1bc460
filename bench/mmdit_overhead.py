"""MM-DiT (SD3 / Flux) generation with free attention masks ÷ the plain pipeline, and the same for the eager
joint-softmax approach of existing tools; prompt embeddings are passed directly (random weights: the compute
is that of the trained models).

    python bench/mmdit_overhead.py --preset flux-dev        # H100: 1024 px, 28 steps, batch 2, bf16
    python bench/mmdit_overhead.py --preset sd3-medium      # H100: 1024 px, 28 steps, CFG, batch 4
    python bench/mmdit_overhead.py --preset tiny-sd3 --device cpu --steps 4    # smoke

Reported: images/s of plain, capture (same kernel + its log-sum-exp) and eager (explicit softmax over the
full joint sequence, output from it too), ratios to plain, extra peak memory, and whether the captured
run's images are bit-identical to plain.
"""

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F


@contextlib.contextmanager
def built_on(device, dtype):
    """Modules created inside are made on `device` in `dtype`: Flux's 12 B parameters initialised on the CPU in
    fp32 take ~50 s and 48 GB of host memory before they ever reach the GPU."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def build(preset: str, device, dtype):
    with built_on(device, dtype) if not preset.startswith("tiny") else contextlib.nullcontext():
        return _build(preset, device, dtype)


def _build(preset: str, device, dtype):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    if preset.startswith("tiny"):
        from freeatm_hf.generate import tiny

        if preset == "tiny-sd3":
            return tiny.tiny_sd3_pipeline().to(device), (77 + 32, 32, 64), 64
        return tiny.tiny_flux_pipeline().to(device), (32, 32, 32), 64
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                        scaling_factor=1.5035)
    if preset == "flux-dev":
        tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                    pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        pipe = FluxPipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                            text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
        return pipe.to(device, dtype), (512, 4096, 768), 1024
    tr = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                               num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                               pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
    pipe = StableDiffusion3Pipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    return pipe.to(device, dtype), (333, 4096, 2048), 1024


class EagerJointStore:
    """What existing tools do: the full joint softmax, built explicitly, is the attention (output from it)."""

    def __init__(self, store, text_first):
        self.store, self.text_first = store, text_first

    def sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        from freeatm_hf.attention.joint import _CURRENT

        layer = _CURRENT.layer
        if layer is None:
            return self.orig(query, key, value, attn_mask=attn_mask, scale=scale)
        s = query.shape[-1] ** -0.5 if scale is None else scale
        probs = (query @ key.transpose(-1, -2) * s).float().softmax(-1)
        b = self.store.batch_size
        img = slice(layer.n_txt, None) if self.text_first else slice(0, layer.n_img)
        txt0 = 0 if self.text_first else layer.n_img
        cols = self.store.token_index + txt0
        p = probs[-b:, :, img]
        sel = p.gather(-1, cols[:, None, None, :].expand(b, p.shape[1], p.shape[2], cols.shape[1])).mean(1)
        self.store.add_selected(2, sel)
        return probs.to(value.dtype) @ value


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["flux-dev", "sd3-medium", "tiny-sd3", "tiny-flux"], default="flux-dev")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_size", type=int, default=None, help="default: 2 (Flux), 4 (SD3)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    from freeatm_hf.attention import AttentionStore, CaptureConfig
    from freeatm_hf.attention.joint import capture_joint

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    pipe, (n_txt, d_txt, d_pool), size = build(args.preset, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    flux = "flux" in args.preset
    b = args.batch_size or (2 if flux else 4)
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(b, n_txt, d_txt, generator=g).to(device, dtype)
    pooled = torch.randn(b, d_pool, generator=g).to(device, dtype)
    kw = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=size, width=size,
              num_inference_steps=args.steps, output_type="np")
    if flux:
        kw["guidance_scale"] = 3.5
    else:
        kw.update(negative_prompt_embeds=torch.zeros_like(embeds), negative_pooled_prompt_embeds=torch.zeros_like(pooled),
                  guidance_scale=7.0)
    store = AttentionStore(CaptureConfig(down_factors=(2,)))
    tokens = torch.arange(1, 9).repeat(b, 1)  # eight object-token columns per image
    latent = size // pipe.vae_scale_factor

    def run(mode):
        gens = [torch.Generator().manual_seed(i) for i in range(b)]
        if mode == "plain":
            return pipe(generator=gens, **kw).images
        store.begin(tokens, (latent, latent), args.steps, device=device)
        with capture_joint(pipe.transformer, store, text_first=flux):
            if mode == "eager":
                from freeatm_hf.attention import joint

                eager = EagerJointStore(store, flux)
                eager.orig = joint._CURRENT.sdpa
                F.scaled_dot_product_attention = eager.sdpa
                try:
                    return pipe(generator=gens, **kw).images
                finally:
                    F.scaled_dot_product_attention = joint._capturing_sdpa
            return pipe(generator=gens, **kw).images

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dev = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; {args.preset}, {size}px, {args.steps} steps, batch {b}, {dtype}", flush=True)
    results, mem, images = {}, {}, {}
    # Warm-up and peak memory, each printed as it is known; the capture first, so that the one-off allocations of
    # the process's first call weigh against its figure rather than flatter it.
    for mode in ("capture", "plain", "eager"):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        images[mode] = np.asarray(run(mode))
        mem[mode] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        results[mode] = []
        captured = "" if mode == "plain" else f", {sum(store.weights_added().values()):g} block-steps captured"
        versus = f" ({mem[mode] - mem['plain']:+.2f} vs plain)" if "plain" in mem and mode != "plain" else ""
        peak = f"peak {mem[mode]:.2f} GiB{versus}" if cuda else "peak n/a on CPU"
        print(f"{mode:8s}: {peak}{captured}", flush=True)
        if mode == "capture" and not sum(store.weights_added().values()):
            # A capture that ran nowhere (an attention backend past F.scaled_dot_product_attention) would time as
            # free and leave the images identical: no figure rather than a wrong one.
            raise SystemExit("nothing was captured: the ratio would be of two plain runs")
    if cuda:
        print(f"capture peak vs plain: {mem['capture'] - mem['plain']:+.3f} GiB "
              f"({(mem['capture'] / mem['plain'] - 1) * 100:+.2f} %)", flush=True)
    identical = np.array_equal(images["capture"], images["plain"], equal_nan=True)
    print(f"capture images bit-identical to plain: {identical}", flush=True)
    for r in range(args.repeats):  # the figures so far after every round: a cut-off run still reports
        for mode in results:
            sync()
            t = time.perf_counter()
            run(mode)
            sync()
            results[mode].append(time.perf_counter() - t)
        ips = {k: b / statistics.median(v) for k, v in results.items()}
        print(f"after round {r + 1}: " + ", ".join(f"{m} {ips[m]:.3f} img/s ({ips[m] / ips['plain']:.4f}x plain)"
                                                   for m in results), flush=True)


if __name__ == "__main__":
    main()

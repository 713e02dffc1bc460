"""A tiny Stable Diffusion pipeline built from configs in code: no download, deterministic weights.

It runs the real `StableDiffusionPipeline` code path (CLIP tokenizer and text encoder, VAE, UNet with
cross-attention at down factors 2 and 4, like SD at 512 px) in well under a second on a CPU. Its
weights are random, so its pictures and maps are noise: it is for tests and for trying the toolkit out
before a trained model is at hand. `sd15_sized_components` builds the real SD 1.5 architecture (random
weights) for benchmarks.
"""

import torch

from .clip_vocab import load_tokenizer


def tiny_components(seed: int = 0, image_size: int = 64, cross_attention_dim: int = 32) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = load_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=image_size // 2,
            in_channels=4, out_channels=4,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4,
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=8, sample_size=image_size,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cross_attention_dim, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=scheduler)


def tiny_pipeline(seed: int = 0, image_size: int = 64, sdxl: bool = False):
    """`StableDiffusionPipeline` (or a tiny `StableDiffusionXLPipeline` with `sdxl=True`)."""
    if sdxl:
        return tiny_sdxl_pipeline(seed, image_size)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_components(seed, image_size), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0, image_size: int = 64):
    """SDXL's structure in miniature: two CLIP encoders (one with projection), added time ids."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    base = tiny_components(seed, image_size)
    tok = base["tokenizer"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        text_kw = dict(vocab_size=len(tok), intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=16, **text_kw))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=16, projection_dim=16, **text_kw))
        unet = UNet2DConditionModel(
            sample_size=image_size // 2, in_channels=4, out_channels=4,
            block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8,
            transformer_layers_per_block=(1, 1, 2),
        )
    pipe = StableDiffusionXLPipeline(
        vae=base["vae"], text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(), tokenizer=tok,
        tokenizer_2=tok, unet=unet, scheduler=base["scheduler"],
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd15_sized_components(seed: int = 0, dtype=torch.float16) -> dict:
    """SD 1.5's architecture with random weights (same FLOPs as the trained model), for benchmarks."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = load_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)  # SD 1.5's scheduler config
    return dict(unet=unet.to(dtype), vae=vae.to(dtype), text_encoder=text_encoder.to(dtype).eval(),
                tokenizer=tokenizer, scheduler=scheduler)


def _tiny_clip_with_projection(tok, seed: int, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=hidden, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()


def _tiny_t5(tok, seed: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_ff=64, d_kv=8, num_layers=2,
                                       num_heads=4, pad_token_id=tok.pad_token_id,
                                       eos_token_id=tok.eos_token_id)).eval()


def _tiny_flow_vae(seed: int, image_size: int):
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             norm_num_groups=8, sample_size=image_size, shift_factor=0.0, scaling_factor=1.0,
                             use_quant_conv=False, use_post_quant_conv=False)


def tiny_sd3_pipeline(seed: int = 0, image_size: int = 64, max_sequence_length: int = 32):
    """SD3's structure in miniature: two CLIP encoders with projection + T5, joint-attention transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from .clip_vocab import load_t5_tokenizer

    tok, t5tok = load_tokenizer(), load_t5_tokenizer(max_sequence_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=image_size // 2, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64,
            out_channels=4, pos_embed_max_size=image_size // 2,
        )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_tiny_flow_vae(seed, image_size),
        text_encoder=_tiny_clip_with_projection(tok, seed + 1), tokenizer=tok,
        text_encoder_2=_tiny_clip_with_projection(tok, seed + 2), tokenizer_2=tok,
        text_encoder_3=_tiny_t5(t5tok, seed + 3), tokenizer_3=t5tok,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(seed: int = 0, image_size: int = 64, max_sequence_length: int = 32,
                       guidance_embeds: bool = False):
    """Flux's structure in miniature: CLIP (pooled) + T5, double- and single-stream blocks, no CFG; with
    `guidance_embeds` the guidance scale is an input of the transformer, as in the guidance-distilled Flux-dev
    (without, it is ignored, as in Flux-schnell)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .clip_vocab import load_t5_tokenizer

    tok, t5tok = load_tokenizer(), load_t5_tokenizer(max_sequence_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=2, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(2, 2, 4),
            guidance_embeds=guidance_embeds,
        )
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id)).eval()
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                        vae=_tiny_flow_vae(seed, image_size), text_encoder=clip, tokenizer=tok,
                        text_encoder_2=_tiny_t5(t5tok, seed + 3), tokenizer_2=t5tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe

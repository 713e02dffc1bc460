"""The shapes text-to-image model: a small `StableDiffusionPipeline` (VAE, UNet, CLIP text encoder and a
word-level tokenizer made offline) sized to live in git (≤ 20 MB in fp16).

Cross-attention sits at latent factors 2 and 4 (16×16 and 8×8 on its 32×32 latent), the same places as in
SD at 512 px, so the default capture settings carry over.
"""

from pathlib import Path

import torch

TOKENIZER_DIR = Path(__file__).parent / "assets" / "tokenizer"
MODEL_DIR = Path(__file__).parent / "assets" / "shapes-t2i"  # the trained pipeline, once it exists
MAX_TOKENS = 32  # the longest caption of 4 objects is 26 tokens with start and end


def shapes_tokenizer():
    from ..generate.clip_vocab import load_tokenizer

    return load_tokenizer(model_max_length=MAX_TOKENS, asset_dir=TOKENIZER_DIR)


def shapes_components(seed: int = 0, image_size: int = 64) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = shapes_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=16, sample_size=image_size,
        )
        unet = UNet2DConditionModel(
            sample_size=image_size // 2, in_channels=4, out_channels=4,
            block_out_channels=(64, 128, 160), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=128, attention_head_dim=32, norm_num_groups=32,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                              timestep_spacing="trailing")
    return dict(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def shapes_pipeline(components: dict | None = None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**(components or shapes_components()), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trained_pipeline_available() -> bool:
    return (MODEL_DIR / "model_index.json").is_file()

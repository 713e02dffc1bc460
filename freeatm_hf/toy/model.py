"""The shapes text-to-image model: a small `StableDiffusionPipeline` (VAE, UNet, CLIP text encoder and a
word-level tokenizer made offline) sized to live in git (≤ 20 MB in fp16).

The VAE down-samples 4× (a 16×16×4 latent for 64×64 images) and cross-attention sits at the 16×16 and 8×8
layers (latent factors 1 and 2). A 32×32 latent would cost twice the compute per step for the same 16×16
finest attention map, and the model must be trainable on a CPU too. Because these factors differ from SD's,
the folder carries `freeatm.json` with the capture setting measured to localise best
(`freeatm eval masks --sweep`), which the generator uses when none is given.
"""

from pathlib import Path

import torch

from ..files import write_text_atomic

TOKENIZER_DIR = Path(__file__).parent / "assets" / "tokenizer"
MODEL_DIR = Path(__file__).parent / "assets" / "shapes-t2i"  # the trained pipeline, once it exists
MAX_TOKENS = 32  # the longest caption of 4 objects is 26 tokens with start and end
GUIDANCE_SCALE = 4.0  # what the mask evaluation uses; a small model oversaturates at SD's 7.5
ARCHITECTURE_CAPTURE = (1, 2)  # every cross-attention resolution (16×16, 8×8), until a sweep has measured better


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
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            norm_num_groups=16, sample_size=image_size,
        )
        unet = UNet2DConditionModel(
            sample_size=image_size // 4, in_channels=4, out_channels=4,
            block_out_channels=(64, 128, 160), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=128, attention_head_dim=32, norm_num_groups=32,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                              rescale_betas_zero_snr=True,
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


def update_model_folder(folder, training: dict | None = None, mask_eval: dict | None = None) -> dict:
    """Keep a shapes-model folder's `freeatm.json` (recommended capture, threshold, prompt mode, training facts,
    measured mask quality) and its model card in step with what is known about it."""
    import json

    from ..attention import CaptureConfig
    from ..generate.pipelines import RECOMMENDATION_FILE

    folder = Path(folder)
    path = folder / RECOMMENDATION_FILE
    fresh = {"capture": CaptureConfig(down_factors=ARCHITECTURE_CAPTURE).to_dict(), "threshold": None,
             "prompt_mode": "shapes", "guidance_scale": GUIDANCE_SCALE}
    info = json.loads(path.read_text()) if path.exists() else dict(fresh)
    info.setdefault("prompt_mode", "shapes")
    info.setdefault("guidance_scale", GUIDANCE_SCALE)
    if training is not None:
        info["training"] = training
        if mask_eval is None:
            # New weights: what was measured on the old ones (mask quality, and the capture, threshold, guidance
            # and drawn cut chosen from it) no longer holds; the folder says what a fresh one says until
            # `freeatm eval masks --save_recommendation` measures again.
            for key in ("mask_eval", "min_attention_peak", "refine"):
                info.pop(key, None)
            info.update({k: v for k, v in fresh.items() if k != "prompt_mode"})
            for stale in ("mask_eval.json", "grid.png"):  # the old weights' report and pictures
                (folder / stale).unlink(missing_ok=True)
    if mask_eval is not None:
        chosen = mask_eval["capture"]
        chosen_capture = CaptureConfig(down_factors=chosen["down_factors"], step_window=chosen["step_window"])
        info["capture"] = chosen_capture.to_dict()
        info["threshold"] = chosen["threshold"]
        info["refine"] = chosen.get("refine", "none")
        info["guidance_scale"] = mask_eval.get("guidance_scale", mask_eval["config"]["guidance_scale"])
        info["min_attention_peak"] = (mask_eval.get("drawn_filter") or {}).get("min_attention_peak")
        info["mask_eval"] = {k: mask_eval[k] for k in ("config", "segmenter_ceiling_miou", "autoencoder_ceiling", "guidance_scale", "test", "test_unrefined",
                                                       "drawn_filter", "validation", "validation_guidance") if k in mask_eval}
    write_text_atomic(path, json.dumps(info, indent=2) + "\n")
    write_model_card(folder, info)
    return info


def scenes_unique(training: dict) -> bool:
    """Whether no training scene was drawn twice: runs that recorded no scene range each began at scene 0
    (see `train_t2i.next_scene`), so with more than one of them scenes repeat."""
    return sum("scene_start" not in r for r in _runs(training)) <= 1


def _runs(training: dict) -> list[dict]:
    """Each run's own facts: `runs`, or the one run a folder trained before runs were recorded."""
    return training.get("runs") or ([training] if training else [])


def lr_history(training: dict) -> str:
    """The runs' learning rates and schedules in order, consecutive runs that agree said once:
    "0.0005 (runs 1–2), then 0.0005 with a cosine decay (run 3), then 0.0003 with a cosine decay (runs 4–7)".
    A run that recorded no schedule ran before there was one: constant."""
    groups = []  # [(lr, schedule), first run, last run]
    for i, run in enumerate(_runs(training), 1):
        key = (run.get("lr"), run.get("lr_schedule") or "constant")
        if groups and groups[-1][0] == key:
            groups[-1][2] = i
        else:
            groups.append([key, i, i])

    def say(lr, schedule):
        return (f"{lr:g}" if isinstance(lr, (int, float)) else "unrecorded") + (
            " with a cosine decay" if schedule == "cosine" else "")

    if len(groups) <= 1:
        return say(*groups[0][0]) if groups else "unrecorded"
    return ", then ".join(f"{say(*key)} (run {a})" if a == b else f"{say(*key)} (runs {a}–{b})"
                          for key, a, b in groups)


CAPTION_DROPOUT = 0.1  # train_t2i's default, with which every run before the facts recorded it trained
EMA_DECAY = 0.999  # the same for the EMA decay; a recorded 0 (no averaging) is said as 0, not as this default
PREDICTION_NAMES = {"v_prediction": "v-prediction", "epsilon": "ε-prediction", "sample": "x₀-prediction"}


def objective_text(folder: Path) -> str:
    """What the UNet was taught to predict, as the folder's scheduler reads it (train_t2i teaches what it reads)."""
    import json

    path = Path(folder) / "scheduler" / "scheduler_config.json"
    # A folder without one (its card written before its weights) will get shapes_components' scheduler.
    config = json.loads(path.read_text()) if path.is_file() else {"prediction_type": "v_prediction",
                                                                    "rescale_betas_zero_snr": True}
    kind = config.get("prediction_type", "epsilon")  # diffusers' default
    text = PREDICTION_NAMES.get(kind, kind)
    return text + (" with zero terminal SNR" if config.get("rescale_betas_zero_snr") else "")


def write_model_card(folder: Path, info: dict):
    from huggingface_hub import ModelCard, ModelCardData

    from ..hub.cards import template_path

    data = ModelCardData(library_name="diffusers", license="apache-2.0", pipeline_tag="text-to-image",
                         tags=["freeatm", "shapes-world", "text-to-image", "toy"])
    size_mb = round(sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 1e6, 2)
    card = ModelCard.from_template(data, template_path=str(template_path("shapes_t2i_card.md")), size_mb=size_mb,
                                   training=info.get("training") or {}, capture=info["capture"],
                                   lr_text=lr_history(info.get("training") or {}),
                                   threshold=info["threshold"], refine=info.get("refine", "none"),
                                   mask_eval=info.get("mask_eval"),
                                   guidance_scale=info.get("guidance_scale", GUIDANCE_SCALE),
                                   grid=(folder / "grid.png").is_file(),
                                   scenes_unique=scenes_unique(info.get("training") or {}),
                                   objective=objective_text(folder),
                                   caption_dropout=(info.get("training") or {}).get("caption_dropout",
                                                                                    CAPTION_DROPOUT),
                                   ema_decay=(info.get("training") or {}).get("ema_decay", EMA_DECAY))
    write_text_atomic(folder / "README.md", str(card))

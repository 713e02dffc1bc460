"""Loading a pipeline by name, id or folder."""

import torch


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float32": torch.float32, "fp32": torch.float32}[name]
    except KeyError:
        raise ValueError(f"unknown torch_dtype {name!r}") from None


def default_pipeline() -> str:
    """The embedded default: the trained shapes model once it ships in the package, else the random tiny SD."""
    from ..toy.model import trained_pipeline_available

    return "shapes" if trained_pipeline_available() else "tiny"


def load_pipeline(spec: str, device: torch.device, torch_dtype: str = "auto", cpu_offload: bool = False):
    """'default' → `default_pipeline()`; 'tiny' (or 'tiny-sdxl', 'tiny-sd3', 'tiny-flux') → a random tiny
    pipeline of that family built in code; 'shapes' → the trained
    shapes-world model shipped in the package; anything else → `DiffusionPipeline.from_pretrained`."""
    dtype = resolve_dtype(torch_dtype, device)
    if spec == "default":
        spec = default_pipeline()
    if spec == "shapes":
        from ..toy.model import MODEL_DIR, trained_pipeline_available

        if not trained_pipeline_available():
            raise FileNotFoundError(f"the trained shapes model is not in {MODEL_DIR} yet: train it with "
                                    "`python -m freeatm_hf.toy.train_t2i --output_dir ...` and copy it there")
        spec = str(MODEL_DIR)
    if spec in ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux"):
        from . import tiny

        pipe = {"tiny": tiny.tiny_pipeline, "tiny-sdxl": tiny.tiny_sdxl_pipeline, "tiny-sd3": tiny.tiny_sd3_pipeline,
                "tiny-flux": tiny.tiny_flux_pipeline}[spec]()
        if dtype != torch.float32:
            pipe.to(dtype=dtype)
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(spec, torch_dtype=dtype)
        if getattr(pipe, "safety_checker", None) is not None:
            # The checker blacks out images; masks of black images are meaningless.
            pipe.safety_checker = None
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe

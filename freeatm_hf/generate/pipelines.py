"""Loading a pipeline by name, id or folder, and the capture setting a model folder recommends."""

import json
import logging
from pathlib import Path

import torch

from ..files import write_text_atomic

logger = logging.getLogger(__name__)

# Next to model_index.json: {"capture": CaptureConfig.to_dict(), "threshold": ..., "prompt_mode": ..., ...}, what
# freeatm_hf should use with this model unless told otherwise.
RECOMMENDATION_FILE = "freeatm.json"
TINY_PIPELINES = ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux")  # random tiny pipelines built in code
BUILT_IN_PIPELINES = ("default", "shapes", *TINY_PIPELINES)  # names load_pipeline knows without the Hub


def resolve_dtype(name: str, device: torch.device, spec: str | None = None, revision: str | None = None) -> torch.dtype:
    """`name` as a dtype; "auto" is fp32 on the CPU and, on a GPU, fp16, or bf16 for a Flux pipeline (`spec`):
    Flux's activations overflow fp16 (its own model cards and diffusers' docs run it in bf16)."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if (pipeline_class_name(spec, revision) or "").startswith("Flux") else torch.float16
    try:
        return {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float32": torch.float32, "fp32": torch.float32}[name]
    except KeyError:
        raise ValueError(f"unknown torch_dtype {name!r}") from None


def pipeline_class_name(spec: str | None, revision: str | None = None) -> str | None:
    """The pipeline class `spec` loads as, read from its `model_index.json` (a local folder, or a Hub id's from the
    cache or the Hub) before any weights are: None where it cannot be read (the loader then says why)."""
    if spec is None:
        return None
    if spec in BUILT_IN_PIPELINES:
        return {"tiny-sdxl": "StableDiffusionXLPipeline", "tiny-sd3": "StableDiffusion3Pipeline",
                "tiny-flux": "FluxPipeline"}.get(spec, "StableDiffusionPipeline")
    try:
        if is_hub_id(spec):
            from huggingface_hub import hf_hub_download

            index = hf_hub_download(spec, "model_index.json", revision=revision)
        else:
            index = Path(spec) / "model_index.json"
        return json.loads(Path(index).read_text()).get("_class_name")
    except Exception:  # no index to read here: the dtype falls back to fp16, and the load names what is missing
        return None


def is_hub_id(spec: str) -> bool:
    """Whether a pipeline spec names a Hub repo: not a built-in ('default', 'shapes', the tiny ones) nor a local
    folder."""
    return spec not in BUILT_IN_PIPELINES and not Path(spec).exists()


def pipeline_source(spec: str) -> str:
    """'built-in', 'hub' or 'local': what a card may say of the pipeline, decided where it ran (a relative
    folder name read on another machine could pass for a Hub id)."""
    if spec in BUILT_IN_PIPELINES:
        return "built-in"
    return "hub" if is_hub_id(spec) else "local"


def default_pipeline() -> str:
    """The embedded default: the trained shapes model once it ships in the package, else the random tiny SD."""
    from ..toy.model import trained_pipeline_available

    return "shapes" if trained_pipeline_available() else "tiny"


def load_pipeline(spec: str, device: torch.device | str, torch_dtype: str = "auto", cpu_offload: bool = False,
                  revision: str | None = None):
    """'default' → `default_pipeline()`; 'tiny' (or 'tiny-sdxl', 'tiny-sd3', 'tiny-flux') → a random tiny
    pipeline of that family built in code; 'shapes' → the trained
    shapes-world model shipped in the package; anything else → `DiffusionPipeline.from_pretrained`."""
    device = torch.device(device)  # "cpu" as well as torch.device("cpu")
    if spec == "default":
        spec = default_pipeline()
    dtype = resolve_dtype(torch_dtype, device, spec, revision)
    if revision and not is_hub_id(spec):
        raise ValueError(f"--revision {revision!r} is for a Hub pipeline id; {spec!r} is built in or a local folder")
    if spec == "shapes":
        from ..toy.model import MODEL_DIR, trained_pipeline_available

        if not trained_pipeline_available():
            raise FileNotFoundError(f"the trained shapes model is not in {MODEL_DIR} yet: train it with "
                                    "`python -m freeatm_hf.toy.train_t2i --output_dir ...` and copy it there")
        spec = str(MODEL_DIR)
    if spec in TINY_PIPELINES:
        from . import tiny

        pipe = {"tiny": tiny.tiny_pipeline, "tiny-sdxl": tiny.tiny_sdxl_pipeline, "tiny-sd3": tiny.tiny_sd3_pipeline,
                "tiny-flux": tiny.tiny_flux_pipeline}[spec]()
        if dtype != torch.float32:
            pipe.to(dtype=dtype)
    else:
        from diffusers import DiffusionPipeline

        from ..data.reading import looks_like_a_path

        if looks_like_a_path(spec) and not Path(spec).exists():  # else called a malformed Hub id, with offline advice
            raise FileNotFoundError(f"--pipeline {spec}: no such folder")
        try:
            pipe = DiffusionPipeline.from_pretrained(spec, dtype=dtype, **({"revision": revision} if revision else {}))
        except OSError as e:  # not a folder, not in the cache, or the Hub out of reach: say what works offline
            raise FileNotFoundError(
                f"could not load the pipeline {spec!r} ({str(e).splitlines()[0]}). A Hub model must be in the Hub "
                "cache when the Hub cannot be reached (download it once, e.g. `hf download "
                f"{spec}`); offline, `--pipeline shapes` is the model shipped with freeatm_hf") from e
        if getattr(pipe, "safety_checker", None) is not None:
            # The checker blacks out images; masks of black images are meaningless.
            pipe.safety_checker = None
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resolved_commit(spec: str, revision: str | None = None) -> str | None:
    """The commit a Hub pipeline id (at `revision`) resolved to, read from the local Hub cache the pipeline was
    just loaded from (its snapshot folder is named by the commit); None for a local folder or a built-in."""
    if not is_hub_id(spec):
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, revision=revision, local_files_only=True)).name
    except Exception:  # not in the cache in that form: the card says nothing rather than something wrong
        return None


def _shipped_folder(spec: str) -> str:
    """The folder of the shapes model shipped in the package for "shapes"; any other spec as it is."""
    if spec != "shapes":
        return spec
    from ..toy.model import MODEL_DIR

    return str(MODEL_DIR)


def local_fingerprint(spec: str, head: int = 1 << 20) -> str | None:
    """A hash of what `DiffusionPipeline.from_pretrained` loads from a local pipeline folder (the shipped shapes
    model's included): `model_index.json` and every file of its component folders (`files_fingerprint`: by
    path, size and content, a large file by its first and last `head` bytes). None for a Hub id (its
    commit says it) or a pipeline built in code. The folder's own freeatm.json, card and evaluations are left
    out: what of them changes the rows is in the settings."""
    from ..fingerprint import files_fingerprint

    spec = _shipped_folder(spec)
    root = Path(spec)
    if spec in BUILT_IN_PIPELINES or not (root / "model_index.json").is_file():
        return None
    files = [root / "model_index.json"] + sorted(
        f for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
        for f in d.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts))
    return files_fingerprint(root, files, head)[:16]


def pipeline_recommendation(source, revision: str | None = None) -> dict | None:
    """The settings saved with a model: the capture setting and mask threshold `freeatm eval masks --sweep`
    measured to localise best, and the prompt mode it understands (`freeatm.json` in the model folder, or in
    the Hub cache for a repo id).

    `source` is a pipeline spec as `load_pipeline` takes it, or a loaded pipeline; `revision` (a Hub id's branch,
    tag or commit) is the one the pipeline was loaded from, so the settings match the weights.
    """
    if not isinstance(source, str):
        source = getattr(source, "name_or_path", None) or source.config.get("_name_or_path")
        if not source:
            return None
    source = _shipped_folder(source)
    path = Path(source) / RECOMMENDATION_FILE
    if not path.is_file():
        if not is_hub_id(source):
            return None
        cached = _download_recommendation(source, revision)
        if cached is None:
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def save_recommendation(folder, capture, threshold=None, **facts) -> Path:
    path = Path(folder) / RECOMMENDATION_FILE
    write_text_atomic(path, json.dumps({"capture": capture.to_dict(), "threshold": threshold, **facts}, indent=2) + "\n")
    return path


def _download_recommendation(repo_id: str, revision: str | None = None) -> str | None:
    """The Hub repo's freeatm.json, downloaded once into the cache (`DiffusionPipeline.from_pretrained` skips
    root files it does not know); None when the repo has none, or it cannot be reached and is not cached."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    try:
        cached = try_to_load_from_cache(repo_id, RECOMMENDATION_FILE, revision=revision)
    except HFValidationError:  # not a repo id either
        return None
    if cached is not None:  # a path, or the cache's record that the repo has no such file
        return cached if isinstance(cached, str) else None
    try:
        return hf_hub_download(repo_id, RECOMMENDATION_FILE, revision=revision)
    except EntryNotFoundError:
        return None
    except Exception as e:  # offline, unknown or private repo: generation goes on with the defaults
        logger.info("no %s for %s (%s: %s)", RECOMMENDATION_FILE, repo_id, type(e).__name__, e)
        return None

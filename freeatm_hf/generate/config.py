"""Arguments of `freeatm generate` (also a YAML recipe: every key is a field below)."""

import hashlib
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_GUIDANCE = 7.5  # diffusers' Stable Diffusion default, for pipelines whose folder recommends none
DTYPE_ALIASES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
                 "fp32": "float32", "float32": "float32"}


def canonical_setting(key: str, value):
    """One spelling of a setting written several ways (".4", "0.40" and "0.4"; "fp16" and "float16"), for this run's
    settings and for those an older version recorded as typed, so that a resume compares values, not spellings."""
    if key == "threshold" and value not in (None, "otsu"):
        try:
            return str(float(value))
        except (TypeError, ValueError):
            return value
    if key == "torch_dtype":
        return DTYPE_ALIASES.get(value, value)
    return value


@dataclass
class GenerateConfig:
    output_dir: str = field(metadata={"help": "Dataset folder to write (Hub layout)."})
    pipeline: str = field(default="default", metadata={
        "help": "A diffusers pipeline: a Hub id or a local folder; or built in, offline: 'default' / 'shapes' (the "
                "trained shapes-world model shipped with freeatm_hf), 'tiny', 'tiny-sdxl', 'tiny-sd3', 'tiny-flux' "
                "(random tiny pipelines built in code, for tests)."})
    revision: str | None = field(default=None, metadata={
        "help": "Branch, tag or commit of a Hub pipeline (the commit it resolved to goes into the card)."})
    num_images: int = field(default=64, metadata={"help": "Number of images (rows) to generate."})
    batch_size: int = field(default=8, metadata={"help": "Images per pipeline call."})
    rows_per_shard: int = field(default=1024, metadata={"help": "Rows per Parquet shard (the unit of resume)."})
    num_inference_steps: int = field(default=25, metadata={"help": "Denoising steps."})
    guidance_scale: float | None = field(default=None, metadata={
        "help": "Classifier-free guidance scale (<=1 disables); default: the model folder's freeatm.json, else 7.5."})
    height: int | None = field(default=None, metadata={"help": "Image height (default: the pipeline's)."})
    width: int | None = field(default=None, metadata={"help": "Image width (default: the pipeline's)."})
    seed: int = field(default=0, metadata={"help": "Image i uses seed + i; prompts are drawn with this seed too."})
    prompt_mode: str = field(default="auto", metadata={
        "help": "'scene' (multi-object scene prompts over the label space), 'photo' ('a photo of a [class]'), "
                "'shapes' (shapes-world captions), 'file' (--prompts_file), or 'auto' (file when --prompts_file is "
                "given, else what the model folder's freeatm.json names, else scene)."})
    num_objects: int | None = field(default=None, metadata={
        "help": "Objects per scene prompt, 1-3 (prompt_mode scene only; default 2). Shapes captions name 1-4 "
                "objects, photo prompts one, a prompts file its own."})
    prompts_file: str | None = field(default=None, metadata={
        "help": "JSONL with {'text': ..., 'nouns': [...]} per line, or a .txt of prompts (no tracked nouns)."})
    augmenter: str | None = field(default=None, metadata={
        "help": "Optional LLM rewrite of prompts: a transformers model id/folder, or URL#MODEL of an "
                "OpenAI-compatible server."})
    down_factors: list[int] | None = field(default=None, metadata={
        "help": "Capture resolutions as down-sampling factors of the latent (2,4 = 32x32,16x16 for SD at 512px). "
                "Default: the model folder's freeatm.json (the shapes model has one), else 2,4."})
    include_mid: bool | None = field(default=None, metadata={
        "help": "Also capture the UNet mid block (its factor must be in --down_factors, e.g. 8 on SD 1.x). Default: "
                "the model folder's freeatm.json, else no."})
    factor_weights: list[float] | None = field(default=None, metadata={
        "help": "Weight of each --down_factors resolution when their maps are averaged, in the same order "
                "(default: the model folder's when its resolutions are used, else equal)."})
    map_size: list[int] | None = field(default=None, metadata={
        "help": "Height and width the maps are averaged at, and stored at with --refine none (--refine guided "
                "stores them at image resolution, filtered from this size). Default: the model folder's when its "
                "resolutions are used, else the latent size."})
    layer_weights: str | None = field(default=None, metadata={
        "help": "JSON object of layer/block weights by module-name prefix, e.g. '{\"single_transformer_blocks\": "
                "0.5}' (longest prefix wins, 0 leaves a layer out; default: the model folder's freeatm.json, else "
                "all 1)."})
    mmdit_blocks: str | None = field(default=None, metadata={
        "help": "MM-DiT blocks to capture: double (joint text+image blocks), single (Flux's single-stream) or all "
                "(default: the model folder's freeatm.json, else double)."})
    step_window: list[float] | None = field(default=None, metadata={
        "help": "Fraction [start, end) of the denoising steps whose maps are averaged (default: the model "
                "folder's freeatm.json, else 0,1)."})
    threshold: str | None = field(default=None, metadata={
        "help": "Mask threshold on normalized maps, or 'otsu' (default: the model folder's freeatm.json, else 0.4)."})
    refine: str | None = field(default=None, metadata={
        "help": "'guided': maps brought to image resolution by a guided filter on the generated image, so masks "
                "follow object edges; 'none': maps at attention resolution (default: the model folder's freeatm.json, "
                "else none)."})
    min_attention_peak: float | None = field(default=None, metadata={
        "help": "Recommended to readers, not applied: objects whose attention_peak is below this were likely not "
                "drawn (the card states it; freeatm training leaves them out). Default: as the model folder "
                "recommends (measured by `freeatm eval masks`), else none."})
    torch_dtype: str = field(default="auto", metadata={
        "help": "float16, bfloat16, float32 or auto (fp16 on a GPU, bf16 for Flux; fp32 on the CPU)."})
    device: str | None = field(default=None, metadata={"help": "Device (default: the accelerate process's)."})
    cpu_offload: bool = field(default=False, metadata={"help": "enable_model_cpu_offload() on the pipeline."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the denoiser (capture compiles with it)."})
    license: str = field(default="other", metadata={
        "help": "The dataset card's licence, a Hub licence id (e.g. creativeml-openrail-m for SD 1.x images, "
                "cc-by-4.0); 'other' says to read the generator's licence. Only the card changes."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Upload the finished folder to this repo id."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})

    def __post_init__(self):
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            # Else a NotADirectoryError traceback from the folder lock, after the prompts (an augmenter) are loaded.
            raise ValueError(f"--output_dir {self.output_dir} is a file, not a folder: give a new or empty folder")
        if self.private and not self.push_to_hub:
            raise ValueError("--private is the visibility of --push_to_hub's repo: give --push_to_hub REPO_ID too, or "
                             "push later with `freeatm push FOLDER REPO_ID --private`")
        if self.pipeline == "default":
            # Resolved now, so the settings (compared on resume) name the model that actually made the rows.
            from .pipelines import default_pipeline

            self.pipeline = default_pipeline()
        # Unset capture settings come from the model folder's recommendation, resolved now so that the
        # settings compared on resume and shown in the card are the ones used.
        from ..masks import REFINE_MODES, check_threshold
        from .pipelines import pipeline_recommendation

        rec = pipeline_recommendation(self.pipeline, self.revision) or {}
        # Read once: the settings, the capture and the inherited cut all follow the same reading of the folder.
        self._recommendation = rec
        capture = rec.get("capture") or {}
        if self.down_factors is None:
            self.down_factors = list(capture.get("down_factors", [2, 4]))
        if self.step_window is None:
            self.step_window = list(capture.get("step_window", [0.0, 1.0]))
        # The rest of the recommended capture too (the mid block and layer weights, as the per-resolution weights
        # in capture_config, when its resolutions are the ones used): the library's FreeATMGenerator(pipe) takes
        # all of it, and the same folder must give the same maps from the command line.
        same = self._uses_recommended_resolutions()
        if self.include_mid is None:
            self.include_mid = bool(same and capture.get("include_mid", False))
        if self.mmdit_blocks is None:
            self.mmdit_blocks = capture.get("mmdit_blocks") or "double"
        if self.layer_weights is None and same and capture.get("layer_weights") is not None:
            import json

            self.layer_weights = json.dumps(capture["layer_weights"], sort_keys=True)
        # `is None`, not `or`: a recommended 0 (guidance 0.0 for a distilled Turbo model) is a value.
        if self.threshold is None:
            self.threshold = str(rec["threshold"] if rec.get("threshold") is not None else 0.4)
        # Otherwise found out after the first batch was denoised; one spelling (".4" and "0.40" are 0.4), so that
        # a resume is not refused over how the number was written.
        check_threshold(self.threshold, "--threshold")
        self.threshold = canonical_setting("threshold", self.threshold)
        if self.guidance_scale is None:
            g = rec.get("guidance_scale")
            self.guidance_scale = float(g if g is not None else DEFAULT_GUIDANCE)
        from .generator import check_guidance

        check_guidance(self.guidance_scale, "--guidance_scale")
        if self.refine is None:
            self.refine = rec.get("refine") or "none"
        self.torch_dtype = canonical_setting("torch_dtype", self.torch_dtype)
        if self.torch_dtype not in ("auto", *DTYPE_ALIASES.values()):
            raise ValueError(f"torch_dtype must be auto, float16, bfloat16 or float32, got {self.torch_dtype!r}")
        if self.refine not in REFINE_MODES:
            raise ValueError(f"refine must be none or guided, got {self.refine!r}")
        if self.prompt_mode == "auto":
            # A prompts file given is the prompts to use, whatever the model folder's language.
            self.prompt_mode = "file" if self.prompts_file else rec.get("prompt_mode", "scene")
        elif rec.get("prompt_mode") not in (None, self.prompt_mode) and self.prompt_mode != "file":
            # A model trained on its own captions (the shapes model) draws nothing sensible for ImageNet scenes.
            logger.warning("pipeline %r was trained for %s prompts (its freeatm.json); %s prompts may name words it "
                           "has never seen", self.pipeline, rec["prompt_mode"], self.prompt_mode)
        if self.prompts_file and self.prompt_mode != "file":
            raise ValueError(f"--prompts_file is read with --prompt_mode file (or auto), not {self.prompt_mode!r}")
        if self.prompt_mode not in ("scene", "photo", "shapes", "file"):
            raise ValueError(f"prompt_mode must be auto, scene, photo, shapes or file, got {self.prompt_mode!r}")
        if self.prompt_mode == "file" and not self.prompts_file:
            raise ValueError("prompt_mode 'file' needs --prompts_file")
        if self.prompt_mode == "scene":
            self.num_objects = 2 if self.num_objects is None else self.num_objects
            if not 1 <= self.num_objects <= 3:
                raise ValueError(f"--num_objects must be 1, 2 or 3, got {self.num_objects}")
        elif self.num_objects is not None:
            # Not an error: a scene recipe run with `--prompt_mode photo` carries the recipe's num_objects along.
            logger.warning("--num_objects %s is for scene prompts; %s prompts set their own number of objects",
                           self.num_objects, self.prompt_mode)
            self.num_objects = None
        if self.factor_weights is not None and len(self.factor_weights) != len(self.down_factors):
            raise ValueError(f"factor_weights needs one weight per down factor {self.down_factors}, got "
                             f"{self.factor_weights}")
        self.layer_weight_map()  # a malformed JSON object fails here, before any pipeline loads
        if self.map_size is not None and (len(self.map_size) != 2 or min(self.map_size) < 1):
            raise ValueError(f"map_size must be a height and a width, got {self.map_size}")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", self.license):
            # The Hub takes lower-case licence ids only: a card with another would be refused at push time.
            hint = f" (did you mean {self.license.lower()!r}?)" if re.fullmatch(r"[A-Za-z0-9][\w.+-]*", self.license) else ""
            raise ValueError("--license must be a Hub licence id such as cc-by-4.0, apache-2.0, openrail or other; "
                             f"got {self.license!r}{hint}")
        if self.min_attention_peak is not None and not 0.0 <= self.min_attention_peak < 1.0:
            # The card states it and training applies it: nan kept every object, inf or 2 left every one out.
            raise ValueError(f"--min_attention_peak must be in [0, 1) (attention_peak is a probability), got "
                             f"{self.min_attention_peak}")
        if self.seed < 0 or self.seed + max(self.num_images, 1) - 1 > 2**63 - 1:
            # Image i's seed (seed + i) seeds a torch generator and is stored as int64.
            raise ValueError(f"--seed must be in [0, 2**63 - num_images], got {self.seed}")
        if self.batch_size <= 0 or self.num_images <= 0:
            raise ValueError("num_images and batch_size must be positive")
        from .writer import shard_count

        shard_count(self.num_images, self.rows_per_shard)  # else refused once an augmenter has loaded
        if self.device is not None:  # a mistyped device is found now, not after the pipeline has loaded
            from ..devices import resolve_device

            resolve_device(self.device)
        if self.num_inference_steps < 1:  # found now, not after the pipeline has loaded
            raise ValueError(f"num_inference_steps must be at least 1, got {self.num_inference_steps}")
        if any(v is not None and v < 1 for v in (self.height, self.width)):
            raise ValueError(f"height and width must be positive, got {self.height} and {self.width}")
        self.capture_config()  # step window, factors, blocks and weights checked before any pipeline loads
        if self.min_attention_peak is None and rec.get("min_attention_peak") is not None:
            self.min_attention_peak = self._inherited_min_peak(rec)

    def _inherited_min_peak(self, rec: dict) -> float | None:
        """The recommended cut holds for the capture and guidance it was measured with: the peak is a raw
        attention probability whose scale moves with layers, step window, weights and guidance. Not with the
        number of steps: the shapes model's peaks at 10 and 25 steps agree (125 objects: correlation 0.996,
        median ratio 1.007), so the README demo's 10 steps keep the cut measured at 25."""
        from ..attention import CaptureConfig

        measured_at = rec.get("guidance_scale")
        same = (self.capture_config().to_dict() == CaptureConfig.from_dict(rec.get("capture") or {}).to_dict()
                and (measured_at is None or self.guidance_scale == float(measured_at)))
        if not same:
            logger.warning("capture or guidance differ from the ones %s's min_attention_peak (%s) was measured "
                           "with: no cut recorded (set --min_attention_peak to record one)", self.pipeline,
                           rec["min_attention_peak"])
            return None
        return float(rec["min_attention_peak"])

    def _uses_recommended_resolutions(self) -> bool:
        """Whether the capture uses the model folder's resolutions: only then do its per-resolution (and per-layer)
        settings apply."""
        from ..attention import CaptureConfig

        capture = self._recommendation.get("capture") or {}
        return list(capture.get("down_factors") or CaptureConfig().down_factors) == list(self.down_factors)

    def capture_config(self):
        """The capture these settings ask for; the model folder's recommended per-resolution weights and map
        size come along when its recommended resolutions are the ones used and none are given here."""
        from ..attention import CaptureConfig

        rec = self._recommendation.get("capture") or {}
        same = self._uses_recommended_resolutions()
        extra = {k: rec[k] for k in ("factor_weights", "map_size") if same and rec.get(k) is not None}
        if self.factor_weights is not None:
            extra["factor_weights"] = dict(zip(self.down_factors, self.factor_weights))
        if self.map_size is not None:
            extra["map_size"] = tuple(self.map_size)
        if self.layer_weights is not None:
            extra["layer_weights"] = self.layer_weight_map()
        return CaptureConfig.from_dict({"down_factors": tuple(self.down_factors), "include_mid": self.include_mid,
                                        "step_window": tuple(self.step_window), "mmdit_blocks": self.mmdit_blocks,
                                        **extra})

    def layer_weight_map(self) -> dict | None:
        """`layer_weights` (a JSON string on the command line, kept as given in the settings) as a dict."""
        if self.layer_weights is None:
            return None
        import json

        try:
            weights = json.loads(self.layer_weights)
        except json.JSONDecodeError as e:
            raise ValueError(f"layer_weights must be a JSON object, got {self.layer_weights!r}: {e}") from e
        if not isinstance(weights, dict):
            raise ValueError(f"layer_weights must be a JSON object of prefix: weight, got {self.layer_weights!r}")
        return weights

    @property
    def threshold_value(self) -> float | str:
        return "otsu" if self.threshold == "otsu" else float(self.threshold)


    def settings(self) -> dict:
        """Everything the rows depend on (compared on resume). Device, offload, batch size and compilation only
        change speed and memory (a run that ran out of memory resumes with a smaller batch); pushing and the
        card's licence are not about the rows either."""
        skip = {"output_dir", "device", "cpu_offload", "push_to_hub", "private", "batch_size", "compile", "license"}
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        if self.prompts_file and Path(self.prompts_file).is_file():
            # The file's content, not only its path: an edited file must not resume into the same folder.
            out["prompts_sha256"] = hashlib.sha256(Path(self.prompts_file).read_bytes()).hexdigest()
        # The capture resolved with the model folder's recommendation (its map size and weights are no field).
        out["capture"] = self.capture_config().to_dict()
        if self.prompt_mode == "scene":  # prompt i is (seed, i) through these templates: a new version, new prompts
            from ..prompts.scenes import TEMPLATES_VERSION

            out["scene_templates"] = TEMPLATES_VERSION
        if self.prompt_mode in ("scene", "photo"):  # and says its classes by the label space's names
            from ..prompts.label_space import LABEL_SPACE_VERSION

            out["label_space"] = LABEL_SPACE_VERSION
        if self.torch_dtype == "auto":  # fp16 (bf16 for Flux) on a GPU, fp32 on the CPU: rows differ between them
            import torch

            from .pipelines import resolve_dtype

            device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            dtype = resolve_dtype("auto", device, self.pipeline, self.revision)
            out["resolved_dtype"] = str(dtype).removeprefix("torch.")
        return out

"""Model cards for pretrained checkpoints: YAML metadata, `model-index` from the results JSON, the method,
its hyper-parameters, the data, and how to load the backbone without freeatm_hf."""

import json
import logging
import re
from pathlib import Path

from ..files import write_text_atomic

logger = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"
CARD_INFO_FILE = "card_info.json"  # the data and training facts, kept so that `freeatm eval` can refresh the card

USAGE = {
    "blip": """```python
import freeatm_hf.models  # registers the Auto classes
from transformers import AutoModel
model = AutoModel.from_pretrained("{repo}")
# Stock transformers, no freeatm_hf (`freeatm push-model DIR {repo} --exports` puts these folders in the repo):
from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessor
retrieval = BlipForImageTextRetrieval.from_pretrained("{repo}", subfolder="blip-retrieval")  # or blip-captioning:
tokenizer = AutoTokenizer.from_pretrained("{repo}", subfolder="blip-retrieval")            # BlipForConditionalGeneration
images = BlipImageProcessor.from_pretrained("{repo}", subfolder="blip-retrieval")          # the training statistics
# The vision tower in stock timm (`freeatm push-model DIR {repo} --timm` publishes it as {repo}-timm):
import timm
encoder = timm.create_model("hf-hub:{repo}-timm", pretrained=True)
```""",
    "cnn": """```python
# With freeatm_hf:
import freeatm_hf.models  # registers the Auto classes
from transformers import AutoModel
model = AutoModel.from_pretrained("{repo}")
# Stock timm, no freeatm_hf (`freeatm push-model DIR {repo} --timm` publishes the backbone as {repo}-timm):
import timm
backbone = timm.create_model("hf-hub:{repo}-timm", pretrained=True)  # model(x): pooled features
# Stock transformers, no freeatm_hf: the same repo through transformers' timm wrapper
from transformers import AutoImageProcessor, AutoModel
backbone = AutoModel.from_pretrained("{repo}-timm")        # .pooler_output: pooled features
processor = AutoImageProcessor.from_pretrained("{repo}-timm")  # the training statistics
# Stock torchvision, no freeatm_hf (`freeatm push-model DIR {repo} --exports` puts the state dict in the repo):
import torch, torchvision
from huggingface_hub import hf_hub_download
resnet = torchvision.models.{arch}()
resnet.fc = torch.nn.Identity()  # no classifier was trained: resnet(x) gives the pooled features
resnet.load_state_dict(torch.load(hf_hub_download("{repo}", "torchvision/{arch}.pth")))
```""",
    "vit": """```python
from transformers import ViTMAEForPreTraining            # the checkpoint loads in stock transformers
model = ViTMAEForPreTraining.from_pretrained("{repo}")
# The encoder as a plain ViT (`freeatm push-model DIR {repo} --exports` puts it in the repo as vit/):
from transformers import ViTForImageClassification, ViTModel
encoder = ViTModel.from_pretrained("{repo}", subfolder="vit", add_pooling_layer=False)  # MAE has no pooler
clf = ViTForImageClassification.from_pretrained("{repo}", subfolder="vit", num_labels=1000)  # to fine-tune
# Stock timm (`freeatm push-model DIR {repo} --timm` publishes the encoder as {repo}-timm):
import timm
encoder = timm.create_model("hf-hub:{repo}-timm", pretrained=True)
```""",
}

DESCRIPTIONS = {
    "simclr": ("SimCLR", "Two augmented views per image; the ResNet's pre-pool feature map is pooled per object mask "
                         "(Eq. 2) and instances are contrasted (Eq. 3, NT-Xent), or whole images for the baseline."),
    "moco": ("MoCo-v2", "Query/key encoders (EMA key encoder), a queue of instance keys, InfoNCE over instances "
                        "(attention pooling) or images (baseline)."),
    "blip": ("BLIP", "Vision-language pretraining with image-text contrast (ITC), matching on hard negatives (ITM) "
                     "and captioning (LM); with position prompts, each object with a box adds \"The [O] is in block "
                     "[P].\" to the caption (the image cut into a grid of blocks numbered row-major, see Data), computed after "
                     "augmentation."),
    "mae": ("MAE", "Masked autoencoding (ViT, {masked} % masking, {loss}); a share β of the masked patches, growing "
                   "linearly to β_max = {beta_max:g}, is chosen by the highest attention score, the rest at random."),
}
# What the baselines do instead (the same model trained without the masks).
BASELINE_DESCRIPTIONS = {
    "mae": "Masked autoencoding (ViT, {masked} % masking, {loss}); the masked patches are chosen at random, no "
           "attention maps used (the MAE baseline).",
    "blip": "Vision-language pretraining with image-text contrast (ITC), matching on hard negatives (ITM) and "
            "captioning (LM) on the captions alone (no position prompts: the baseline).",
}
EVAL_COMMANDS = {"blip": "freeatm eval retrieval --model <this folder> --dataset <id>"}


LOCAL_TYPE = "local"  # an evaluation dataset's `dataset_type` when it is a local folder, not a Hub id
# Retrieval recalls are percentages, as BLIP and COCO report them; every other metric is a fraction in [0, 1].
PERCENT_TASKS = {"image-text-retrieval"}


def shown_value(result: dict) -> str:
    """A result's value as the card's table writes it: a percentage marked as one, so that it is not read against
    the fractions beside it (a recall of 62.5 % beside an accuracy of 0.25)."""
    if result["task"] in PERCENT_TASKS:
        return f"{result['value']:.2f} %"
    return f"{result['value']:.4f}"


def read_results(folder: str | Path, current: bool = False) -> list[dict]:
    """The folder's results; `current`: only those measured on the weights it holds now (a result records the
    weights' fingerprint; one measured before a retraining into the same folder is left out, with a warning)."""
    path = Path(folder) / RESULTS_FILE
    results = json.loads(path.read_text()) if path.exists() else []
    return of_current_weights(folder, results) if current else results


def of_current_weights(folder: str | Path, results: list[dict]) -> list[dict]:
    """The results measured on the weights the folder holds now, or before fingerprints were recorded."""
    if not any(r.get("weights") for r in results):
        return results
    now = weights_fingerprint(folder)
    stale = [r for r in results if r.get("weights") not in (None, now)]
    if stale:
        logger.warning("%s: %d result(s) were measured on earlier weights (%s), left out of the card: evaluate "
                       "again", folder, len(stale), ", ".join(sorted({r["metric"] for r in stale})))
    return [r for r in results if r not in stale]


def weights_fingerprint(folder: str | Path) -> str | None:
    """A hash of the folder's weight files (`files_fingerprint`): what its results and exports were made from."""
    from ..fingerprint import files_fingerprint

    files = sorted(Path(folder).glob("*.safetensors"))
    return files_fingerprint(Path(folder), files)[:16] if files else None


def add_results(folder: str | Path, new: list[dict]) -> list[dict]:
    """Merge results (keyed by task, dataset, split, metric) into the folder's results JSON."""
    from ..data.reading import recorded_source

    key = lambda r: (r["task"], r["dataset"], r["split"], r["metric"])  # noqa: E731
    merged = {key(r): r for r in read_results(folder)}
    weights = weights_fingerprint(folder)
    merged.update({key(r): r for r in ({**r, "dataset": recorded_source(r["dataset"]), "weights": weights}
                                       for r in new)})
    out = sorted(merged.values(), key=key)
    write_text_atomic(Path(folder) / RESULTS_FILE, json.dumps(out, indent=2))
    return out


def record_results(folder: str | Path, results: list[dict], config) -> bool:
    """Merge an evaluation's results into a checkpoint folder's results and card (`add_results`,
    `write_model_card`). A Hub id (`from_pretrained` evaluates one) has no folder to write: the results are
    returned by the caller all the same, and a warning says how to put them on a card."""
    if not Path(folder).is_dir():
        logger.warning("%s is not a local folder: the results are not written into a card (evaluate a local copy, "
                       "e.g. from `hf download %s --local-dir DIR`, to record them)", folder, folder)
        return False
    add_results(folder, results)
    write_model_card(folder, config)
    logger.info("%s: %s recorded in %s and the card (README.md)", folder, ", ".join(r["metric"] for r in results),
                RESULTS_FILE)
    return True


def card_facts(model: str | Path) -> dict | None:
    """A checkpoint's card facts (`CARD_INFO_FILE`: its data and training), from its folder or, for a Hub id, as
    pushed; None when it has none (not a freeatm checkpoint) or the Hub cannot be reached."""
    path = Path(model) / CARD_INFO_FILE
    if not path.is_file() and not Path(model).exists():
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(str(model), CARD_INFO_FILE))
        except Exception as e:  # the facts only refine defaults and cards; their absence is said, not fatal
            logger.info("%s: no card facts (%s)", model, e)
            return None
    return json.loads(path.read_text()) if path.is_file() else None


def training_metadata(config, data: dict) -> dict:
    """The card metadata that says how weights were trained, shared by a checkpoint's card and its timm export's:
    the method and whether the masks were used (tags), and the training datasets that are on the Hub."""
    from ..data.reading import hub_dataset_id

    method = config.model_type.removeprefix("freeatm_")
    return {"tags": ["freeatm", method, "self-supervised", "attention-masks" if _guided(config, data) else "baseline"],
            "datasets": [d for d in map(hub_dataset_id, (data.get("dataset"), data.get("real_dataset"))) if d] or None}


def write_model_card(folder: str | Path, config, data: dict | None = None, training: dict | None = None,
                     repo_id: str | None = None):
    """README.md for a checkpoint folder from `model_cards/model_card.md`."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from ..data.reading import hub_dataset_id
    from .cards import template_path

    folder = Path(folder)
    info_path = folder / CARD_INFO_FILE
    if data is None and training is None and info_path.exists():
        saved = json.loads(info_path.read_text())
        data, training = saved.get("data"), saved.get("training")
    else:
        write_text_atomic(info_path, json.dumps({"data": data, "training": training}, indent=2, default=str))
    method = config.model_type.removeprefix("freeatm_")
    title, description = DESCRIPTIONS[method]
    data = data or {}
    guided = _guided(config, data)
    if not guided:
        description = BASELINE_DESCRIPTIONS.get(method, description)
    if method == "mae":  # the settings trained with, not MAE's defaults
        description = description.format(masked=f"{100 * config.mask_ratio:g}", beta_max=config.beta_max,
                                         loss="norm-pix loss" if config.norm_pix_loss else "pixel loss")
    # Evaluation datasets too are named by Hub id, or a local folder by its name alone.
    # `dataset_type` is a Hub dataset id, which the Hub links to: a local folder's name there could link an
    # unrelated public dataset (a folder named cifar10), so a local folder's type says it is one.
    results = [{**r, "dataset": public_dataset_name(r["dataset"]), "type": hub_dataset_id(r["dataset"]) or LOCAL_TYPE,
                "shown": shown_value(r)} for r in sorted(read_results(folder, current=True), key=_reading_order)]
    name = repo_id or folder.name
    eval_results = [EvalResult(task_type=r["task"], dataset_type=r["type"], dataset_name=r["dataset"],
                               dataset_split=r["split"], dataset_revision=r.get("revision"),
                               metric_type=r["metric"], metric_value=r["value"]) for r in results]
    card_data = ModelCardData(
        library_name="freeatm_hf", license="apache-2.0", pipeline_tag="image-feature-extraction",
        **training_metadata(config, data), model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    skip = {"architectures", "transformers_version", "dtype", "torch_dtype", "use_cache", "model_type"}
    hyper = {k: v for k, v in config.to_diff_dict().items() if not k.startswith("_") and k not in skip}
    if "label_smoothing" in (hyper.get("text_config") or {}):  # BLIP's caption loss reads its text config's only
        hyper.pop("label_smoothing", None)
    hyper.update({k: getattr(v, "value", v) for k, v in (training or {}).items() if v is not None})
    hyper = _hyperparameter_rows(hyper, skip)
    card = ModelCard.from_template(
        card_data, template_path=str(template_path("model_card.md")), model_name=name, method_title=title,
        method_description=description, guided=guided,
        eval_command=EVAL_COMMANDS.get(method, "freeatm eval knn --model <this folder> --dataset <id>"),
        hyperparameters=hyper, data_mode=data.get("data_mode", "synthetic"),
        data_description=_data_text(data, guided), results=results,
        usage=_usage(method, repo_id or "<user>/<repo>", getattr(config, "backbone", "resnet50")),
    )
    write_text_atomic(folder / "README.md", str(card))  # rewritten by every evaluation: never left cut short
    return card


def _reading_order(result: dict) -> tuple:
    """Results in the order a reader expects: a metric's numbers compared as numbers (tr@1, tr@5, tr@10; the
    results file sorts them as text, tr@10 before tr@5)."""
    metric = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", result["metric"])]
    return result["task"], result["dataset"], result["split"], metric


def _hyperparameter_rows(hyper: dict, skip: set[str], prefix: str = "") -> dict[str, str]:
    """The hyper-parameter table's rows as a reader wants them: a sub-model's settings (BLIP's text and vision
    configs) one per row as `text_config.hidden_size`, not a Python dict in one cell; plain values (`yes`, not
    Python's `True`); unset ones left out."""
    from .cards import setting_text

    rows = {}
    for key, value in hyper.items():
        if isinstance(value, dict):
            inner = {k: v for k, v in value.items() if k not in skip and not k.startswith("_")}
            rows.update(_hyperparameter_rows(inner, skip, f"{prefix}{key}."))
        elif (text := setting_text(value)) is not None:
            rows[prefix + key] = text
    return rows


def _usage(method: str, repo: str, arch: str) -> str:
    text = USAGE[{"mae": "vit", "blip": "blip"}.get(method, "cnn")].format(repo=repo, arch=arch)
    if method in ("simclr", "moco"):
        from .export import has_torchvision_twin

        if not has_torchvision_twin(arch):  # the snippet would name a model torchvision does not have
            head, _, _ = text.partition("# Stock torchvision")
            text = head + f"# No torchvision counterpart of {arch}: timm (above) loads it.\n```"
    return text


def _guided(config, data: dict | None = None) -> bool:
    """Whether the masks were used: attention pooling, attention-guided MAE masking, or position prompts (not on
    real data alone: its rows carry one whole-image mask, so attention pooling there is image-level)."""
    if (data or {}).get("data_mode") == "real":
        return False
    return (getattr(config, "pooling", None) == "attention" or bool(getattr(config, "beta_max", 0))
            or (data or {}).get("prompts") == "position")


def _folder_name(source: str) -> str:
    return re.split(r"[\\/]", source.rstrip("/\\"))[-1]


def _local_folder(source: str) -> str:
    """How a public card names a local folder never pushed: by its name, not its path."""
    return f"a local folder (`{_folder_name(source)}`, not on the Hub)"


def public_dataset_name(source: str) -> str:
    """A dataset's name in a public card's results: its Hub id, else a local folder's name alone."""
    from ..data.reading import hub_dataset_id

    return hub_dataset_id(source) or _folder_name(source)


def _public_name(source: str) -> str:
    """How a public card names a dataset or generator: its Hub id, else a local folder's name (not its path)."""
    from ..data.reading import hub_dataset_id

    hub_id = hub_dataset_id(source)
    if not hub_id:
        return _local_folder(source)
    from .push import pushed_revision

    # A folder pushed to a branch: name the branch too (the `datasets` metadata can only hold the id).
    branch = pushed_revision(source) if Path(source).exists() else None
    return f"`{hub_id}` (revision `{branch}`)" if branch else f"`{hub_id}`"


def _generator_name(pipeline: str, generation: dict) -> str:
    """How a public card names the pipeline that generated the data: a built-in by what it is, a Hub id (with
    the commit it resolved to), a local folder by its name; the dataset card says which (`pipeline_source`)."""
    from ..data.reading import looks_like_a_path
    from ..generate.pipelines import BUILT_IN_PIPELINES

    source = generation.get("pipeline_source")
    if source == "built-in" or pipeline in BUILT_IN_PIPELINES:
        return f"freeatm_hf's built-in `{pipeline}` pipeline"
    commit = generation.get("pipeline_commit")
    if source == "hub" or commit:
        return f"`{pipeline}`" + (f" (commit `{commit[:10]}`)" if commit else "")
    if source == "local" or Path(pipeline).exists() or looks_like_a_path(pipeline):
        return f"a local pipeline folder (`{_folder_name(pipeline)}`, not on the Hub)"
    return _public_name(pipeline)


def public_source(source: str | None) -> str | None:
    """A dataset as a pushed repo's facts name it: its Hub id, or a local folder as `./name` (relative, so that a
    card rendered from these facts on another machine names it as a local folder, never as a Hub id)."""
    from ..data.reading import hub_dataset_id, looks_like_a_path

    if not source:
        return source
    if Path(source).exists() or looks_like_a_path(source):
        return hub_dataset_id(source) or f"./{_folder_name(source)}"
    return source


def public_facts(folder: str | Path) -> dict[str, bytes]:
    """card_info.json and eval_results.json as a public repo holds them (only those that change): the datasets
    they name by absolute path, so that a later card finds them here, named by `public_source` instead."""
    folder, files = Path(folder), {}
    info = folder / CARD_INFO_FILE
    if info.is_file():
        facts = json.loads(info.read_text())
        data = facts.get("data") or {}
        public = {k: public_source(v) if k in ("dataset", "real_dataset") else v for k, v in data.items()}
        if public != data:
            files[CARD_INFO_FILE] = json.dumps({**facts, "data": public}, indent=2).encode()
    results = read_results(folder)
    # The pushed copy holds what the card shows: results of these weights, each dataset by its public name.
    public_results = [{**r, "dataset": public_source(r["dataset"])} for r in of_current_weights(folder, results)]
    if public_results != results:
        files[RESULTS_FILE] = json.dumps(public_results, indent=2).encode()
    return files


def with_pushed_datasets(text: str, folder: str | Path) -> str:
    """A model card written before its data went to the Hub names the data as local folders; once `freeatm push`
    has sent them (the folder notes where), name them by Hub id: the `datasets` metadata, the data sentence and
    the evaluation results. Nothing else changes, so a card edited by hand keeps its edits (and one with no
    such dataset is returned as it is, unparsed)."""
    from huggingface_hub import ModelCard

    from ..data.reading import hub_dataset_id

    info = Path(folder) / CARD_INFO_FILE
    data = (json.loads(info.read_text()).get("data") or {}) if info.is_file() else {}
    trained_on = [s for s in (data.get("dataset"), data.get("real_dataset")) if s]
    # Only a folder on this machine can have been pushed since the card was written.
    renames = {s: hub_dataset_id(s) for s in {*trained_on, *(r["dataset"] for r in read_results(folder))}
               if Path(s).exists()}
    renames = {s: hub_id for s, hub_id in renames.items() if hub_id}
    if not renames:
        return text
    card = ModelCard(text, ignore_metadata_errors=True)
    datasets, changed = list(card.data.datasets or []), False
    for source, hub_id in renames.items():
        if _local_folder(source) in card.text:
            card.text, changed = card.text.replace(_local_folder(source), _public_name(source)), True
        if source in trained_on and hub_id not in datasets:
            datasets, changed = [*datasets, hub_id], True
        for result in card.data.eval_results or []:
            if result.dataset_name == _folder_name(source):
                result.dataset_name = result.dataset_type = hub_id
                changed = True
    card.data.datasets = datasets or None
    return str(card) if changed else text


def _data_text(data: dict, guided: bool = True) -> str:
    """The card's Data section; `guided`: whether the masks were used (`_guided`)."""
    from ..data.reading import generation_settings

    mode = data.get("data_mode", "synthetic")
    parts = [f"Data mode: **{mode}**."]
    if data.get("dataset") and mode != "real":
        parts.append(f"Synthetic (generated) dataset: {_public_name(data['dataset'])}.")
        generation = generation_settings(data["dataset"])
        if generation.get("pipeline"):
            cls = f" ({generation['pipeline_class']})" if generation.get("pipeline_class") else ""
            parts.append(f"Generated by {_generator_name(str(generation['pipeline']), generation)}{cls}.")
    if data.get("real_dataset"):
        parts.append(f"Real dataset: {_public_name(data['real_dataset'])} (one whole-image mask per image).")
    if mode == "mix":
        rows = (f" ({data['synthetic_rows']} generated and {data['real_rows']} real rows)"
                if data.get("real_rows") is not None else "")
        parts.append(f"Share of real rows: {data.get('mix_ratio')}{rows}.")
    # Real rows carry no objects to place: on real data alone no caption got a position prompt.
    if data.get("prompts") == "position" and mode != "real":
        g = int(data.get("grid") or 3)
        parts.append(f"Position prompts on a {g}×{g} grid (blocks 1–{g * g}, row-major).")
    elif data.get("prompts"):
        parts.append("Captions alone (no position prompts: the baseline).")
    # A baseline reads no masks (`freeatm train` refuses the cut there): the cut recorded in its facts filtered nothing.
    if data.get("min_attention_peak") and data.get("dataset") and mode != "real" and guided:
        parts.append(f"Objects with attention_peak below {data['min_attention_peak']} were taken as not drawn and "
                     "left out.")
    if data.get("color_strength") is not None:
        from ..data.gpu_augment import color_jitter

        j = color_jitter(data["color_strength"])
        parts.append(f"Colour jitter at strength {data['color_strength']:g} (brightness, contrast, saturation "
                     f"{j['brightness']:.2g}, hue {j['hue']:.2g}).")
    if data.get("image_size"):  # a CNN's config has no input size (a ViT's states it among the hyper-parameters)
        side = int(data["image_size"])
        parts.append(f"Views of {side}×{side} pixels: the input size the backbone was trained at.")
    if data.get("num_rows"):
        parts.append(f"Rows: {data['num_rows']}.")
    return " ".join(parts)

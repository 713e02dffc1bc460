"""Cards rendered from the Jinja templates in `model_cards/` (shipped in the wheel as `_model_cards`)."""

from pathlib import Path


def template_path(name: str) -> Path:
    """Path of `model_cards/<name>`, from the installed package or, in a source checkout, the repo root."""
    from ..shipped import shipped_path

    path = shipped_path("model_cards", name)
    if path is None:
        raise FileNotFoundError(f"card template {name!r} is neither in the package nor in the repository's "
                                "model_cards/")
    return path


# The Hub's size categories (datasets' utils/resources/size_categories.json), by upper row limit.
SIZE_CATEGORIES = [(1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"), (1e7, "1M<n<10M"),
                   (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"), (1e11, "10B<n<100B"),
                   (1e12, "100B<n<1T"), (float("inf"), "n>1T")]


def public_generation(generation: dict) -> dict:
    """The generation settings as a card states them: a local pipeline folder, prompts file or augmenter model
    by its name, an augmenter server by its model alone. Where they lay on the generating machine tells a reader
    nothing and may tell too much (a home directory, a private host); the prompts file's hash is kept, and the
    full paths stay in the folder's resume state (`.freeatm/settings.json`, never pushed)."""
    import json

    from ..data.reading import looks_like_a_path

    # A copy that shares no list: YAML writes a list met twice (the capture's down factors are the run's) as an
    # anchor and an alias (`&id001`, `*id001`), which a card's reader has to resolve by hand.
    out = json.loads(json.dumps(generation))
    if out.get("threshold") not in (None, "otsu"):  # a number to a YAML reader, not the string it is kept as
        out["threshold"] = float(out["threshold"])
    if out.get("pipeline_source") == "local" and out.get("pipeline"):
        out["pipeline"] = Path(str(out["pipeline"])).name
    if out.get("prompts_file"):
        out["prompts_file"] = Path(str(out["prompts_file"])).name
    augmenter = str(out.get("augmenter") or "")
    if augmenter.startswith(("http://", "https://")):
        out["augmenter"] = f"OpenAI-compatible server#{augmenter.partition('#')[2]}"
    elif augmenter and (Path(augmenter).exists() or looks_like_a_path(augmenter)):
        out["augmenter"] = Path(augmenter).name
    return out


def setting_text(value) -> str | None:
    """A setting as a card's table shows it to a reader: plain words rather than Python's repr (`None`, `False`, a
    dict in single quotes); a list or mapping as JSON. None for an unset one, which a table leaves out."""
    import json

    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def generation_rows(generation: dict) -> list[tuple[str, str]]:
    """The dataset card's Generation table: each setting once, at the value the run used. The capture (the settings
    as resolved with the model folder's recommendation, and the resolutions an MM-DiT actually captured) takes the
    place of the same-named settings asked for, rather than following them as one more row; unset settings, and
    the MM-DiT block choice of a UNet run, are left out (the YAML `freeatm.generation` keeps every one)."""
    capture = generation.get("capture") or {}
    unet = generation.get("denoiser") == "unet"
    rows = []
    for key, value in [*generation.items(), *((k, v) for k, v in capture.items() if k not in generation)]:
        if key == "capture" or (unet and key == "mmdit_blocks"):
            continue
        text = setting_text(capture.get(key, value))
        if text is not None:  # a `|` would end the table's cell, even inside the code span
            rows.append((key, text.replace("|", "\\|")))
    return rows


def size_category(num_rows: int) -> str:
    return next(s for limit, s in SIZE_CATEGORIES if num_rows < limit)


def markdown_text(text: str) -> str:
    """`text` as plain words in Markdown: one line, its markup characters escaped (a prompt from a user's file or
    an LLM could otherwise close an image's alt text and add a link or image of its own to a public card)."""
    import re

    return re.sub(r"([\\`*_\[\]()<>!|~])", r"\\\1", " ".join(str(text).split()))


def render_dataset_card(features, generation: dict, counts: dict, repo_id: str = "<user>/<dataset>",
                        pretty_name: str = "freeatm generated dataset", examples: list[dict] | None = None,
                        extra_tags: list[str] | None = None, num_bytes: int | None = None,
                        download_size: int | None = None, **template_vars):
    """A `DatasetCard` with YAML `configs`, `dataset_info`, task categories, license and size category.
    `num_bytes` (the rows' uncompressed size) and `download_size` (the data files'): with `counts["num_rows"]`,
    the train split's size in `dataset_info`, as `push_to_hub` states it. `datasets` keys its cache of a local
    folder by the folder's name and this metadata, not by the files: without the sizes, every folder of one name
    whose rows have these features (another run's, or this one regenerated) shares a cache, and a plain
    `load_dataset(folder)` returns the rows first read."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    size = size_category(counts.get("num_rows", 0))
    data = DatasetCardData(
        pretty_name=pretty_name,
        license=generation.get("license", "other"),
        task_categories=["image-segmentation", "text-to-image", "image-classification"],
        size_categories=[size],
        tags=["freeatm", "synthetic", "attention-masks", *(extra_tags or [])],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        # Machine-readable generation settings (training reads the mask threshold from here).
        freeatm={"generation": generation},
    )
    sizes = {}
    if num_bytes is not None:
        splits = SplitDict({"train": SplitInfo("train", num_bytes=num_bytes, num_examples=counts.get("num_rows", 0))})
        sizes = dict(splits=splits, dataset_size=num_bytes, download_size=download_size)
    DatasetInfosDict({"default": DatasetInfo(features=features, **sizes)}).to_dataset_card_data(data)
    return DatasetCard.from_template(
        data, template_path=str(template_path("dataset_card.md")), pretty_name=pretty_name, repo_id=repo_id,
        generation=generation, generation_rows=generation_rows(generation),
        examples=[{**ex, "prompt": markdown_text(ex["prompt"])} for ex in examples or []],
        **counts, **template_vars,
    )

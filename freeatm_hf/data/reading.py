"""Pretraining data: a freeatm dataset (synthetic, with masks), a plain image dataset (real, no masks), or a
mix of both, as one `datasets` dataset with `image` and `objects` columns."""

from datasets import Dataset, IterableDataset, interleave_datasets, load_dataset

DATA_MODES = ("synthetic", "real", "mix")


def _load(source: str, split: str, streaming: bool):
    return load_dataset(source, split=split, streaming=streaming)


def as_image_objects(ds, image_column: str = "image"):
    """Keep `image` and `objects`; a dataset without `objects` (real data) gets an empty list per row."""
    cols = ds.column_names or list(ds.features)
    if image_column not in cols:
        raise ValueError(f"no column {image_column!r} in the dataset (columns: {cols})")
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    if "objects" in cols:
        return ds.select_columns(["image", "objects"])
    return ds.select_columns(["image"]).map(lambda row: {"objects": []})


def pretraining_dataset(synthetic: str | None = None, real: str | None = None, mode: str = "synthetic",
                        mix_ratio: float = 0.5, split: str = "train", streaming: bool = False, seed: int = 0,
                        real_image_column: str = "image") -> Dataset | IterableDataset:
    """`mode="mix"` interleaves the two with `mix_ratio` the share of real rows (until the smaller ends)."""
    if mode not in DATA_MODES:
        raise ValueError(f"data mode must be one of {DATA_MODES}, got {mode!r}")
    parts = []
    if mode in ("synthetic", "mix"):
        if not synthetic:
            raise ValueError(f"data mode {mode!r} needs a synthetic (freeatm) dataset")
        parts.append(as_image_objects(_load(synthetic, split, streaming)))
    if mode in ("real", "mix"):
        if not real:
            raise ValueError(f"data mode {mode!r} needs a real dataset")
        parts.append(as_image_objects(_load(real, split, streaming), real_image_column))
    if len(parts) == 1:
        return parts[0]
    if not streaming:
        # Align the `objects` feature of the real part (an empty list) with the synthetic one.
        parts[1] = parts[1].cast_column("objects", parts[0].features["objects"])
    return interleave_datasets(parts, probabilities=[1 - mix_ratio, mix_ratio], seed=seed,
                               stopping_strategy="first_exhausted")

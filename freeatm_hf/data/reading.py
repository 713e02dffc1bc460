"""Pretraining data: a freeatm dataset (synthetic, with masks), a plain image dataset (real, no masks), or a
mix of both, as one `datasets` dataset with `image` and `objects` columns."""

import functools
import logging

from datasets import Dataset, Features, IterableDataset, List, interleave_datasets, load_dataset

logger = logging.getLogger(__name__)

DATA_MODES = ("synthetic", "real", "mix")
# A map-style row's index in the dataset it came from, and that dataset's place in `sources_read`: what an error
# about the row names (the mix's own index would point at no file).
ROW, SOURCE = "__row__", "__source__"


def load(source: str, split: str = "train", streaming: bool = False, **kwargs):
    """`load_dataset`, safe for local folders. `datasets` names the Arrow cache of a folder after its *name*
    and a hash that does not see the data files, so two folders both called `scenes` (another run's output,
    or the same folder regenerated) share one cache and the second load silently returns the first's rows.
    A local folder therefore gets a cache directory of its own, keyed by its resolved path and the size and
    modification time of every file in it: regenerated data is re-read, unchanged data stays cached."""
    import hashlib
    from pathlib import Path

    folder = Path(source)
    if looks_like_a_path(source) and not folder.exists():
        # Else `datasets` takes it for a Hub id: "Repo id must use alphanumeric chars" of `./scenes`, or the Hub
        # could not be asked for it, offline.
        raise FileNotFoundError(f"{source}: no such folder")
    if folder.is_dir() and not streaming and "cache_dir" not in kwargs:
        from datasets import config

        stats = sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                       for f in folder.rglob("*") if f.is_file() and ".freeatm" not in f.parts)
        key = hashlib.sha1(repr((str(folder.resolve()), stats)).encode()).hexdigest()[:16]
        kwargs["cache_dir"] = str(Path(config.HF_DATASETS_CACHE) / "freeatm_local" / key)
    try:
        return load_dataset(source, split=split, streaming=streaming, **kwargs)
    except ConnectionError as e:
        if folder.exists():
            raise
        # What `datasets` says of a mistyped folder offline is "Couldn't reach '…' on the Hub", as a traceback.
        raise FileNotFoundError(f"{source!r} is no folder here, and the Hub could not be asked for a dataset of that "
                                f"id ({e}): check the path (a folder `freeatm generate` wrote), or the id and the "
                                "network (HF_HUB_OFFLINE)") from e


def as_images(ds, column: str, where: str = "the dataset"):
    """`ds` with `column` read as images: a column of file paths (what a CSV or JSON Lines dataset holds), or of
    `{bytes, path}` written without the `datasets` schema, is cast to `datasets.Image`, which decodes each when
    read; a column of anything else is refused here, before a run that would crash on its first row. A column of
    unknown type (a stream that states no features) is left."""
    from datasets import Image, Value

    feature = (ds.features or {}).get(column)
    if feature is None or isinstance(feature, Image):
        return ds
    paths = isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    if paths or (isinstance(feature, dict) and set(feature) == {"bytes", "path"}):  # the latter: Arrow's own writers
        return ds.cast_column(column, Image())
    raise ValueError(f"column {column!r} of {where} holds {feature}, not images (nor paths to image files)")


def _load(source: str, split: str, streaming: bool):
    return load(source, split=split, streaming=streaming)


def _columns(ds) -> list[str]:
    """A dataset's columns, also for a streamed one that states only its features ([] when it states neither)."""
    return ds.column_names or list(ds.features or [])


def holds_attention_maps(feature) -> bool:
    """Whether an `objects` feature holds freeatm's attention maps, not another layout of the same name (the
    Hub's detection datasets: `{bbox: [...], category: [...]}`). Arrow's large list (what polars and pyarrow's
    large types write) counts: `as_image_objects` casts it to the plain list."""
    from datasets import LargeList, List

    inner = feature.feature if isinstance(feature, (List, LargeList)) else None
    return isinstance(inner, dict) and "attention" in inner


def as_image_objects(ds, image_column: str = "image", text_column: str = "prompt", features=None,
                     encoded: bool = False):
    """Keep `image`, `objects` and `prompt` (the caption); a dataset without freeatm `objects` (real data, a
    detection dataset's own `objects` included) gets an empty list per row, one without text an empty caption
    (typed as in `features`, when given, to mix with them). `encoded`: a stream's images are left encoded."""
    if ds.column_names is None and ds.features is None:
        raise ValueError("the streamed dataset does not state its columns or features; load it without --streaming, "
                         "or from Parquet, whose schema states them")
    cols = _columns(ds)
    if image_column not in cols:
        raise ValueError(f"no column {image_column!r} in the dataset (columns: {cols})")
    ds = as_images(ds, image_column)
    if encoded and isinstance(ds, IterableDataset):
        ds = ds.decode(False)  # before the `map` below, which would decode every image on its way
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    if text_column in cols and text_column != "prompt":
        ds = ds.rename_column(text_column, "prompt")
    foreign = "objects" in cols and ds.features is not None and not holds_attention_maps(ds.features["objects"])
    if foreign:
        logger.info("the dataset's own 'objects' column (%s) holds no attention masks: left out", ds.features["objects"])
    elif "objects" in cols and ds.features is not None and not isinstance(ds.features["objects"], List):
        # Rows of a large list read as the same dicts once cast; only the Arrow offsets' width differs.
        ds = ds.cast_column("objects", List(ds.features["objects"].feature))
    keep = ["image"] + [c for c in ("objects", "prompt") if (c in (ds.column_names or cols) and not
                                                             (c == "objects" and foreign)) or
                        (c == "prompt" and text_column in cols)]
    ds = ds.select_columns(keep)
    missing = {c: [] if c == "objects" else "" for c in ("objects", "prompt") if c not in keep}
    if isinstance(ds, Dataset):
        # Added as whole columns: `map` would decode and rewrite every image of a real dataset to add them.
        for name, value in missing.items():
            ds = ds.add_column(name, [value] * len(ds), feature=(features or {}).get(name))
        return ds
    if not missing:
        return ds
    # Typed up front: a streaming `map` without features leaves them unknown, and mixing would then have to
    # guess the type of every column from decoded rows (images included), which it cannot; nor could a trainer's
    # own `map` of the rows name the columns to drop (BLIP's kept the images, and the collator failed on them).
    # Without `features` to match (real data alone), the columns get a generated dataset's types.
    typed = None
    if ds.features is not None:
        from ..generate.schema import dataset_features

        like = {**dataset_features(), **(features or {})}
        typed = Features({**ds.features, **{name: like[name] for name in missing}})
    return ds.map(lambda row: missing, features=typed)


def pretraining_dataset(synthetic: str | None = None, real: str | None = None, mode: str = "synthetic",
                        mix_ratio: float = 0.5, split: str = "train", streaming: bool = False, seed: int = 0,
                        real_image_column: str = "image", real_text_column: str = "caption",
                        require_text: bool = False, source_rows: dict | None = None,
                        for_read_through: bool = False) -> Dataset | IterableDataset:
    """`mode="mix"` interleaves the two with `mix_ratio` the share of real rows (until the smaller ends).
    `require_text`: the real dataset must have `real_text_column` (BLIP learns from captions; the other methods
    do not read them). `source_rows`, when given, gets how many rows of the mix are generated and how many real
    (what a model card states; a stream's are unknown until read). `for_read_through`: rows as `read_through`
    reads them: a map-style dataset's numbered (`ROW`, `SOURCE`), to name a row it cannot read; a stream's images
    left encoded, for it to decode."""
    if mode not in DATA_MODES:
        raise ValueError(f"data mode must be one of {DATA_MODES}, got {mode!r}")
    parts = []
    if mode in ("synthetic", "mix"):
        if not synthetic:
            raise ValueError(f"data mode {mode!r} needs a freeatm dataset: give --dataset (a folder or Hub id "
                             "written by `freeatm generate`)")
        ds = _load(synthetic, split, streaming)
        cols = _columns(ds)
        if cols and not {"objects", "prompt"} <= set(cols):
            # Training on it would silently be the mask-free baseline (no objects) or caption-free BLIP.
            raise ValueError(f"{synthetic!r} is not a freeatm dataset (no 'objects' and 'prompt' columns; columns: "
                             f"{cols}): pass images without masks as --real_dataset with --data_mode real or mix")
        if ds.features is not None and not holds_attention_maps(ds.features["objects"]):
            # as_image_objects would leave such a column out as a detection dataset's: the mask-free baseline again.
            raise ValueError(f"the 'objects' column of {synthetic!r} is not freeatm's (a list of objects, each with "
                             f"'attention'; got {ds.features['objects']}): write it with freeatm_hf.generate.schema's "
                             "dataset_features, or pass it as --real_dataset with --data_mode real or mix")
        ds = as_image_objects(ds, encoded=for_read_through)
        parts.append(_numbered(ds, len(parts)) if for_read_through else ds)
    if mode in ("real", "mix"):
        if not real:
            raise ValueError(f"data mode {mode!r} needs a real dataset")
        ds = _load(real, split, streaming)
        cols = _columns(ds)
        if require_text and cols and real_text_column not in cols:
            raise ValueError(f"no caption column {real_text_column!r} in {real!r} (columns: {cols}): BLIP learns from "
                             "captions; name it with --real_text_column")
        ds = as_image_objects(ds, real_image_column, real_text_column, features=parts[0].features if parts else None,
                              encoded=for_read_through)
        parts.append(_numbered(ds, len(parts)) if for_read_through else ds)
    if len(parts) == 1:
        return parts[0]
    # Align what still differs (say a caption column of another type); `cast` of the whole table would copy
    # every real image into a new cache file.
    from datasets import LargeList, Sequence

    lists = (List, LargeList, Sequence)
    real_caption = parts[1].features["prompt"]
    if isinstance(real_caption, lists) and not isinstance(parts[0].features["prompt"], lists):
        # A list column cannot be cast to one string per row; mapping either side would rewrite all its images.
        raise ValueError(f"the captions of {real!r} ({real_text_column!r}) are lists, several per image, and the "
                         "generated rows have one prompt each: mixing needs one caption per row (--data_mode real "
                         "draws one of a list per epoch; or keep one caption per image in the real dataset)")
    for name, feature in parts[0].features.items():
        if parts[1].features[name] != feature:
            parts[1] = parts[1].cast_column(name, feature)
    parts[1] = parts[1].select_columns(list(parts[0].features))
    mix = dict(probabilities=[1 - mix_ratio, mix_ratio], seed=seed, stopping_strategy="first_exhausted")
    if isinstance(parts[0], Dataset):
        # The mix ends where one source runs out and takes each source's rows in order: in the sources' own order
        # the larger one gave its first rows only (a class-sorted image folder: its first classes). Shuffled (an
        # index mapping in memory: no row is rewritten), its rows in the mix are a uniform draw of all of them.
        parts = [p.shuffle(seed=seed + i, keep_in_memory=True) for i, p in enumerate(parts)]
    mixed = interleave_datasets(parts, **mix)
    if isinstance(mixed, Dataset):
        import pyarrow as pa
        import pyarrow.compute as pc

        # The same draw over two columns of flags the size of the two datasets: which rows are real (the mix
        # stops where the smaller runs out, so the share alone does not say how many of each it holds). Read off
        # the row indices the draw selected (real ones past the generated), or the one slice it kept.
        flags = interleave_datasets([Dataset(pa.table({"real": pa.repeat(pa.scalar(False), len(parts[0]))})),
                                     Dataset(pa.table({"real": pa.repeat(pa.scalar(True), len(parts[1]))}))], **mix)
        real_rows = (pc.sum(flags.data.column("real")) if flags._indices is None else
                     pc.sum(pc.greater_equal(flags._indices.column(0), len(parts[0])))).as_py() or 0
        counts = {"synthetic_rows": len(mixed) - real_rows, "real_rows": real_rows}
        logger.info("mix: %d generated and %d real rows (--mix_ratio %s, until the smaller ran out)",
                    counts["synthetic_rows"], real_rows, mix_ratio)
        if source_rows is not None:
            source_rows.update(counts)
    return mixed


def sources_read(synthetic: str | None, real: str | None, mode: str) -> list[str]:
    """The datasets `pretraining_dataset` reads in `mode`, in the order of its `SOURCE` numbers."""
    return [s for s, read in ((synthetic, mode != "real"), (real, mode != "synthetic")) if read]


def _numbered(ds, source: int):
    """`ds` with each row's index in it (`ROW`) and `source` (`SOURCE`); a stream is left as it is (its index as
    read would be one worker's count, not the row's place in the dataset)."""
    import numpy as np
    from datasets import Value

    if not isinstance(ds, Dataset):
        return ds
    ds = ds.add_column(ROW, np.arange(len(ds), dtype=np.int64), feature=Value("int64"))
    return ds.add_column(SOURCE, np.full(len(ds), source, np.int8), feature=Value("int8"))


def _decoding(feature, decode: bool):
    """`feature` with every `datasets.Image` in it, nested ones included, set to `decode` or not."""
    from datasets import Image, LargeList

    if isinstance(feature, Image):
        return Image(mode=feature.mode, decode=decode)
    if isinstance(feature, dict):
        return {k: _decoding(v, decode) for k, v in feature.items()}
    if isinstance(feature, List):
        return List(_decoding(feature.feature, decode), length=feature.length)
    if isinstance(feature, LargeList):
        return LargeList(_decoding(feature.feature, decode))
    return feature


def read_through(ds, transform, sources: list[str]):
    """`ds` read through `transform` (a batch of decoded rows → a batch of model inputs), lazily: on access (a
    map-style dataset), or as a stream is read.

    The rows' images (and attention maps) are decoded here, row by row, before `transform`: decoded by `datasets`
    itself, a corrupt or truncated file failed deep in PIL, inside a DataLoader worker, naming neither the row nor
    its dataset. A row that cannot be decoded, or that `transform` refuses, is named in a ValueError (its dataset
    of `sources`, its index there for a map-style dataset `pretraining_dataset(for_read_through=True)` numbered, the
    image's file when it has one), the original error chained. A stream read so should come from
    `pretraining_dataset(for_read_through=True)` too: one whose own `map` decoded its images fails there, unnamed."""
    import copy

    features = ds.features
    if features is None:  # a stream that states no features: `datasets` decodes what it finds, unnamed
        return ds.map(_naming(transform, sources, None), batched=True, remove_columns=["image", "objects", "prompt"])
    plain = Features({k: _decoding(v, False) for k, v in features.items()})
    if isinstance(ds, IterableDataset):
        read = ds.decode(False)
    else:
        # Only the decode flags differ, not the Arrow types: the table is kept as it is (`cast` would write every
        # image into a new cache file), as `cast_column` keeps it for a top-level image.
        read = copy.copy(ds)
        read._info = copy.deepcopy(ds.info)
        read._info.features = plain
    decoding = Features({k: _decoding(v, True) for k, v in features.items()})  # a stream's may come encoded
    decode = functools.partial(decoding.decode_example, token_per_repo_id=getattr(ds, "_token_per_repo_id", None))
    naming = _naming(transform, sources, decode)
    if isinstance(ds, IterableDataset):
        return read.map(naming, batched=True, remove_columns=list(features))
    return read.with_transform(naming)


def _naming(transform, sources: list[str], decode):
    # A partial of a module-level function, not a closure: data workers started by spawn or forkserver (macOS,
    # Windows, Python 3.14 on Linux) get the dataset, this included, by pickling.
    return functools.partial(_read_named, transform=transform, sources=sources, decode=decode)


def _where(batch: dict, i: int, sources: list[str]) -> str:
    image = batch.get("image", [None] * (i + 1))[i]
    path = image.get("path") if isinstance(image, dict) else None
    if ROW in batch:
        said = f"row {batch[ROW][i]} of {sources[batch[SOURCE][i]]!r}"
    else:
        said = "a row of " + " or ".join(map(repr, sources))
    return said + (f" (image {path})" if path else "")


def _read_named(batch: dict, transform, sources: list[str], decode) -> dict:
    names = {k: batch.pop(k) for k in (ROW, SOURCE) if k in batch}
    n = len(next(iter(batch.values()), []))
    if decode is not None:
        rows = []
        for i in range(n):
            try:
                rows.append(decode({k: v[i] for k, v in batch.items()}))
            except Exception as e:
                raise ValueError(f"{_where({**batch, **names}, i, sources)} cannot be decoded ({type(e).__name__}: "
                                 f"{e}): replace or leave out its file") from e
        batch = {k: [r[k] for r in rows] for k in batch}
    try:
        return transform(batch)
    except Exception:
        # Which row: each alone, only once the batch has failed.
        for i in range(n):
            try:
                transform({k: v[i : i + 1] for k, v in batch.items()})
            except Exception as e:
                raise ValueError(f"{_where({**batch, **names}, i, sources)}: {type(e).__name__}: {e}") from e
        raise


def freeatm_card_block(source: str | None) -> dict:
    """The `freeatm:` block of a dataset card's YAML (a local folder or a Hub id), or {} for another dataset, an
    older card, or a Hub repo out of reach."""
    if not source:
        return {}
    from pathlib import Path

    if Path(source).exists():
        readme = Path(source) / "README.md"
        # A local folder without a card has no block: never ask the Hub about a name that is a folder here.
        return _card_block(str(readme)) if readme.is_file() else {}
    return _cached_hub_card_block(source)


def _card_block(source: str) -> dict:
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(source, repo_type="dataset")
    except Exception:  # no card, not a repo id, offline without a cached card
        return {}
    return dict(card.data.to_dict().get("freeatm") or {})


@functools.lru_cache(maxsize=64)
def _cached_hub_card_block(repo_id: str) -> dict:
    # Asked once per process: a model card is written at every checkpoint save.
    return _card_block(repo_id)


def generation_settings(source: str | None) -> dict:
    """The settings a freeatm dataset was generated with (its card's `freeatm.generation`), or {}."""
    return dict(freeatm_card_block(source).get("generation") or {})


def looks_like_a_path(source: str) -> bool:
    """A name that can only be a place on some machine (absolute, relative with ./ or ../, home, Windows, or of
    more than two parts), never a Hub id (`name` or `owner/name`): a card written elsewhere must not take it for
    one, and a missing one is "no such folder", not a malformed repo id."""
    return (source.startswith(("/", ".", "~", "\\")) or "\\" in source or (len(source) > 1 and source[1] == ":")
            or source.count("/") > 1)


def recorded_source(source: str | None) -> str | None:
    """How a dataset is written into a checkpoint's facts: a local folder by its absolute path (so that a card
    rendered later, from another directory, still finds it, or knows it for a path), a Hub id as it is."""
    from pathlib import Path

    return str(Path(source).resolve()) if source and Path(source).exists() else source


def pinned_revision(source: str, revision: str | None = None) -> str | None:
    """The commit a Hub dataset id resolves to at `revision` (a branch or tag; None: the default branch), asked of
    the Hub once before loading, so that the rows evaluated and the revision recorded with their results are one
    commit (`"revision": null` named no data at all). None for a local folder, which has no revisions (one given
    with it is refused); `revision` as given when the Hub cannot be asked (offline, the cache answers for it)."""
    from pathlib import Path

    if Path(source).exists():
        if revision is not None:  # `datasets` reads a local folder as it is: the results would name a revision
            raise ValueError(f"--revision {revision}: {source} is a local folder, which has no revisions (a Hub "
                             "dataset id has)")
        return None
    if not hub_dataset_id(source):
        return revision
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(source, revision=revision).sha or revision
    except Exception as e:  # the load that follows says what is wrong with the id, in its own words
        logger.info("%s: the commit of revision %s is not known (%s); recorded as given", source, revision or "main",
                    e)
        return revision


def hub_dataset_id(source: str | None) -> str | None:
    """The Hub id to name a dataset by in a public card: the id as given, or the repo a local folder was pushed
    to (`freeatm push` notes it in the folder); None for a local folder never pushed, or a path to a folder
    that is not here, whose place on the training machine means nothing to a reader."""
    from pathlib import Path

    from huggingface_hub.utils import validate_repo_id

    if not source:
        return None
    if Path(source).exists():
        from ..hub.push import pushed_repo

        return pushed_repo(source)
    if looks_like_a_path(source):
        return None
    try:
        validate_repo_id(source)
    except Exception:
        return None
    return source


def dataset_threshold(source: str | None, default: float = 0.4) -> float | str:
    """The mask threshold the dataset's boxes use (what its card states), so training masks match them."""
    t = generation_settings(source).get("threshold")
    if t is None:
        return default
    return "otsu" if t == "otsu" else float(t)

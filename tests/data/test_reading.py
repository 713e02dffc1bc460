import numpy as np
import pytest
import torch

from freeatm_hf.data.masks import row_masks
from freeatm_hf.data.reading import dataset_threshold, generation_settings


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from freeatm_hf import cli

    out = tmp_path_factory.mktemp("gen") / "ds"
    cli.main(["generate", "--output_dir", str(out), "--pipeline", "tiny", "--num_images", "2", "--batch_size", "2",
              "--num_inference_steps", "1", "--threshold", "0.55", "--device", "cpu"])
    return out


def test_the_card_carries_the_generation_settings_for_training(generated, shapes_data):
    settings = generation_settings(str(generated))
    assert settings["pipeline"] == "tiny" and settings["num_images"] == 2
    assert dataset_threshold(str(generated)) == 0.55
    # A dataset without a freeatm card, or a Hub id out of reach: the default.
    assert dataset_threshold(shapes_data) == 0.4 and dataset_threshold("nobody/nothing", default=0.3) == 0.3


def test_contrastive_training_masks_use_the_datasets_threshold_unless_given(generated):
    from freeatm_hf.train.contrastive import ContrastiveArguments, make_transform

    args = ContrastiveArguments(dataset=str(generated))
    make_transform(args)
    assert args.mask_threshold == 0.55
    args = ContrastiveArguments(dataset=str(generated), mask_threshold=0.3)
    make_transform(args)
    assert args.mask_threshold == 0.3


def test_otsu_row_masks_cut_each_map_between_its_modes():
    from PIL import Image

    from freeatm_hf.masks import binarize, resize_map

    low = np.full((8, 8), 20, np.uint8)
    low[2:6, 1:4] = 200  # one object: a bright block on a dim field
    high = np.full((8, 8), 120, np.uint8)
    high[5:, 5:] = 250  # another: a brighter block on a much brighter field than the fixed 0.4 would allow
    objects = [{"attention": Image.fromarray(m)} for m in (low, high)]
    got = row_masks({"objects": objects}, (16, 16), "otsu")
    assert got.shape == (2, 16, 16)
    for mask, m in zip(got, (low, high)):
        expected = binarize(resize_map(m / 255.0, (16, 16)), "otsu")
        assert 0 < mask.sum() < 256
        assert np.abs(mask.numpy().astype(bool) ^ expected).mean() < 0.02  # up to bilinear vs the map's resize
    # The fixed threshold would take all of the second map's field.
    assert torch.equal(row_masks({"objects": objects[1:]}, (16, 16), 0.4)[0], torch.ones(16, 16))


def test_two_local_folders_with_the_same_name_are_not_served_from_one_cache(tmp_path):
    """`datasets` keys the Arrow cache of a folder whose card lists `configs` by the folder's name, blind to the
    files: a second `scenes` folder (another run, or the same one regenerated) came back with the first's rows."""
    import os
    import shutil

    from datasets import Dataset

    from freeatm_hf.data.reading import load

    def write(folder, prompts):
        (folder / "data").mkdir(parents=True)
        Dataset.from_dict({"prompt": prompts}).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
        # The card's `configs` (as freeatm's dataset cards have) is what makes the cache blind to the files.
        (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                          "    path: data/train-*\n---\n")

    write(tmp_path / "a" / "scenes", ["first", "run"])
    write(tmp_path / "b" / "scenes", ["second", "run", "here"])
    assert load(str(tmp_path / "a" / "scenes"))["prompt"] == ["first", "run"]
    assert load(str(tmp_path / "b" / "scenes"))["prompt"] == ["second", "run", "here"]
    # Regenerated in place: read again, not the cached first version.
    shutil.rmtree(tmp_path / "a" / "scenes")
    write(tmp_path / "a" / "scenes", ["regenerated"])
    assert load(str(tmp_path / "a" / "scenes"))["prompt"] == ["regenerated"]
    # Regenerated again into files of the very same sizes (one letter changed): the modification time tells.
    shard = tmp_path / "a" / "scenes" / "data" / "train-00000-of-00001.parquet"
    size, mtime = shard.stat().st_size, shard.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "a" / "scenes")
    write(tmp_path / "a" / "scenes", ["regeneratee"])
    assert shard.stat().st_size == size
    os.utime(shard, ns=(mtime + 10**9, mtime + 10**9))  # a later write, whatever the file system's clock resolution
    assert load(str(tmp_path / "a" / "scenes"))["prompt"] == ["regeneratee"]


def test_the_cards_advice_for_a_folder_regenerated_in_place_reads_the_new_rows(tmp_path):
    """What the dataset card tells users who load with plain `datasets`, checked against `datasets` itself."""
    from datasets import Dataset, load_dataset

    folder = tmp_path / "scenes"

    def write(prompts):
        (folder / "data").mkdir(parents=True, exist_ok=True)
        Dataset.from_dict({"prompt": prompts}).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
        (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                          "    path: data/train-*\n---\n")

    cache = str(tmp_path / "cache")
    write(["first"])
    assert load_dataset(str(folder), split="train", cache_dir=cache)["prompt"] == ["first"]
    write(["second", "run"])
    fresh = load_dataset(str(folder), split="train", cache_dir=cache, download_mode="force_redownload",
                         verification_mode="no_checks")
    assert fresh["prompt"] == ["second", "run"]



@pytest.mark.parametrize("streaming", [False, True])
def test_a_detection_datasets_own_objects_column_is_not_taken_for_masks(tmp_path, streaming):
    """The Hub's detection layout also names a column `objects` ({bbox, category}): as real data its rows have
    no attention masks, and mixing keeps the synthetic rows' own."""
    from datasets import Dataset, Features, Image, List, Value
    from PIL import Image as PILImage

    from freeatm_hf.data.reading import pretraining_dataset
    from freeatm_hf.spaces import space_dir

    synthetic = str(space_dir() / "example_dataset")
    real = tmp_path / "cppe"
    (real / "data").mkdir(parents=True)
    features = Features({"image": Image(), "objects": {"bbox": List(List(Value("float32"))),
                                                       "category": List(Value("int64"))}})
    rows = [{"image": PILImage.new("RGB", (32, 32), (i * 40, 0, 0)),
             "objects": {"bbox": [[1.0, 2.0, 30.0, 40.0]], "category": [3]}} for i in range(4)]
    Dataset.from_list(rows, features=features).to_parquet(str(real / "data" / "train.parquet"))
    only_real = list(pretraining_dataset(real=str(real), mode="real", streaming=streaming))
    assert [r["objects"] for r in only_real] == [[]] * 4
    mixed = list(pretraining_dataset(synthetic, str(real), mode="mix", mix_ratio=0.5, streaming=streaming))
    assert sum(r["objects"] == [] for r in mixed) == 4
    assert all("attention" in o for r in mixed for o in r["objects"])


@pytest.mark.parametrize("streaming", [False, True])
def test_a_large_list_objects_column_keeps_its_masks(tmp_path, streaming):
    """The same rows written with Arrow's large list (polars, pyarrow's large types) read as the same objects."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freeatm_hf.data.reading import pretraining_dataset
    from freeatm_hf.spaces import space_dir

    source = space_dir() / "example_dataset"
    table = pa.concat_tables(pq.read_table(p) for p in sorted((source / "data").glob("*.parquet")))
    large = pa.large_list(table.schema.field("objects").type.value_type)
    table = table.set_column(table.schema.get_field_index("objects"), "objects", table["objects"].cast(large))
    (tmp_path / "large" / "data").mkdir(parents=True)
    pq.write_table(table.replace_schema_metadata(None), str(tmp_path / "large" / "data" / "train.parquet"))
    want = [[(o["name"], o["bbox"]) for o in r["objects"]] for r in pretraining_dataset(str(source))]
    got = [[(o["name"], o["bbox"]) for o in r["objects"]]
           for r in pretraining_dataset(str(tmp_path / "large"), streaming=streaming)]
    assert got == want and sum(map(len, got)) > 0


@pytest.mark.parametrize("streaming", [False, True])
def test_a_synthetic_dataset_whose_objects_hold_no_attention_is_refused(tmp_path, streaming):
    """A column of struct-of-lists (`Sequence({...})`, the datasets<4 idiom) would be left out as a detection
    layout: every row the mask-free baseline, silently."""
    from datasets import Dataset, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    from freeatm_hf.data.reading import pretraining_dataset

    features = Features({"image": Image(), "prompt": Value("string"),
                         "objects": Sequence({"name": Value("string"), "attention": Image()})})
    rows = {"image": [PILImage.new("RGB", (32, 32))] * 2, "prompt": ["a dog"] * 2,
            "objects": [{"name": ["dog"], "attention": [PILImage.new("L", (8, 8), 255)]}] * 2}
    (tmp_path / "old" / "data").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "old" / "data" / "train.parquet"))
    with pytest.raises(ValueError, match="'objects' column .* is not freeatm's"):
        pretraining_dataset(str(tmp_path / "old"), streaming=streaming)


def test_a_mistyped_folder_is_named_as_missing_not_a_hub_connection_traceback(tmp_path, monkeypatch):
    from freeatm_hf.data.reading import load

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'scenes-typo' is no folder here, and the Hub could not be asked"):
        load("scenes-typo")


@pytest.mark.parametrize("source", ["./scenes-typo", "outputs/run/scenes", "/no/such/scenes"])
def test_a_path_that_is_not_there_is_no_such_folder_not_a_malformed_hub_id(tmp_path, monkeypatch, source):
    """`./scenes` can only be a folder: `datasets` called it a repo id that "must use alphanumeric chars"."""
    from freeatm_hf.data.reading import load

    monkeypatch.chdir(tmp_path)
    for streaming in (False, True):
        with pytest.raises(FileNotFoundError, match=rf"^{source}: no such folder$"):
            load(source, streaming=streaming)


def test_a_real_image_column_of_file_paths_is_read_as_images_and_any_other_type_is_refused(tmp_path):
    """A CSV or JSON Lines dataset names its images by path: the rows crashed at the first `.convert`."""
    import json

    from PIL import Image as PILImage

    from freeatm_hf.data.reading import pretraining_dataset

    real = tmp_path / "photos"
    real.mkdir()
    with open(real / "train.jsonl", "w") as f:
        for i in range(3):
            PILImage.new("RGB", (24, 16), (80 * i, 10, 10)).save(real / f"{i}.png")
            f.write(json.dumps({"image": str(real / f"{i}.png"), "caption": f"photo {i}", "n": i}) + "\n")
    ds = pretraining_dataset(real=str(real), mode="real")
    rows = list(ds)
    assert [r["image"].size for r in rows] == [(24, 16)] * 3
    assert [r["image"].getpixel((0, 0)) for r in rows] == [(0, 10, 10), (80, 10, 10), (160, 10, 10)]
    with pytest.raises(ValueError, match="column 'n' of the dataset holds Value"):
        pretraining_dataset(real=str(real), mode="real", real_image_column="n")


def test_a_streamed_real_dataset_states_its_columns(tmp_path):
    """Real data alone, streamed: the added `objects` column left the stream without features, so BLIP's `map` of
    its rows could not name the columns to drop and kept the images (the collator then failed on the first batch)."""
    import json

    from PIL import Image as PILImage

    from freeatm_hf.data.reading import pretraining_dataset

    real = tmp_path / "photos"
    (real / "train").mkdir(parents=True)
    with open(real / "train" / "metadata.jsonl", "w") as f:
        for i in range(3):
            PILImage.new("RGB", (16, 16), (80 * i, 0, 0)).save(real / "train" / f"{i}.jpg")
            f.write(json.dumps({"file_name": f"{i}.jpg", "text": f"photo {i}"}) + "\n")
    ds = pretraining_dataset(real=str(real), mode="real", streaming=True, real_text_column="text", require_text=True)
    assert ds.features is not None and set(ds.features) == {"image", "objects", "prompt"}
    assert [(r["prompt"], r["objects"]) for r in ds] == [(f"photo {i}", []) for i in range(3)]
    mapped = ds.map(lambda b: {"n": [len(p) for p in b["prompt"]]}, batched=True, remove_columns=list(ds.features))
    assert list(mapped) == [{"n": 7}] * 3


def test_mixing_generated_rows_with_caption_lists_is_refused_by_name(tmp_path):
    """A list column cannot be cast to the generated rows' one prompt: it failed inside Arrow's cast."""
    import json

    from PIL import Image as PILImage

    from freeatm_hf.data.reading import pretraining_dataset
    from freeatm_hf.spaces import space_dir

    real = tmp_path / "coco"
    real.mkdir()
    with open(real / "train.jsonl", "w") as f:
        for i in range(3):
            PILImage.new("RGB", (16, 16)).save(real / f"{i}.png")
            f.write(json.dumps({"image": str(real / f"{i}.png"), "caption": ["a photo", "a picture"]}) + "\n")
    with pytest.raises(ValueError, match="are lists, several per image"):
        pretraining_dataset(str(space_dir() / "example_dataset"), str(real), mode="mix", require_text=True)
    assert len(pretraining_dataset(real=str(real), mode="real", require_text=True)) == 3


def test_the_dataset_threshold_is_the_one_its_card_states(tmp_path):
    from freeatm_hf.data.reading import dataset_threshold

    for stated, expected in (("otsu", "otsu"), ("0.3", 0.3), (0.55, 0.55)):
        folder = tmp_path / str(stated)
        folder.mkdir()
        value = f"'{stated}'" if isinstance(stated, str) else stated  # a YAML string, or a YAML number
        (folder / "README.md").write_text(f"---\nfreeatm:\n  generation:\n    threshold: {value}\n---\n")
        assert dataset_threshold(str(folder)) == expected
    (tmp_path / "bare").mkdir()
    assert dataset_threshold(str(tmp_path / "bare"), default=0.45) == 0.45  # no card: the default


def test_mix_ratio_is_the_share_of_real_rows(tmp_path):
    from datasets import Dataset
    from PIL import Image as PILImage

    from freeatm_hf.data.reading import pretraining_dataset
    from freeatm_hf.generate.schema import dataset_features

    image = PILImage.new("RGB", (2, 2))
    for name, rows, features in (
            ("synthetic", [{"image": image, "prompt": "synthetic", "label": -1, "objects": [], "truncated_objects": [],
                            "seed": i} for i in range(300)], dataset_features()),
            ("real", [{"image": image, "caption": "real"} for _ in range(300)], None)):
        (tmp_path / name / "data").mkdir(parents=True)
        Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / name / "data" / "train.parquet"))
    mixed = pretraining_dataset(str(tmp_path / "synthetic"), str(tmp_path / "real"), mode="mix", mix_ratio=0.2)
    prompts = mixed["prompt"]
    assert prompts.count("synthetic") >= 299  # the synthetic rows run out first
    assert prompts.count("real") / len(prompts) == pytest.approx(0.2, abs=0.05)


def test_a_mix_draws_its_real_rows_from_the_whole_real_dataset_not_its_head(tmp_path):
    """The mix stops where the smaller source runs out; interleaving in the sources' own order then took the first
    rows of the larger one every time: mixed with 10k generated rows, an ImageNet folder (sorted by class) gave
    its first ~10k images, a handful of classes, and none of the rest."""
    from datasets import Dataset
    from PIL import Image as PILImage

    from freeatm_hf.data.reading import ROW, SOURCE, pretraining_dataset
    from freeatm_hf.generate.schema import dataset_features

    image = PILImage.new("RGB", (2, 2))
    for name, rows, features in (
            ("synthetic", [{"image": image, "prompt": f"synthetic {i}", "label": -1, "objects": [],
                            "truncated_objects": [], "seed": i} for i in range(20)], dataset_features()),
            ("real", [{"image": image, "caption": f"real {i}"} for i in range(400)], None)):
        (tmp_path / name / "data").mkdir(parents=True)
        Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / name / "data" / "train.parquet"))
    counts = {}
    mixed = pretraining_dataset(str(tmp_path / "synthetic"), str(tmp_path / "real"), mode="mix", mix_ratio=0.5,
                                source_rows=counts, for_read_through=True)
    real = [int(p.split()[1]) for p in mixed["prompt"] if p.startswith("real")]
    synthetic = [int(p.split()[1]) for p in mixed["prompt"] if p.startswith("synthetic")]
    assert sorted(synthetic) == list(range(20)) and len(set(real)) == len(real) == counts["real_rows"] >= 10
    # A uniform draw of ~20 of 400 rows: all of them among the first 100 has a chance of about 4^-20.
    assert max(real) >= 100
    # Each row still names its own place in its own dataset.
    assert all(int(p.split()[1]) == row for p, row in zip(mixed["prompt"], mixed[ROW]))
    assert [p.startswith("real") for p in mixed["prompt"]] == [s == 1 for s in mixed[SOURCE]]


def test_only_a_list_of_objects_with_attention_maps_is_taken_for_freeatms():
    from datasets import Image, LargeList, List, Value

    from freeatm_hf.data.reading import holds_attention_maps
    from freeatm_hf.generate.schema import dataset_features

    objects = dataset_features()["objects"]
    assert holds_attention_maps(objects) and holds_attention_maps(LargeList(objects.feature))
    # A list of boxes per object, but no maps (a detection layout written as a list of structs): not freeatm's.
    assert not holds_attention_maps(List({"bbox": List(Value("float32")), "category": Value("int64")}))
    assert not holds_attention_maps({"bbox": List(List(Value("float32"))), "attention": List(Image())})


def test_a_synthetic_dataset_without_prompts_is_refused(tmp_path):
    """Masks but no prompt column: BLIP would silently learn from empty captions."""
    from datasets import Dataset, Features
    from PIL import Image as PILImage

    from freeatm_hf.data.reading import pretraining_dataset
    from freeatm_hf.generate.schema import dataset_features

    features = Features({k: v for k, v in dataset_features().items() if k in ("image", "objects")})
    (tmp_path / "noprompt" / "data").mkdir(parents=True)
    Dataset.from_list([{"image": PILImage.new("RGB", (2, 2)), "objects": []}], features=features).to_parquet(
        str(tmp_path / "noprompt" / "data" / "train.parquet"))
    with pytest.raises(ValueError, match=r"not a freeatm dataset \(no 'objects' and 'prompt' columns"):
        pretraining_dataset(str(tmp_path / "noprompt"))


def test_a_dataset_is_named_in_a_card_by_hub_id_never_by_a_place_on_some_machine(tmp_path, monkeypatch):
    from freeatm_hf.data.reading import hub_dataset_id, looks_like_a_path, recorded_source

    monkeypatch.chdir(tmp_path)  # none of the names below is a folder here
    for path in ("/data/scenes", "./scenes", "../scenes", ".", "~/scenes", "C:\\data", "C:/data", "data\\scenes",
                 "runs/simclr/final"):
        assert looks_like_a_path(path) and hub_dataset_id(path) is None, path
    for repo in ("user/scenes", "scenes"):
        assert not looks_like_a_path(repo) and hub_dataset_id(repo) == repo
    # A local folder is recorded by its absolute path, from wherever it was named; a Hub id as it is.
    (tmp_path / "scenes").mkdir()
    assert recorded_source("scenes") == str((tmp_path / "scenes").resolve())
    assert recorded_source("user/other") == "user/other" and recorded_source(None) is None


def test_a_revision_of_a_local_folder_is_refused_and_none_is_none(tmp_path):
    """`datasets` reads a local folder as it is: a --revision given with one was recorded with the results as if
    the rows were read at it."""
    from freeatm_hf.data.reading import pinned_revision

    with pytest.raises(ValueError, match=r"--revision v2: .* is a local folder, which has no revisions"):
        pinned_revision(str(tmp_path), "v2")
    assert pinned_revision(str(tmp_path)) is None
    assert pinned_revision("me/not-here", "v3") == "v3"  # offline (the tests' HF_HUB_OFFLINE): kept as given


def _png(array) -> bytes:
    import io

    from PIL import Image as PILImage

    out = io.BytesIO()
    PILImage.fromarray(array).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("streaming", [False, True])
def test_an_undecodable_image_or_map_is_named_by_its_row_and_dataset(tmp_path, streaming):
    """`datasets` decoded a corrupt or truncated file deep in PIL, inside a DataLoader worker: the error named
    neither the row nor the dataset. Each is named now, the original error chained."""
    from datasets import Dataset, Features, Image, Value
    from PIL import UnidentifiedImageError

    from freeatm_hf.data.reading import pretraining_dataset, read_through, sources_read
    from freeatm_hf.generate.schema import dataset_features

    good, mask = _png(np.full((16, 16, 3), 90, np.uint8)), _png(np.full((8, 8), 255, np.uint8))
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    rows = [{"image": {"bytes": good, "path": None}, "prompt": "a dog", "label": -1, "truncated_objects": [],
             "seed": i, "objects": [{"name": "dog", "token_indices": [1], "bbox": [0, 0, 8, 8], "area": 0.25,
                                     "attention_peak": 0.5,
                                     "attention": {"bytes": mask[: len(mask) // 2] if i == 2 else mask, "path": None}}]}
            for i in range(4)]
    (synthetic / "data").mkdir(parents=True)
    Dataset.from_list(rows, features=dataset_features()).to_parquet(str(synthetic / "data" / "train.parquet"))
    (real / "data").mkdir(parents=True)
    photos = [{"img": {"bytes": b"no image" if i == 1 else good, "path": None}, "caption": "a cat"} for i in range(4)]
    Dataset.from_list(photos, features=Features({"img": Image(), "caption": Value("string")})).to_parquet(
        str(real / "data" / "train.parquet"))

    def sizes(batch):
        return {"size": [im.size for im in batch["image"]], "maps": [len(o) for o in batch["objects"]]}

    def read_all(mode, **kw):
        ds = pretraining_dataset(str(synthetic), str(real), mode=mode, real_image_column="img", streaming=streaming,
                                 for_read_through=True, **kw)
        ds = read_through(ds, sizes, sources_read(str(synthetic), str(real), mode))
        return list(ds) if streaming else [ds[i] for i in range(len(ds))]

    row = "a row" if streaming else "row 1"
    with pytest.raises(ValueError, match=rf"{row} of '{real}' cannot be decoded \(UnidentifiedImageError") as e:
        read_all("real")
    assert isinstance(e.value.__cause__, UnidentifiedImageError)
    row = "a row" if streaming else "row 2"
    with pytest.raises(ValueError, match=rf"{row} of '{synthetic}' cannot be decoded \(") as e:  # its map
        read_all("synthetic")
    assert isinstance(e.value.__cause__, OSError)
    # In a mix the row is named by its place in its own dataset, not in the mix.
    with pytest.raises(ValueError, match=rf"row 1 of '{real}'" if not streaming else "a row of .* cannot be decoded"):
        read_all("mix", mix_ratio=0.9)
    # The rows that decode are read as before: each image, with its maps, decoded.
    (real / "data" / "train.parquet").unlink()
    Dataset.from_list([{"img": {"bytes": good, "path": None}, "caption": "a cat"}] * 2).cast_column(
        "img", Image()).to_parquet(str(real / "data" / "train.parquet"))
    assert read_all("real") == [{"size": (16, 16), "maps": 0}] * 2


def test_a_row_a_transform_refuses_is_named_by_its_row_and_dataset(shapes_data):
    from freeatm_hf.data.reading import pretraining_dataset, read_through

    prompts = pretraining_dataset(shapes_data)["prompt"]
    refused = prompts[1]

    def picky(batch):
        if refused in batch["prompt"]:
            raise KeyError("no")
        return {"n": [len(p) for p in batch["prompt"]]}

    ds = read_through(pretraining_dataset(shapes_data, for_read_through=True), picky, [shapes_data])
    with pytest.raises(ValueError, match=rf"row {prompts.index(refused)} of '{shapes_data}': KeyError") as e:
        ds[[0, 1, 2]]
    assert isinstance(e.value.__cause__, KeyError)

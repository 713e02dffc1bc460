"""Generate → Hub-layout folder → plain `datasets.load_dataset` in a process that never imports freeatm_hf."""

import json
import subprocess
import sys

import numpy as np
import pytest

from freeatm_hf.generate import FreeATMGenerator, GenerateConfig
from freeatm_hf.generate.run import PromptSource, generate_dataset

READER = r"""
import json, sys
import numpy as np
from datasets import load_dataset
ds = load_dataset(sys.argv[1], split="train")
assert "freeatm_hf" not in sys.modules, "the reader must not need freeatm_hf"
rows = []
for r in ds:
    rows.append({
        "prompt": r["prompt"], "label": r["label"], "seed": r["seed"],
        "image": np.asarray(r["image"]).tolist(),
        "objects": [{"name": o["name"], "token_indices": o["token_indices"], "bbox": o["bbox"], "area": o["area"],
                     "attention_peak": o["attention_peak"], "attention": np.asarray(o["attention"]).tolist(), "mode": o["attention"].mode}
                    for o in r["objects"]],
        "truncated": r["truncated_objects"],
    })
print(json.dumps({"features": sorted(ds.features), "label_names": ds.features["label"].names[:3], "rows": rows}))
"""


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "scenes"
    # The random tiny SD with ImageNet scene prompts (the shapes model's own round trip: tests/toy/test_train_t2i.py).
    # A seed other than 0: image i is made with seed + i.
    cfg = GenerateConfig(output_dir=str(out), pipeline="tiny", num_images=5, batch_size=2, rows_per_shard=2,
                         num_inference_steps=3, device="cpu", seed=3)
    generate_dataset(cfg)
    return cfg, out


def test_layout_is_the_hub_repo_layout(generated):
    cfg, out = generated
    assert sorted(p.name for p in (out / "data").iterdir()) == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    card = (out / "README.md").read_text()
    assert "configs:" in card and "path: data/train-*" in card and "dataset_info:" in card
    assert "task_categories:" in card and "size_categories:" in card and "n<1K" in card
    assert "| num_inference_steps | `3` |" in card and "- images: 5" in card
    assert "| pipeline_class | `StableDiffusionPipeline` |" in card and "the cross-attention probabilities" in card
    assert "| down_factors | `[2, 4]` |" in card and "the prompt as CLIP tokenizes it (0 = start token)" in card
    # The settings block of the YAML header: numbers to any YAML reader (the threshold was the string '0.4').
    import yaml

    generation = yaml.safe_load(card.split("---")[1])["freeatm"]["generation"]
    assert generation["threshold"] == 0.4 and generation["num_inference_steps"] == 3


def test_plain_load_dataset_returns_what_the_generator_made(generated):
    cfg, out = generated
    res = subprocess.run([sys.executable, "-c", READER, str(out)], capture_output=True, text=True, check=True,
                         cwd=str(out.parent))
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["features"] == ["image", "label", "objects", "prompt", "seed", "truncated_objects"]
    assert data["label_names"] == ["tench", "goldfish", "great white shark"]
    rows = data["rows"]
    assert len(rows) == 5

    # The same prompts and seeds, generated again in this process, give the same rows.
    import torch

    from freeatm_hf.generate.pipelines import load_pipeline

    pipe = load_pipeline("tiny", torch.device("cpu"))
    source = PromptSource(cfg)
    gen = FreeATMGenerator(pipe)
    # Same batches as the run (batch 2 inside shards of 2): batch composition changes the last bits on CPU.
    batches = [gen([source[i] for i in ids], seeds=[cfg.seed + i for i in ids], num_inference_steps=3)
               for ids in ([0, 1], [2, 3], [4])]
    expected = [(img, p, objs) for out in batches for img, p, objs in zip(out.images, out.prompts, out.objects)]
    for row, (img, prompt, objs) in zip(rows, expected):
        assert row["prompt"] == prompt.text and row["label"] == prompt.label
        assert np.array_equal(np.asarray(row["image"], dtype=np.uint8), np.asarray(img))
        assert [o["name"] for o in row["objects"]] == prompt.nouns
        for got, exp in zip(row["objects"], objs):
            assert got["mode"] == "L"
            assert tuple(got["token_indices"]) == exp.token_indices
            assert np.array_equal(np.asarray(got["attention"], dtype=np.uint8), exp.attention_uint8)
            assert got["bbox"] == pytest.approx(list(exp.mask.bbox))
            assert got["area"] == pytest.approx(exp.mask.area)
            # The raw map's peak, which min-max normalization of `attention` loses.
            assert got["attention_peak"] == pytest.approx(float(exp.soft_map.max()), rel=1e-6)
            assert 0 < got["attention_peak"] < 1
    assert [r["seed"] for r in rows] == [3, 4, 5, 6, 7]


def test_empty_masks_and_truncated_nouns_round_trip_as_null_and_names(tmp_path):
    from datasets import Dataset, load_dataset
    from PIL import Image

    from freeatm_hf.generate.schema import dataset_features

    row = {"image": Image.new("RGB", (8, 8)), "prompt": "p", "label": -1, "seed": 1, "truncated_objects": ["dog"],
           "objects": [{"name": "cat", "token_indices": [1], "attention": Image.new("L", (4, 4)), "bbox": None,
                        "area": 0.0}]}
    (tmp_path / "data").mkdir()
    Dataset.from_list([row], features=dataset_features(["a", "b"])).to_parquet(str(tmp_path / "data" / "train-0.parquet"))
    back = load_dataset(str(tmp_path), split="train")[0]
    assert back["objects"][0]["bbox"] is None and back["truncated_objects"] == ["dog"] and back["label"] == -1


def test_a_refined_generation_stores_image_resolution_maps_and_says_so(tmp_path):
    from datasets import load_dataset

    out = tmp_path / "refined"
    generate_dataset(GenerateConfig(output_dir=str(out), pipeline="tiny", num_images=2, batch_size=2,
                                    num_inference_steps=2, device="cpu", refine="guided"))
    ds = load_dataset(str(out), split="train")
    assert all(np.asarray(o["attention"]).shape == (64, 64) for r in ds for o in r["objects"])
    card = (out / "README.md").read_text()
    assert "refine: guided" in card and "guided filter on the generated image" in card
    with pytest.raises(ValueError, match="refine must be none or guided"):
        GenerateConfig(output_dir=str(out), pipeline="tiny", refine="crf")


def test_the_cards_object_counts_are_the_shards(tmp_path):
    """Counted from the boxes alone (in Arrow), across shards and row groups: objects, empty masks, truncated nouns."""
    from PIL import Image

    from freeatm_hf.generate import DatasetWriter
    from freeatm_hf.generate.run import write_card
    from freeatm_hf.generate.schema import dataset_features

    cfg = GenerateConfig(output_dir=str(tmp_path), pipeline="tiny", num_images=5, rows_per_shard=3)
    features = dataset_features()
    writer = DatasetWriter(tmp_path, features, cfg.settings(), cfg.num_images, cfg.rows_per_shard)
    square = np.zeros((4, 4), np.uint8)
    square[1:3, 1:3] = 255

    def obj(box):
        return {"name": "cat", "token_indices": [1], "attention": Image.fromarray(square), "bbox": box, "area": 0.25,
                "attention_peak": 0.2}

    objects = [[], [obj([2.0, 2.0, 6.0, 6.0]), obj(None)], [obj(None)], [obj([0.0, 0.0, 8.0, 8.0])] * 3, []]
    cut = [["dog"], [], ["dog", "ball"], [], ["kite"]]
    rows = [{"image": Image.new("RGB", (8, 8)), "prompt": "p", "label": -1, "seed": i, "truncated_objects": cut[i],
             "objects": objects[i]} for i in range(5)]
    for shard in writer.shards:
        writer.write(shard, rows[shard.start : shard.stop])
    write_card(writer, cfg, features)
    card = " ".join((tmp_path / "README.md").read_text().split())
    # The 4 cut-off nouns have no map and are not among the 6 objects: 10 nouns in all.
    assert "objects: 6 (2 with an empty mask); 4 more nouns cut off by the text encoder's token limit (no map)" in card
    assert "soft map (8-bit, min-max normalized) at 4×4" in card  # the first object's map, in shard 0


def test_every_field_of_a_generation_output_reads_back_with_plain_load_dataset(tmp_path):
    """`output_to_rows` → shard → stock `load_dataset`: each row holds its own image, prompt, class, seed, cut nouns
    and per object name, tokens, map (rows = height), box, area and peak; an empty mask's box is null."""
    from datasets import load_dataset
    from PIL import Image

    from freeatm_hf.generate import DatasetWriter
    from freeatm_hf.generate.generator import GeneratedObject, GenerationOutput
    from freeatm_hf.generate.schema import dataset_features, encode_images, output_to_rows
    from freeatm_hf.masks import mask_from_map
    from freeatm_hf.prompts import Prompt

    rng = np.random.default_rng(0)
    prompts = [Prompt.from_nouns("a dog with a ball", ["dog", "ball"], label=1),
               Prompt.from_nouns("a cat on a mat", ["cat"], label=2)]
    maps = [rng.random((5, 3)).astype(np.float32) for _ in range(2)] + [np.full((5, 3), 0.1, np.float32)]
    maps[0] *= 0.2
    maps[0][1:3, 1] += 0.8  # a blob off the edges: a box that does not span the image
    objects = [[GeneratedObject("dog", -1, (2,), maps[0], mask_from_map(maps[0], 0.5, (12, 8)), float(maps[0].max())),
                GeneratedObject("ball", -1, (5, 6), maps[1], mask_from_map(maps[1], 0.5, (12, 8)), float(maps[1].max()))],
               [GeneratedObject("cat", -1, (2,), maps[2], mask_from_map(maps[2], 0.5, (12, 8)), None)]]
    images = [Image.fromarray(rng.integers(0, 256, (12, 8, 3), dtype=np.uint8)) for _ in range(2)]
    out = GenerationOutput(images, prompts, [2**40 + 11, 12], objects, [[], ["mat"]])  # seeds are 64-bit
    writer = DatasetWriter(tmp_path, dataset_features(["a", "b", "c"]), {}, num_rows=2, rows_per_shard=2)
    writer.write(writer.shards[0], encode_images(output_to_rows(out)))
    back = load_dataset(str(tmp_path), split="train")
    assert back.features["label"].names == ["a", "b", "c"]
    for row, image, prompt, seed, objs, cut in zip(back, images, prompts, out.seeds, objects, out.truncated):
        assert np.array_equal(np.asarray(row["image"]), np.asarray(image))
        assert (row["prompt"], row["label"], row["seed"], row["truncated_objects"]) == (prompt.text, prompt.label, seed, cut)
        assert [o["name"] for o in row["objects"]] == [o.name for o in objs]
        for got, o in zip(row["objects"], objs):
            assert tuple(got["token_indices"]) == o.token_indices
            attention = np.asarray(got["attention"])
            assert got["attention"].mode == "L" and attention.shape == o.soft_map.shape
            assert np.array_equal(attention, o.attention_uint8)
            m = o.soft_map.astype(np.float64)
            above = (m - m.min()) / (m.max() - m.min()) > 0.5 if m.max() > m.min() else np.zeros(m.shape, bool)
            assert got["area"] == pytest.approx(float(above.mean()), abs=1e-6)
            assert got["attention_peak"] == (None if o.attention_peak is None else pytest.approx(o.attention_peak))
            if not above.any():
                assert got["bbox"] is None
            else:
                ys, xs = np.nonzero(above)  # a map cell spans 8/3 image columns and 12/5 rows
                sx, sy = 8 / 3, 12 / 5
                assert got["bbox"] == pytest.approx([xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy])


def test_the_card_states_a_non_square_map_as_height_by_width(tmp_path):
    from PIL import Image

    from freeatm_hf.generate import DatasetWriter
    from freeatm_hf.generate.run import write_card
    from freeatm_hf.generate.schema import dataset_features

    cfg = GenerateConfig(output_dir=str(tmp_path), pipeline="tiny", num_images=1, rows_per_shard=1)
    writer = DatasetWriter(tmp_path, dataset_features(), cfg.settings(), 1, 1)
    attention = Image.fromarray(np.zeros((4, 2), np.uint8))  # 4 rows, 2 columns
    writer.write(writer.shards[0], [{"image": Image.new("RGB", (6, 12)), "prompt": "p", "label": -1, "seed": 0,
                                     "truncated_objects": [], "objects": [{"name": "cat", "token_indices": [1],
                                     "attention": attention, "bbox": None, "area": 0.0, "attention_peak": 0.1}]}])
    write_card(writer, cfg, dataset_features())
    card = " ".join((tmp_path / "README.md").read_text().split())
    assert "the generated RGB image (12×6)" in card and "| height | `12` | | width | `6` |" in card  # 12 rows
    assert "at 4×2" in card and "at 2×4" not in card


@pytest.mark.parametrize("mode, says", [
    ("scene", "ImageNet-1k classes in scene prompts of up to 2 objects, one pass over the classes per 1000 images "
              "(seed 3): each class with classes of the subgroups it is found with"),
    ("photo", '"a photo of a [class]" over the ImageNet-1k classes (the paper\'s base prompt), one pass over the '
              "classes per 1000 images (seed 3)."),
    ("file", "The lines of the prompts file `prompts.txt` (its SHA-256 under Generation), in order, from the first "
             "again when the file runs out.")])
def test_the_card_says_how_the_prompts_were_made(mode, says, tmp_path):
    from PIL import Image

    from freeatm_hf.generate import DatasetWriter
    from freeatm_hf.generate.run import write_card
    from freeatm_hf.generate.schema import dataset_features
    from freeatm_hf.prompts.scenes import TEMPLATES_VERSION

    (tmp_path / "prompts.txt").write_text("a cat on a mat\n")
    files = {"prompts_file": str(tmp_path / "prompts.txt")} if mode == "file" else {}
    out = tmp_path / "out"
    cfg = GenerateConfig(output_dir=str(out), pipeline="tiny", num_images=1, rows_per_shard=1, prompt_mode=mode,
                         seed=3, **files)
    writer = DatasetWriter(out, dataset_features(), cfg.settings(), 1, 1)
    writer.write(writer.shards[0], [{"image": Image.new("RGB", (8, 8)), "prompt": "p", "label": -1, "seed": 3,
                                     "truncated_objects": [], "objects": []}])
    write_card(writer, cfg, dataset_features())
    card = " ".join((out / "README.md").read_text().split())
    prompts = card.split("## Prompts", 1)[1].split("## Columns", 1)[0]
    assert says in prompts and "rewritten by" not in prompts
    assert (f"scene templates version {TEMPLATES_VERSION}." in prompts) is (mode == "scene")
    if mode == "scene":  # rewritten by an LLM: said, by the model's name (never the server's address)
        cfg = GenerateConfig(output_dir=str(out), pipeline="tiny", num_images=1, rows_per_shard=1, seed=3,
                             augmenter="http://10.0.0.7:8000/v1#llama-3-8b")
        write_card(writer, cfg, dataset_features())
        card = " ".join((out / "README.md").read_text().split())
        assert "Each prompt was then rewritten by `OpenAI-compatible server#llama-3-8b`, keeping every object" in card
        assert "10.0.0.7" not in card

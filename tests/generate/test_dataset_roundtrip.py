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
    cfg = GenerateConfig(output_dir=str(out), pipeline="tiny", num_images=5, batch_size=2, rows_per_shard=2,
                         num_inference_steps=3, device="cpu")
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
    batches = [gen([source[i] for i in ids], seeds=list(ids), num_inference_steps=3) for ids in ([0, 1], [2, 3], [4])]
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
    assert rows[0]["seed"] == 0 and rows[4]["seed"] == 4


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
    assert "objects: 6 (2 with an empty mask, 4 truncated)" in card
    assert "soft map (8-bit, min-max normalized) at 4×4" in card  # the first object's map, in shard 0

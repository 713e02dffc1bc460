import json

import numpy as np
import pytest


def test_perfect_scenes_are_the_generator_schema_with_exact_masks(tmp_path):
    from datasets import load_dataset

    from freeatm_hf.generate.schema import dataset_features
    from freeatm_hf.generate.writer import SettingsMismatchError
    from freeatm_hf.toy.dataset import PERFECT_SCENES, write_perfect_scenes
    from freeatm_hf.toy.world import SHAPES, ShapesWorld

    write_perfect_scenes(tmp_path, 7, seed=4, rows_per_shard=3)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    ds = load_dataset(str(tmp_path), split="train")
    assert ds.features == dataset_features(list(SHAPES))
    world = ShapesWorld(seed=4)
    specs = world.scenes(7)
    _, masks = world.render(specs)
    for row, spec, m in zip(ds, specs, masks, strict=True):
        assert row["prompt"] == spec.caption and row["label"] == SHAPES.index(spec.objects[0].shape)
        visible = [k for k in range(len(spec.objects)) if m[k].any()]
        assert [o["name"] for o in row["objects"]] == [spec.objects[k].name for k in visible]
        for o, k in zip(row["objects"], visible, strict=True):
            exact = m[k].numpy()
            assert np.array_equal(np.asarray(o["attention"]) == 255, exact)
            assert np.array_equal(np.asarray(o["attention"]) > 0, exact)  # binary: any threshold reads the same mask
            assert o["area"] == np.float32(exact.mean()) and o["attention_peak"] is None
            ys, xs = np.nonzero(exact)
            assert o["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert [r["seed"] for r in ds] == list(range(7))
    settings = json.loads((tmp_path / ".freeatm" / "settings.json").read_text())
    assert settings == {"pipeline": PERFECT_SCENES, "num_images": 7, "seed": 4, "size": 64, "rows_per_shard": 3}
    # A re-run finds every shard written and leaves them as they are; another shard size would write the same
    # rows a second time under other file names.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").iterdir()}
    write_perfect_scenes(tmp_path, 7, seed=4, rows_per_shard=3)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "data").iterdir()} == stamps
    with pytest.raises(SettingsMismatchError, match="rows_per_shard: 3 → 4"):
        write_perfect_scenes(tmp_path, 7, seed=4, rows_per_shard=4)
    # A folder from before the shard size was recorded resumes as it did.
    del settings["rows_per_shard"]
    (tmp_path / ".freeatm" / "settings.json").write_text(json.dumps(settings))
    write_perfect_scenes(tmp_path, 7, seed=4, rows_per_shard=3)


def test_labelled_shapes_are_single_object_renders_labelled_by_shape(tmp_path):
    from datasets import load_dataset

    from freeatm_hf.toy.dataset import write_labelled_shapes
    from freeatm_hf.toy.world import SHAPES, ShapesWorld

    write_labelled_shapes(tmp_path, num_train=5, num_test=3, size=32, seed=7)
    ds = load_dataset(str(tmp_path))
    assert ds["train"].features["label"].names == list(SHAPES)
    for split, n, seed in (("train", 5, 7), ("test", 3, 8)):  # the test split is another world
        world = ShapesWorld(size=32, seed=seed, min_objects=1, max_objects=1)
        specs = world.scenes(n)
        images, _ = world.render(specs)
        assert ds[split]["label"] == [SHAPES.index(s.objects[0].shape) for s in specs]
        for row, img in zip(ds[split], images, strict=True):
            assert np.array_equal(np.asarray(row["image"]), img.numpy())


def test_segmentation_label_maps_are_the_visible_masks_labelled_by_shape(tmp_path):
    from datasets import load_dataset

    from freeatm_hf.toy.dataset import write_shapes_segmentation
    from freeatm_hf.toy.world import SHAPES, ShapesWorld

    write_shapes_segmentation(tmp_path, num_train=3, num_test=2, seed=4)
    ds = load_dataset(str(tmp_path))
    assert json.loads((tmp_path / "id2label.json").read_text()) == {"0": "background",
                                                                     **{str(i + 1): s for i, s in enumerate(SHAPES)}}
    for split, n, seed in (("train", 3, 4), ("test", 2, 5)):
        world = ShapesWorld(seed=seed)
        specs = world.scenes(n)
        images, masks = world.render(specs)
        for row, img, m, spec in zip(ds[split], images, masks, specs, strict=True):
            lab = np.asarray(row["annotation"])
            assert np.array_equal(np.asarray(row["image"]), img.numpy())
            assert np.array_equal(lab == 0, ~m.any(0).numpy())
            for k, o in enumerate(spec.objects):
                assert (lab[m[k].numpy()] == 1 + SHAPES.index(o.shape)).all()


def test_coco_boxes_and_areas_describe_their_masks(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from freeatm_hf.toy.dataset import write_shapes_coco
    from freeatm_hf.toy.world import SHAPES, ShapesWorld

    write_shapes_coco(tmp_path, num_train=4, num_test=2, seed=2)
    for split, n, seed in (("train", 4, 2), ("test", 2, 3)):
        coco = COCO(str(tmp_path / "annotations" / f"{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
        world = ShapesWorld(seed=seed)
        specs = world.scenes(n)
        _, masks = world.render(specs)
        assert sorted(coco.getImgIds()) == list(range(n))
        for i in range(n):
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[i]))
            visible = [k for k in range(len(specs[i].objects)) if masks[i][k].any()]
            assert [a["category_id"] for a in anns] == [1 + SHAPES.index(specs[i].objects[k].shape) for k in visible]
            for a, k in zip(anns, visible, strict=True):
                exact = masks[i][k].numpy()
                assert np.array_equal(coco.annToMask(a).astype(bool), exact)
                ys, xs = np.nonzero(exact)
                assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
                assert a["area"] == exact.sum() == mask_utils.area(coco.annToRLE(a))
        assert len({a["id"] for a in coco.dataset["annotations"]}) == len(coco.dataset["annotations"])


def test_shapes_dataset_renders_at_the_size_asked(tmp_path):
    from freeatm_hf.toy.dataset import shapes_dataset

    ds = shapes_dataset(2, seed=3, size=32)
    assert [np.asarray(r["image"]).shape for r in ds] == [(32, 32, 3)] * 2
    assert all(np.asarray(o["mask"]).shape == (32, 32) for r in ds for o in r["objects"])


def test_no_scenes_is_an_empty_dataset_with_the_columns_of_a_full_one():
    from freeatm_hf.toy.dataset import FEATURES, shapes_dataset

    ds = shapes_dataset(0)
    assert len(ds) == 0 and ds.features == FEATURES
    with pytest.raises(ValueError, match="n -1"):
        shapes_dataset(-1)


@pytest.mark.parametrize("writer", ["write_labelled_shapes", "write_shapes_segmentation", "write_shapes_coco"])
@pytest.mark.parametrize("empty", ["num_train", "num_test"])
def test_a_downstream_split_without_scenes_is_refused_by_name(writer, empty, tmp_path):
    from freeatm_hf.toy import dataset

    with pytest.raises(ValueError, match=f"{empty} 0: each split"):
        getattr(dataset, writer)(tmp_path / "out", **{"num_train": 2, "num_test": 2, empty: 0})
    assert not (tmp_path / "out").exists()

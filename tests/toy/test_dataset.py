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

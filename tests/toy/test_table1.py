import json

import torch


def test_presence_targets_mark_each_shape_in_the_scene():
    from freeatm_hf.toy.table1 import presence_targets
    from freeatm_hf.toy.world import SHAPES, ShapesWorld

    specs = ShapesWorld(seed=3).scenes(5)
    t = presence_targets(specs)
    assert t.shape == (5, len(SHAPES))
    for row, s in zip(t, specs, strict=True):
        assert {SHAPES[i] for i in torch.nonzero(row).flatten().tolist()} == {o.shape for o in s.objects}


def test_table1_runs_end_to_end_and_writes_its_table(tmp_path):
    from freeatm_hf.toy.table1 import main

    res = main(["--output_dir", str(tmp_path), "--pipeline", "tiny", "--num_images", "8", "--num_inference_steps", "2",
                "--max_steps", "2", "--batch_size", "4", "--num_probe_train", "60", "--num_probe_test", "30",
                "--image_size", "32", "--device", "cpu"])
    assert [r["pretraining"].split(",")[0] for r in res["rows"]] == ["none (random init)", "SimCLR", "SimCLR"]
    assert all(0 <= r["map"] <= 1 and 0 <= r["exact_set_accuracy"] <= 1 for r in res["rows"])
    assert json.loads((tmp_path / "table1.json").read_text()) == res
    assert (tmp_path / "table1.md").read_text().count("\n") == 5

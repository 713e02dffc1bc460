import json

import pytest
import torch


def test_presence_targets_mark_each_shape_in_the_scene():
    from freeatm_hf.toy.table1 import presence_targets
    from freeatm_hf.toy.world import COLORS, SHAPES, ShapesWorld

    specs = ShapesWorld(seed=3).scenes(5)
    t = presence_targets(specs)
    assert t.shape == (5, len(SHAPES))
    for row, s in zip(t, specs, strict=True):
        assert {SHAPES[i] for i in torch.nonzero(row).flatten().tolist()} == {o.shape for o in s.objects}
    c = presence_targets(specs, "color")
    assert c.shape == (5, len(COLORS))
    for row, s in zip(c, specs, strict=True):
        assert {list(COLORS)[i] for i in torch.nonzero(row).flatten().tolist()} == {o.color for o in s.objects}


def test_table1_runs_end_to_end_and_writes_its_table(tmp_path):
    from freeatm_hf.toy.table1 import main

    res = main(["--output_dir", str(tmp_path), "--pipeline", "tiny", "--num_images", "8", "--num_inference_steps", "2",
                "--max_steps", "2", "--batch_size", "4", "--num_probe_train", "60", "--num_probe_test", "30",
                "--image_size", "32", "--device", "cpu", "--pretrain_seeds", "0", "1", "--color_strength", "0.5"])
    assert [r["pretraining"].split(",")[0] for r in res["rows"]] == ["none (random init)", "SimCLR", "SimCLR"]
    facts = json.loads((tmp_path / "simclr-image-seed1" / "card_info.json").read_text())
    assert res["color_strength"] == facts["data"]["color_strength"] == 0.5  # what the runs were trained with
    for r in res["rows"]:
        assert len(r["runs"]) == 2 and r["map_std"] is not None
        assert all(0 <= r[k] <= 1 for k in ("map", "colour_map", "exact_set_accuracy"))
    assert (tmp_path / "simclr-attention").is_dir() and (tmp_path / "simclr-attention-seed1").is_dir()
    assert json.loads((tmp_path / "table1.json").read_text()) == res
    assert (tmp_path / "table1.md").read_text().count("\n") == 5
    # The README table shows the JSON's fractions as percentages, mean ± std over the seeds.
    for r in res["rows"]:
        assert f"| {r['pretraining']} | {100 * r['map']:.1f} ± {100 * r['map_std']:.1f} | " in (tmp_path / "table1.md").read_text()


def test_table1_ablates_the_drawn_filter_with_a_row_trained_on_every_object(tmp_path):
    from freeatm_hf.toy.table1 import main

    common = ["--pipeline", "tiny", "--num_images", "4", "--num_inference_steps", "2", "--max_steps", "1",
              "--batch_size", "4", "--num_probe_train", "40", "--num_probe_test", "20", "--image_size", "32",
              "--device", "cpu", "--ablate_drawn_filter"]
    # The tiny pipeline recommends no cut: nothing to ablate, and saying so beats a row equal to another.
    with pytest.raises(ValueError, match="records no min_attention_peak"):
        main(["--output_dir", str(tmp_path / "nocut"), *common])

    res = main(["--output_dir", str(tmp_path / "cut"), *common, "--min_attention_peak", "0.01"])
    assert res["min_attention_peak"] == 0.01
    assert [r["pretraining"] for r in res["rows"]][2:] == [
        "SimCLR, attention-pooled (Free-ATM, objects with attention_peak >= 0.01)",
        "SimCLR, attention-pooled, every named object (no drawn filter)"]
    # The filtered run read the cut from the scenes' card; the ablation was told to keep everything.
    assert "attention_peak below 0.01" in (tmp_path / "cut" / "simclr-attention" / "README.md").read_text()
    assert "attention_peak below" not in (tmp_path / "cut" / "simclr-attention-all" / "README.md").read_text()
    assert (tmp_path / "cut" / "table1.md").read_text().count("\n") == 6
    # Another cut on the same scenes rewrites their card, which training reads: the models trained at the old one
    # are not reported under the new.
    with pytest.raises(ValueError, match=r"records other settings \(scenes: "):
        main(["--output_dir", str(tmp_path / "cut"), *common, "--min_attention_peak", "0.02"])


def test_table1_pretrains_on_perfect_scenes_without_a_generator(tmp_path):
    from freeatm_hf.toy.table1 import main

    args = ["--output_dir", str(tmp_path), "--perfect_scenes", "--num_images", "6", "--max_steps", "1",
            "--batch_size", "4", "--num_probe_train", "40", "--num_probe_test", "20", "--image_size", "32",
            "--device", "cpu"]
    res = main(args)
    assert res["generator"] == "none: rendered scenes with exact masks"
    assert not (tmp_path / "scenes").exists() and (tmp_path / "perfect_scenes" / "data").is_dir()
    assert (tmp_path / "simclr-attention" / "model.safetensors").is_file()
    assert "perfect_scenes" in (tmp_path / "simclr-attention" / "README.md").read_text()
    # A re-run with the same recipe reuses the models; another one is refused rather than scored as this one.
    model = tmp_path / "simclr-attention" / "model.safetensors"
    trained = model.stat().st_mtime_ns
    assert main(args)["rows"] == res["rows"] and model.stat().st_mtime_ns == trained
    with pytest.raises(ValueError, match=r"records other settings \(pretraining: .*'--max_steps', '1'.* → .*'2'"):
        main([*args[:6], "2", *args[7:]])
    with pytest.raises(ValueError, match="--pipeline: for generated scenes"):
        main(args + ["--pipeline", "tiny"])


def test_rendered_features_are_the_backbone_on_normalized_resized_renders():
    from torchvision.transforms.v2 import functional as TF

    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from freeatm_hf.toy.table1 import rendered_features
    from freeatm_hf.toy.world import ShapesWorld

    class Identity(torch.nn.Module):  # its feature map is its input: features = per-channel image means
        seen = []

        def forward_features(self, x):
            self.seen.append(tuple(x.shape))
            return x

    world = ShapesWorld(seed=3)
    specs = world.scenes(5)
    feats = rendered_features(Identity(), specs, world, image_size=32, batch_size=3)
    assert Identity.seen == [(3, 3, 32, 32), (2, 3, 32, 32)]
    images, _ = world.render(specs)
    x = TF.resize(images.permute(0, 3, 1, 2).float() / 255, [32, 32], antialias=True)
    want = TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD)).mean((2, 3))
    assert feats.shape == (5, 3) and torch.allclose(feats, want, atol=1e-3)


def test_probe_scores_each_presence_task_against_its_own_targets_on_held_out_scenes(monkeypatch):
    from types import SimpleNamespace

    from freeatm_hf.toy import table1

    seen = []

    def oracle_features(backbone, specs, world, image_size, device="cpu"):
        # A backbone that sees exactly which shapes a scene holds, but only three of the six colours.
        seen.append(specs)
        return torch.cat([table1.presence_targets(specs), table1.presence_targets(specs, "color")[:, :3]], 1).float()

    monkeypatch.setattr(table1, "rendered_features", oracle_features)
    r = table1.probe(None, SimpleNamespace(num_probe_train=200, num_probe_test=100, image_size=32), "cpu")
    train, test = seen
    assert (len(train), len(test)) == (200, 100) and not set(train) & set(test)  # scored on scenes it never fit
    assert r["map"] == pytest.approx(1.0) and r["exact_set_accuracy"] == pytest.approx(1.0)
    # Three colours told apart (AP 1), three guessed (AP near their prevalence).
    assert 0.55 < r["colour_map"] < 0.9

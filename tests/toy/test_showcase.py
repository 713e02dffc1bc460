"""The README grid: one row per scene, and objects below the recommended attention-peak cut flagged in grey."""

import numpy as np
import torch


def test_grid_flags_objects_below_the_recommended_peak(monkeypatch):
    import freeatm_hf.generate.generator as generator
    import freeatm_hf.generate.pipelines as pipelines
    from freeatm_hf.toy import showcase as sc
    from freeatm_hf.toy.model import shapes_pipeline

    torch.manual_seed(0)
    pipe = shapes_pipeline()  # random weights: the layout is what is checked
    grey = np.array([128, 128, 128])

    def label_colours(cut):
        rec = {"guidance_scale": 2.0, "min_attention_peak": cut, "capture": {"down_factors": [1]}}
        for module in (pipelines, generator):
            monkeypatch.setattr(module, "pipeline_recommendation", lambda p, revision=None: rec)
        img = np.asarray(sc.showcase(pipe, num_scenes=2, num_inference_steps=2))
        assert img.shape == (2 * (sc.CELL + sc.TEXT_H), sc.CELL * (2 + sc.MAX_OBJECTS), 3)
        # The label bar's first pixel of each filled object panel, row 0.
        y = sc.TEXT_H + 2
        return [img[y, sc.CELL * (2 + k) + 1] for k in range(sc.MAX_OBJECTS) if img[y + 20, sc.CELL * (2 + k) + 20].any()
                and not (img[y:y + 40, sc.CELL * (2 + k):sc.CELL * (3 + k)] == 255).all()]

    kept = label_colours(None)
    flagged = label_colours(1.0)  # no attention probability reaches 1: every object is flagged
    assert kept and len(kept) == len(flagged)
    assert all((c == grey).all() for c in flagged) and not any((c == grey).all() for c in kept)


def test_drawing_the_grid_into_a_model_folder_puts_it_in_the_card(tmp_path):
    import shutil

    from freeatm_hf.toy.model import MODEL_DIR, update_model_folder
    from freeatm_hf.toy.showcase import main

    folder = tmp_path / "shapes-t2i"
    shutil.copytree(MODEL_DIR, folder)
    (folder / "grid.png").unlink()
    update_model_folder(folder)  # as `freeatm eval masks` leaves it: measured, no grid yet
    assert "grid.png" not in (folder / "README.md").read_text()
    main(["--pipeline", str(folder), "--output", str(folder / "grid.png"), "--num_scenes", "1",
          "--num_inference_steps", "2"])
    assert "](grid.png)" in (folder / "README.md").read_text()


def test_each_row_is_the_generators_picture_of_a_held_out_scene_under_its_caption(monkeypatch):
    from PIL import Image, ImageDraw

    import freeatm_hf.generate.generator as generator
    import freeatm_hf.generate.pipelines as pipelines
    from freeatm_hf.generate import FreeATMGenerator
    from freeatm_hf.toy import showcase as sc
    from freeatm_hf.toy.model import shapes_pipeline
    from freeatm_hf.toy.world import ShapesWorld

    rec = {"guidance_scale": 4.0, "capture": {"down_factors": [1]}, "threshold": 0.3}
    for module in (pipelines, generator):  # a folder recommending its capture, threshold, and guidance 4.0 (overridden here)
        monkeypatch.setattr(module, "pipeline_recommendation", lambda p, revision=None: rec)
    torch.manual_seed(0)
    pipe = shapes_pipeline()
    grid = np.asarray(sc.showcase(pipe, num_scenes=1, seed=5, num_inference_steps=2, guidance_scale=1.5))
    spec = ShapesWorld(seed=5).scenes(1)[0]
    caption = Image.new("RGB", (grid.shape[1], sc.TEXT_H), "white")
    ImageDraw.Draw(caption).text((4, 2), spec.caption, fill=(0, 0, 0))
    assert np.array_equal(grid[: sc.TEXT_H], np.asarray(caption))
    gen = FreeATMGenerator(pipe, guidance_scale=1.5)
    out = gen([spec.prompt()], seeds=[0], num_inference_steps=2)
    image, objs = out.images[0], out.objects[0]
    panel = np.asarray(image.resize((sc.CELL, sc.CELL), Image.NEAREST))
    row = grid[sc.TEXT_H : sc.TEXT_H + sc.CELL]
    assert np.array_equal(row[:, : sc.CELL], panel)
    # Then the masks at the folder's threshold, drawn on the enlarged picture; then each object's own heat map
    # (below its label bar).
    from freeatm_hf.viz import heatmap, overlay

    assert gen.threshold == 0.3 and len(objs) >= 2
    rows = [{"name": o.name, "attention": Image.fromarray(o.attention_uint8)} for o in objs]
    masks = overlay(image, rows, threshold=0.3, scale=sc.CELL // image.width, labels=False).resize((sc.CELL, sc.CELL))
    assert np.array_equal(row[:, sc.CELL : 2 * sc.CELL], np.asarray(masks))
    for k, o in enumerate(objs[: sc.MAX_OBJECTS]):
        x = sc.CELL * (2 + k)
        heat = np.asarray(heatmap(o.attention_uint8, (sc.CELL, sc.CELL)))
        assert np.array_equal(row[12:, x : x + sc.CELL], heat[12:]), o.name

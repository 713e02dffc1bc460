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

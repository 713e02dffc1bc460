"""The shapes model folder's freeatm.json and card, written from a mask evaluation."""

import json

import pytest

from freeatm_hf.toy.model import MODEL_DIR, update_model_folder


def evaluation(drawn_filter):
    shipped = json.loads((MODEL_DIR / "freeatm.json").read_text())["mask_eval"]
    return {**shipped, "capture": {"down_factors": [1], "step_window": [0.5, 1.0], "threshold": 0.7,
                                   "refine": "guided"}, "drawn_filter": drawn_filter}


FULL = {"auc": 0.97, "drawn_share_of_all": 0.88, "min_attention_peak": 0.0512, "drawn_kept": 0.95,
        "undrawn_dropped": 0.83, "drawn_share_of_kept": 0.977}


@pytest.mark.parametrize("drawn_filter, says", [
    (FULL, ["ROC AUC 0.97", "Below 0.0512 (the highest cut that keeps 95 % of the drawn validation objects)", "keeps 95.0 % of drawn objects",
            "drops 83.0 % of undrawn ones", "97.7 % of the objects kept were drawn (of all: 88.0 %)"]),
    # No cut (validation had no undrawn object, or none helped): the AUC alone.
    ({**FULL, "min_attention_peak": None, "drawn_kept": None, "undrawn_dropped": None, "drawn_share_of_kept": None},
     ["ROC AUC 0.97"]),
    # A cut that kept nothing: no shares to print, and no crash.
    ({**FULL, "drawn_kept": 0.0, "drawn_share_of_kept": None}, ["ROC AUC 0.97"]),
    # Nothing undrawn on the test scenes: no AUC, no paragraph.
    ({"auc": None, "drawn_share_of_all": 1.0, "min_attention_peak": None, "drawn_kept": None,
      "undrawn_dropped": None, "drawn_share_of_kept": None}, []),
])
def test_the_card_states_the_drawn_filter_it_measured(drawn_filter, says, tmp_path):
    from huggingface_hub import ModelCard

    (tmp_path / "freeatm.json").write_text((MODEL_DIR / "freeatm.json").read_text())
    info = update_model_folder(tmp_path, mask_eval=evaluation(drawn_filter))
    assert info["min_attention_peak"] == drawn_filter["min_attention_peak"]
    assert json.loads((tmp_path / "freeatm.json").read_text())["mask_eval"]["drawn_filter"] == drawn_filter
    text = " ".join(ModelCard.load(tmp_path / "README.md").text.split())
    for s in says:
        assert s in text, s
    assert ("Which objects were drawn" in text) is bool(says)
    assert ("validation objects) an object counts as not drawn" in text) is (len(says) > 1)


def test_new_weights_drop_what_was_measured_on_the_old_ones(tmp_path):
    """Training that writes into a measured folder: mask quality, drawn cut and the choices made from them no
    longer hold, so the folder says what a fresh one says (until the next mask evaluation)."""
    import shutil

    from huggingface_hub import ModelCard

    shipped = json.loads((MODEL_DIR / "freeatm.json").read_text())
    (tmp_path / "freeatm.json").write_text(json.dumps(shipped))
    for name in ("mask_eval.json", "grid.png"):
        shutil.copy(MODEL_DIR / name, tmp_path / name)
    assert "](grid.png)" in (MODEL_DIR / "README.md").read_text()
    training = {**shipped["training"], "unet_steps": shipped["training"]["unet_steps"] + 1}
    info = update_model_folder(tmp_path, training=training)
    assert not (tmp_path / "mask_eval.json").exists() and not (tmp_path / "grid.png").exists()
    assert "mask_eval" not in info and "min_attention_peak" not in info and info["threshold"] is None
    assert info["training"] == training and info["prompt_mode"] == "shapes"
    text = " ".join(ModelCard.load(tmp_path / "README.md").text.split())
    miou = shipped["mask_eval"]["test"]["miou_drawn"]
    assert f"| {miou} |" in (MODEL_DIR / "README.md").read_text()  # what the shipped card states...
    assert f"| {miou} |" not in text and "Which objects were drawn" not in text  # ...is gone
    assert "threshold 0.4 (default; not measured yet)" in text and "](grid.png)" not in text


@pytest.mark.parametrize("runs, unique", [
    ([{"unet_steps": 5}, {"unet_steps": 4, "scene_start": 161, "scene_end": 300}], True),
    ([{"unet_steps": 5}, {"unet_steps": 4}, {"unet_steps": 4, "scene_start": 300, "scene_end": 500}], False),
])
def test_the_card_says_scenes_repeat_when_several_runs_began_at_scene_zero(runs, unique, tmp_path):
    from huggingface_hub import ModelCard

    info = update_model_folder(tmp_path, training={**runs[-1], "runs": runs})
    text = " ".join(ModelCard.load(tmp_path / "README.md").text.split())
    assert ("no scene seen twice" in text) is unique
    assert ("each began at scene 0, so their scenes repeat" in text) is not unique
    assert info["training"]["runs"] == runs


def test_the_card_states_each_runs_learning_rate_and_schedule():
    """It said one rate (the last run's) for seven runs, three of which trained at another, two without decay."""
    from freeatm_hf.toy.model import lr_history

    runs = [{"lr": 5e-4}, {"lr": 5e-4, "lr_schedule": "constant"}, {"lr": 5e-4, "lr_schedule": "cosine"},
            {"lr": 3e-4, "lr_schedule": "cosine"}, {"lr": 3e-4, "lr_schedule": "cosine"}]
    assert lr_history({"runs": runs}) == ("0.0005 (runs 1–2), then 0.0005 with a cosine decay (run 3), then 0.0003 "
                                          "with a cosine decay (runs 4–5)")
    assert lr_history({"lr": 3e-4, "lr_schedule": "cosine"}) == "0.0003 with a cosine decay"


def test_a_mask_evaluation_sets_what_the_generator_uses(tmp_path):
    """The capture, threshold, refinement and guidance chosen by the evaluation are what the folder recommends."""
    from freeatm_hf.attention import CaptureConfig

    ev = {**evaluation(FULL), "guidance_scale": 2.5}
    ev["config"] = {**ev["config"], "guidance_scale": 4.0}  # the sweep's pick, not the configured start
    info = update_model_folder(tmp_path, mask_eval=ev)
    assert json.loads((tmp_path / "freeatm.json").read_text()) == info
    capture = CaptureConfig.from_dict(info["capture"])
    assert list(capture.down_factors) == [1] and list(capture.step_window) == [0.5, 1.0]
    assert (info["threshold"], info["refine"], info["guidance_scale"]) == (0.7, "guided", 2.5)
    assert info["mask_eval"]["test"] == ev["test"] and info["mask_eval"]["guidance_scale"] == 2.5


@pytest.mark.parametrize("facts, scheduler, says", [
    # Facts from before the dropout was recorded: train_t2i's default then; no scheduler yet: shapes_components'.
    ({}, None, "v-prediction with zero terminal SNR, 10 % caption dropout"),
    ({"caption_dropout": 0.25}, {"prediction_type": "epsilon"}, "ε-prediction, 25 % caption dropout"),
    ({"caption_dropout": 0.0}, {"prediction_type": "v_prediction", "rescale_betas_zero_snr": False},
     "v-prediction, 0 % caption dropout"),
])
def test_the_card_states_the_objective_and_caption_dropout_trained_with(facts, scheduler, says, tmp_path):
    from huggingface_hub import ModelCard

    if scheduler is not None:
        (tmp_path / "scheduler").mkdir()
        (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    update_model_folder(tmp_path, training={"unet_steps": 3, **facts})
    assert says in " ".join(ModelCard.load(tmp_path / "README.md").text.split())


@pytest.mark.parametrize("facts, says", [
    ({"ema_decay": 0.0}, "EMA 0.0 of the UNet weights"),  # --ema_decay 0: the raw weights were saved
    ({"ema_decay": 0.99}, "EMA 0.99 of the UNet weights"),
    ({}, "EMA 0.999 of the UNet weights"),  # facts from before the decay was recorded: the default then
])
def test_the_card_states_the_ema_decay_trained_with(facts, says, tmp_path):
    from huggingface_hub import ModelCard

    update_model_folder(tmp_path, training={"unet_steps": 3, **facts})
    assert says in " ".join(ModelCard.load(tmp_path / "README.md").text.split())

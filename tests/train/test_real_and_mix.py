"""MAE and BLIP on real data (no masks: random masking, no position prompts) and on a mix with generated data."""

import pytest
from transformers import TrainingArguments


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    """A 'real' image-caption dataset: rendered shapes scenes without objects or masks, as a Parquet folder."""
    from datasets import Dataset
    from datasets import Image as ImageFeature

    from freeatm_hf.toy.dataset import rendered_rows
    from freeatm_hf.toy.world import ShapesWorld

    folder = tmp_path_factory.mktemp("real") / "photos"
    (folder / "data").mkdir(parents=True)
    rows = [{"img": r["image"], "caption": r["caption"]} for r in rendered_rows(ShapesWorld(seed=7), 24)]
    Dataset.from_list(rows).cast_column("img", ImageFeature()).to_parquet(str(folder / "data" / "train.parquet"))
    return str(folder)


@pytest.mark.parametrize("method", ["mae", "blip"])
@pytest.mark.parametrize("mode", ["real", "mix"])
def test_training_on_real_and_mixed_data(method, mode, real_data, shapes_data, tmp_path):
    from huggingface_hub import ModelCard

    common = dict(dataset=shapes_data, real_dataset=real_data, data_mode=mode, real_image_column="img",
                  model_size="tiny", image_size=32)
    if method == "mae":
        from freeatm_hf.train.mae import MAEArguments as Arguments
        from freeatm_hf.train.mae import train

        args = Arguments(**common, patch_size=8)
    else:
        from freeatm_hf.train.blip import BlipArguments as Arguments
        from freeatm_hf.train.blip import train

        args = Arguments(**common, max_length=48)
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, logging_steps=1,
                              save_strategy="no", report_to="none", use_cpu=True)
    trainer = train(args, targs)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and len(losses) == 2 and all(v > 0 for v in losses)
    card = ModelCard.load(tmp_path / "README.md")
    assert f"Data mode: **{mode}**" in card.text and "Real dataset: a local folder (`photos`" in card.text
    assert ("Synthetic (generated) dataset" in card.text) is (mode == "mix")

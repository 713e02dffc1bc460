"""MAE and BLIP on real data (no masks: random masking, no position prompts) and on a mix with generated data."""

import pytest
import torch
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


def test_blip_streams_real_data(real_data, tmp_path):
    """`--streaming` with real data alone: the collator was handed the undropped PIL images (a traceback)."""
    from freeatm_hf.train.blip import BlipArguments, train

    args = BlipArguments(real_dataset=real_data, data_mode="real", real_image_column="img", streaming=True,
                         model_size="tiny", image_size=32, max_length=48)
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, logging_steps=1,
                              save_strategy="no", report_to="none", use_cpu=True)
    assert train(args, targs).state.global_step == 1


def test_data_that_would_silently_train_something_else_is_refused(real_data, shapes_data, tmp_path):
    from freeatm_hf.train.blip import BlipArguments
    from freeatm_hf.train.blip import train as train_blip
    from freeatm_hf.train.contrastive import ContrastiveArguments

    targs = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True)
    # Images without objects passed as the generated dataset: attention pooling would be the baseline.
    with pytest.raises(ValueError, match=r"not a freeatm dataset \(no 'objects' and 'prompt'.*--real_dataset"):
        ContrastiveArguments(dataset=real_data).load()
    # BLIP on images without captions would learn from empty text (loss 0).
    with pytest.raises(ValueError, match="no caption column 'text' in .*--real_text_column"):
        train_blip(BlipArguments(real_dataset=real_data, data_mode="real", real_image_column="img",
                                 real_text_column="text", model_size="tiny", image_size=32), targs)
    # MAE and SimCLR read no captions: the same real folder without one is fine for them.
    ContrastiveArguments(real_dataset=real_data, data_mode="real", real_image_column="img",
                         real_text_column="text").load()
    # Values outside their range would drop every mask or every row without a word.
    with pytest.raises(ValueError, match=r"--mask_threshold .* must be in \[0, 1\), got 1.5"):
        ContrastiveArguments(dataset=shapes_data, mask_threshold=1.5)
    with pytest.raises(ValueError, match=r"--min_attention_peak must be in \[0, 1\)"):
        ContrastiveArguments(dataset=shapes_data, min_attention_peak=2.0)
    # A recipe's generated dataset stays set under --data_mode real: not read, so not named as trained on.
    info = ContrastiveArguments(dataset=shapes_data, real_dataset=real_data, data_mode="real").data_info([])
    assert info["dataset"] is None and info["real_dataset"].endswith("photos")
    # A real dataset without --data_mode would train on the generated data alone, under a card naming both.
    with pytest.raises(ValueError, match=r"--real_dataset is read with --data_mode real or mix, not 'synthetic'"):
        ContrastiveArguments(dataset=shapes_data, real_dataset=real_data)
    with pytest.raises(ValueError, match=r"--data_mode must be one of synthetic, real, mix, got 'mixed'"):
        BlipArguments(dataset=shapes_data, real_dataset=real_data, data_mode="mixed")
    with pytest.raises(ValueError, match=r"--mix_ratio is the share of real rows, in \[0, 1\]; got 1.5"):
        BlipArguments(dataset=shapes_data, real_dataset=real_data, data_mode="mix", mix_ratio=1.5)
    with pytest.raises(ValueError, match="image_size 36 is not a multiple of the tiny model's patch size 8"):
        train_blip(BlipArguments(dataset=shapes_data, model_size="tiny", image_size=36), targs)


def test_mae_refuses_an_image_size_that_is_not_whole_patches():
    from freeatm_hf.models import MAEConfig

    with pytest.raises(ValueError, match="image_size 40 is not a multiple of patch_size 16"):
        MAEConfig(image_size=40, patch_size=16)
    assert MAEConfig(image_size=48, patch_size=16).image_size == 48


def test_a_corrupt_real_image_is_named_through_a_data_loader_worker(real_data, shapes_data, tmp_path):
    """A truncated image failed deep in PIL, in the worker, naming neither the row nor the dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "photos"
    (folder / "data").mkdir(parents=True)
    table = pq.read_table(f"{real_data}/data/train.parquet")
    images = table.column("img").to_pylist()
    images[5] = {"bytes": images[5]["bytes"][:100], "path": None}
    column = pa.array(images, table.schema.field("img").type)
    table = table.set_column(table.schema.get_field_index("img"), "img", column)
    pq.write_table(table, str(folder / "data" / "train.parquet"))
    from freeatm_hf.train.mae import MAEArguments, train

    args = MAEArguments(dataset=shapes_data, real_dataset=str(folder), data_mode="mix", mix_ratio=0.9,
                        real_image_column="img", model_size="tiny", image_size=32, patch_size=8)
    targs = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=4,
                              save_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=1)
    with pytest.raises(ValueError, match=rf"row 5 of '{folder}' cannot be decoded \(OSError"):
        train(args, targs)


@pytest.mark.parametrize("method", ["simclr", "mae", "blip"])
def test_each_methods_rows_reach_data_workers_started_by_pickling(method, real_data, shapes_data):
    """Data workers started by spawn or forkserver (macOS, Windows, Python 3.14's default on Linux) receive the
    dataset pickled, its transform included: the transforms were closures, which pickle refuses, so every recipe
    with --dataloader_num_workers > 0 died before its first step there. A worker's copy gives the same rows."""
    import pickle
    import random

    common = dict(dataset=shapes_data, real_dataset=real_data, data_mode="mix", real_image_column="img")
    if method == "mae":
        from freeatm_hf.train.mae import MAEArguments, build_model, make_transform

        args = MAEArguments(**common, model_size="tiny", image_size=32, patch_size=8)
        transform = make_transform(args, build_model(args).config)
    elif method == "blip":
        from freeatm_hf.train.blip import BlipArguments, build_blip, make_transform

        args = BlipArguments(**common, model_size="tiny", image_size=32, max_length=48)
        transform = make_transform(args, build_blip(args)[1])
    else:
        from freeatm_hf.train.contrastive import ContrastiveArguments, make_transform

        args = ContrastiveArguments(**common, backbone="resnet18", image_size=32, color_strength=1.0)
        transform = make_transform(args)
    ds = args.read_through(args.load(), transform)
    copy = pickle.loads(pickle.dumps(ds))
    rows = list(range(min(len(ds), 12)))

    def read(d):
        torch.manual_seed(0)
        random.seed(0)
        return d[rows]

    ours, theirs = read(ds), read(copy)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert len(ours[key]) == len(rows)
        for a, b in zip(ours[key], theirs[key]):
            torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=0, atol=0, equal_nan=True,
                                       msg=key)

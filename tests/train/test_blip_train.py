import math
import random
import re

import pytest
import torch

from freeatm_hf.spaces import space_dir
from freeatm_hf.train.blip import BlipArguments, build_blip, make_transform


def test_training_text_carries_position_prompts_or_not():
    from datasets import load_dataset

    row = load_dataset(str(space_dir() / "example_dataset"), split="train")[:1]
    for prompts, expect in (("position", True), ("none", False)):
        args = BlipArguments(prompts=prompts, model_size="tiny", image_size=32, max_length=72, crop_scale_min=1.0)
        _, tok = build_blip(args)
        out = make_transform(args, tok)({"image": row["image"], "prompt": row["prompt"], "objects": row["objects"]})
        text = tok.decode(out["input_ids"][0], skip_special_tokens=True)
        assert out["pixel_values"][0].shape == (3, 32, 32)
        caption_ids = tok(row["prompt"][0]).input_ids[:-1]  # start token + caption, without the end token
        assert out["input_ids"][0][: len(caption_ids)].tolist() == caption_ids
        assert ("is in block" in text) is expect
        if expect:  # each prompt names its block: a digit, not the unknown token that skip_special_tokens drops
            assert len(re.findall(r"is in block \d \.", text)) == text.count("is in block") > 0


def test_streaming_training_maps_the_rows_as_it_reads_them(tmp_path):
    from transformers import TrainingArguments

    from freeatm_hf.train.blip import train

    args = BlipArguments(dataset=str(space_dir() / "example_dataset"), streaming=True, model_size="tiny",
                         image_size=32, max_length=48, grid=2)
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
                              save_strategy="no", report_to="none", use_cpu=True, logging_steps=1)
    trainer = train(args, targs)
    assert trainer.state.global_step == 2
    assert all(h["loss"] > 0 for h in trainer.state.log_history if "loss" in h)
    # The card says which text the model was trained on: position prompts, on the grid given.
    assert "Position prompts on a 2×2 grid" in (tmp_path / "README.md").read_text()
    # The tokenizer is saved with the model (and in every checkpoint): the folder loads whole with a stock loader.
    from transformers import AutoTokenizer

    _, tok = build_blip(BlipArguments(model_size="tiny", max_length=48))
    saved = AutoTokenizer.from_pretrained(tmp_path)
    assert saved("a red square is in block 2 .").input_ids == tok("a red square is in block 2 .").input_ids


def test_a_from_scratch_image_tower_tells_images_apart():
    import torch

    torch.manual_seed(0)
    model, _ = build_blip(BlipArguments(model_size="tiny", image_size=32))
    w = model.vision_model.embeddings.patch_embedding.weight
    assert 0.01 < float(w.std()) < 0.03  # not transformers' 1e-10 default for BLIP vision
    with torch.no_grad():
        emb = model.image_embeds(torch.randn(2, 3, 32, 32))
    assert (emb[0, 0] - emb[1, 0]).abs().max() > 1e-2  # different images, different [CLS] embeddings


def test_a_from_scratch_model_states_its_tokenizers_special_tokens(caplog):
    """Trainer aligns a text config whose bos/eos/pad differ from the tokenizer's, and warned so at every
    from-scratch run ("The tokenizer has new PAD/BOS/EOS tokens ... Updated tokens: {'eos_token_id': 1}")."""
    import logging

    from transformers.trainer_utils import align_special_tokens

    model, tok = build_blip(BlipArguments(model_size="tiny", image_size=32))
    text = model.config.text_config
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (tok.bos_token_id, tok.eos_token_id,
                                                                        tok.pad_token_id)
    with caplog.at_level(logging.WARNING):
        align_special_tokens(model, tok)
    assert not [r for r in caplog.records if "PAD/BOS/EOS" in r.getMessage()]


def test_momentum_distillation_trains_through_the_trainer(tmp_path):
    from transformers import TrainingArguments

    from freeatm_hf.train.blip import train

    args = BlipArguments(dataset=str(space_dir() / "example_dataset"), model_size="tiny", image_size=32, max_length=48,
                         momentum_distill=True, queue_size=10, momentum=0.5)
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
                              save_strategy="no", report_to="none", use_cpu=True, logging_steps=1)
    from transformers import set_seed

    set_seed(targs.seed)  # what `train` does before building: the same initial weights
    start = build_blip(args)[0].text_proj_m.weight.detach().clone()
    model = train(args, targs).model
    assert model.config.momentum_distill and model.queue_ptr.item() == 3 * 4 % 10
    # The callback moved the momentum weights after each step (away from the start), lagging the online ones.
    online, mom = model.text_proj.weight, model.text_proj_m.weight
    assert not torch.equal(mom, start) and not torch.equal(online, mom)
    assert (mom - online).abs().max() < (start - online).abs().max()
    # BLIP's distillation weight ramps from 0 over the first 2 epochs: set before the third step (global step 2).
    from datasets import load_dataset

    rows = len(load_dataset(str(space_dir() / "example_dataset"), split="train"))
    assert model.distill_alpha == pytest.approx(0.4 * min(1.0, 2 / (2 * math.ceil(rows / 4))))
    assert model.distill_alpha < 0.4


def test_a_run_is_its_seed_and_unknown_prompts_are_refused(tmp_path):
    """The model is built after seeding: the same seed gives the same weights whatever was drawn before."""
    from transformers import TrainingArguments

    from freeatm_hf.train.blip import train

    weights = []
    for before in (1, 2):
        torch.manual_seed(before)
        random.seed(before)
        args = BlipArguments(dataset=str(space_dir() / "example_dataset"), model_size="tiny", image_size=32,
                             max_length=48)
        targs = TrainingArguments(output_dir=str(tmp_path / str(before)), per_device_train_batch_size=4, max_steps=1,
                                  save_strategy="no", report_to="none", use_cpu=True, seed=3)
        weights.append(train(args, targs).model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    with pytest.raises(ValueError, match="prompts must be 'position' or 'none', got 'positions'"):
        train(BlipArguments(dataset="no-such-folder", prompts="positions"), targs)


def test_captions_alone_read_no_objects_and_take_no_attention_peak_cut():
    """The baseline (`--prompts none`) writes no position prompt: the dataset's cut is not taken into its facts."""
    dataset = str(space_dir() / "example_dataset")
    for prompts in ("position", "none"):
        args = BlipArguments(dataset=dataset, prompts=prompts, model_size="tiny", image_size=32, max_length=72)
        make_transform(args, build_blip(args)[1])
        assert (args.min_attention_peak is not None) is (prompts == "position")


def test_a_real_row_with_several_captions_trains_on_one_of_them():
    """COCO-style rows hold a list of captions: `caption.rstrip()` crashed on the first one."""
    import pytest
    from datasets import load_dataset

    row = load_dataset(str(space_dir() / "example_dataset"), split="train")[:1]
    args = BlipArguments(prompts="none", model_size="tiny", image_size=32, max_length=72, crop_scale_min=1.0)
    _, tok = build_blip(args)
    transform = make_transform(args, tok)
    caps = ["a red square", "a blue circle"]
    seen = set()
    random.seed(0)  # the process-wide generator Trainer seeds: two captions, twelve draws, both seen
    for _ in range(12):
        out = transform({"image": row["image"], "prompt": [caps], "objects": [[]]})
        seen.add(tok.decode(out["input_ids"][0], skip_special_tokens=True).strip(" ."))
    assert seen == set(caps)
    with pytest.raises(ValueError, match="needs a caption"):
        transform({"image": row["image"], "prompt": [None], "objects": [[]]})


def test_the_training_transform_takes_the_grid_order_crop_and_length_given():
    """`make_transform` is the position-prompt transform with the arguments given (grid, prompt order, crop
    scale, text length), computed here by `PositionPromptTransform` itself under the same draws."""
    from datasets import load_dataset
    from torchvision.transforms import v2

    from freeatm_hf.data.masks import drawn_objects
    from freeatm_hf.data.position_prompts import PositionPromptTransform
    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    rows = load_dataset(str(space_dir() / "example_dataset"), split="train")[:3]
    args = BlipArguments(model_size="tiny", image_size=32, max_length=60, grid=2, shuffle_prompts=False,
                         crop_scale_min=0.8, min_attention_peak=0.0)
    model, tok = build_blip(args)
    assert model.config.text_config.max_position_embeddings == 60  # the text table holds --max_length tokens
    assert model.config.text_config.sep_token_id == tok.eos_token_id
    # The caption decoder starts from the tokenizer's start token (every encoded text's first), pads are its pad.
    assert model.config.text_config.bos_token_id == tok("a caption").input_ids[0] == tok.bos_token_id
    assert model.config.text_config.pad_token_id == tok.pad_token_id != tok.bos_token_id
    transform = make_transform(args, tok)
    peer = PositionPromptTransform(size=32, scale=(0.8, 1.0), grid=2, tokenizer=tok, max_length=60, shuffle=False)
    finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for seed in range(3):
        torch.manual_seed(seed)
        random.seed(seed)
        out = transform(dict(rows))
        torch.manual_seed(seed)
        random.seed(seed)
        for i in range(3):
            objects = drawn_objects(rows["objects"][i], 0.0)
            img, text = peer(rows["image"][i], rows["prompt"][i], [o["name"] for o in objects],
                             [o["bbox"] for o in objects])
            assert torch.equal(out["pixel_values"][i], finish(img))
            ids = tok(text, padding="max_length", truncation=True, max_length=60, return_tensors="pt").input_ids[0]
            assert torch.equal(out["input_ids"][i], ids) and len(ids) == 60
            assert not re.search(r"block [5-9]", text)  # a 2 × 2 grid: blocks 1..4


def test_the_logged_loss_parts_are_the_training_steps_since_the_last_loss_log_only(tmp_path):
    """Evaluation's forward passes stay out of the parts, and a log without `loss` (evaluation's, the run's
    summary) carries none: every logged `loss` is the sum of its logged parts (all weights 1)."""
    import pytest
    from datasets import Dataset
    from transformers import TrainingArguments

    from freeatm_hf.train.blip import BlipTrainer
    from tests.models.test_blip import tiny

    torch.manual_seed(0)
    ids = torch.randint(4, 120, (4, 12))
    ids[:, 0] = 1
    ds = Dataset.from_dict({"pixel_values": torch.rand(4, 3, 32, 32).tolist(), "input_ids": ids.tolist()})
    ds = ds.with_format("torch")
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                              max_steps=3, logging_steps=2, eval_strategy="steps", eval_steps=1, learning_rate=1e-3,
                              save_strategy="no", report_to="none", use_cpu=True, seed=0)
    trainer = BlipTrainer(model=tiny(), args=targs, train_dataset=ds, eval_dataset=ds)
    trainer.train()
    history = trainer.state.log_history
    assert [h["step"] for h in history if "loss" in h] == [2]
    for h in history:
        assert ("loss_itc" in h) == ("loss" in h), h
        if "loss" in h:
            assert h["loss"] == pytest.approx(h["loss_itc"] + h["loss_itm"] + h["loss_lm"], rel=1e-4)


@pytest.fixture
def stock_blip(tmp_path):
    """A stock-layout BLIP folder (text position table of 40 tokens, no label smoothing stated) whose tokenizer
    declares an [ENC] token."""
    import json

    from freeatm_hf.generate.clip_vocab import load_tokenizer
    from freeatm_hf.models.blip import export_stock
    from tests.models.test_blip import tiny

    folder = tmp_path / "stock"
    export_stock(tiny(), folder)
    tok = load_tokenizer(model_max_length=40)
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["extra_special_tokens"] = {"enc_token": "[ENC]"}  # transformers then gives the tokenizer `enc_token_id`
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["label_smoothing"] = 0.0  # as Salesforce's configs (transformers' default)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_checkpoint_start_takes_blips_label_smoothing_the_enc_token_and_up_to_its_own_text_length(stock_blip):
    from transformers import BlipConfig

    from freeatm_hf.models.blip import BLIP_LABEL_SMOOTHING

    assert BlipConfig.from_pretrained(stock_blip).text_config.label_smoothing == 0  # the stock config states none
    args = BlipArguments(dataset="unused", init_from=str(stock_blip), image_size=32, max_length=40)
    model, tok = build_blip(args)  # the whole table (40 tokens) is allowed
    assert args.max_length == 40
    assert model.config.text_config.label_smoothing == BLIP_LABEL_SMOOTHING == 0.1
    assert model.text_decoder.label_smoothing == BLIP_LABEL_SMOOTHING
    assert model.config.enc_token_id == tok.convert_tokens_to_ids("[ENC]") != tok.unk_token_id
    with pytest.raises(ValueError, match=r"--max_length 41 is longer"):
        build_blip(BlipArguments(dataset="unused", init_from=str(stock_blip), max_length=41))


@pytest.mark.parametrize("change, named", [
    ({"grid": 100_000}, "--grid is the number of blocks per side, 1 to 32"),  # hung in the tokenizer's block check
    ({"max_length": 2}, "--max_length must be at least 3 tokens"),  # trained with no word of any caption
    ({"image_size": 0}, "--image_size must be at least 1"),
    # Refused by the model's config or build_blip before, but once the data had loaded and not by flag.
    ({"momentum_distill": True, "momentum": 1.5}, r"--momentum is an EMA rate, in \[0, 1\); got 1.5"),
    ({"momentum_distill": True, "distill_alpha": -1.0}, r"--distill_alpha is a weight, in \[0, 1\]; got -1.0"),
    ({"momentum_distill": True, "queue_size": 0}, "--queue_size must be at least 1, got 0"),
    ({"model_size": "tiny", "image_size": 36}, "--image_size 36 is not a multiple of the tiny model's patch size 8"),
])
def test_blip_settings_that_would_hang_or_train_on_nothing_are_refused(change, named):
    with pytest.raises(ValueError, match=named):
        BlipArguments(dataset="unused", **change)
    assert BlipArguments(dataset="unused", grid=32, max_length=3).grid == 32

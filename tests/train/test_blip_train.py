import random
import re

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
                         image_size=32, max_length=48)
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
                              save_strategy="no", report_to="none", use_cpu=True, logging_steps=1)
    trainer = train(args, targs)
    assert trainer.state.global_step == 2
    assert all(h["loss"] > 0 for h in trainer.state.log_history if "loss" in h)


def test_a_from_scratch_image_tower_tells_images_apart():
    import torch

    torch.manual_seed(0)
    model, _ = build_blip(BlipArguments(model_size="tiny", image_size=32))
    w = model.vision_model.embeddings.patch_embedding.weight
    assert 0.01 < float(w.std()) < 0.03  # not transformers' 1e-10 default for BLIP vision
    with torch.no_grad():
        emb = model.image_embeds(torch.randn(2, 3, 32, 32))
    assert (emb[0, 0] - emb[1, 0]).abs().max() > 1e-2  # different images, different [CLS] embeddings


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

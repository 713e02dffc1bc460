"""BLIP's retrieval protocol: rank by ITC similarity, re-rank the top k with the ITM head, score = ITM logit
(match) + ITC similarity; recall@1/5/10 both ways. Before it, optionally, BLIP's retrieval fine-tuning
(ITC + ITM on the target's image-caption pairs, no LM) through the same Trainer as pretraining."""

import torch
from tqdm.auto import tqdm

from ..data.rows import one_caption, rgb
from ..files import write_text_atomic


def retrieval_transform(size: int):
    """The whole image stretched to size × size, as the BLIP export's `BlipImageProcessor` does (its resample is
    written to match)."""
    from torchvision.transforms import v2

    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


@torch.no_grad()
def retrieval_scores(model, pixel_values, input_ids: torch.Tensor, attention_mask=None,
                     k_test: int = 128, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`(i2t, t2i)`: the image → text `(I, T)` and text → image `(T, I)` score matrices, on the CPU (`recall_at_k`
    takes them as they are). An image's (a text's) ITC top `k_test` are re-ranked by ITM logit + ITC
    similarity, as in BLIP; the other pairs keep their ITC order below all of them (BLIP gives them all −100,
    which leaves recall@k for k > k_test to the order of the ids).

    `pixel_values`: one tensor of every image, or batches of them in order (a DataLoader), so that only the
    image embeddings the re-ranking needs are kept, not a test set of pixels."""
    if k_test < 1:
        raise ValueError(f"k_test is how many pairs per image and per text ITM re-ranks: at least 1, got {k_test}")
    device = next(model.parameters()).device
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    embeds, img_feats = [], []
    batches = pixel_values.split(batch_size) if isinstance(pixel_values, torch.Tensor) else pixel_values
    for batch in tqdm(batches, desc="image embeddings"):
        e = model.image_embeds(batch.to(device, non_blocking=True))
        embeds.append(e)
        img_feats.append(torch.nn.functional.normalize(model.vision_proj(e[:, 0]), dim=-1))
    embeds, img_feats = torch.cat(embeds), torch.cat(img_feats)
    txt_feats = []
    for s in range(0, len(input_ids), batch_size):
        out = model.text_encoder(input_ids=input_ids[s : s + batch_size].to(device),
                                 attention_mask=attention_mask[s : s + batch_size].to(device)).last_hidden_state
        txt_feats.append(torch.nn.functional.normalize(model.text_proj(out[:, 0]), dim=-1))
    sim = img_feats @ torch.cat(txt_feats).T  # (I, T)
    ids, mask = input_ids.to(device).clone(), attention_mask.to(device)
    if getattr(model.config, "enc_token_id", None) is not None:  # ITM reads [ENC] in place of the first token
        ids[:, 0] = model.config.enc_token_id
    i2t = torch.empty_like(sim)
    for i in tqdm(range(len(sim)), desc="ITM re-rank, image→text"):
        top = sim[i].topk(min(k_test, sim.shape[1])).indices
        itm = model.itm_logits(embeds[i : i + 1].expand(len(top), -1, -1), ids[top], mask[top])[:, 1]
        i2t[i] = _reranked(sim[i], top, itm + sim[i, top])
    t2i = torch.empty_like(sim.T)
    for j in tqdm(range(sim.shape[1]), desc="ITM re-rank, text→image"):
        top = sim[:, j].topk(min(k_test, sim.shape[0])).indices
        itm = model.itm_logits(embeds[top], ids[j : j + 1].expand(len(top), -1), mask[j : j + 1].expand(len(top), -1))[:, 1]
        t2i[j] = _reranked(sim[:, j], top, itm + sim[top, j])
    return i2t.cpu(), t2i.cpu()


def _reranked(sim: torch.Tensor, top: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """One row of scores: the re-ranked `top` get `scores`, the rest their ITC similarity shifted below the lowest
    of them (cosine similarities span at most 2), so that their order is still ITC's."""
    row = sim + (scores.min() - 2.0)
    row[top] = scores
    return row


def distinct_images(ds, column: str) -> list[int]:
    """For each row, the first row holding the same image: the same encoded bytes, or the same file when a row
    names its image by path. A captions dataset laid out one row per caption (COCO's five rows per image) holds
    each image several times; scored as distinct images, a caption's own image ties with its copies and the
    other captions of the image count as misses."""
    import hashlib

    from datasets import Image

    first: dict[bytes | str, int] = {}
    out = []
    encoded = ds.select_columns([column]).cast_column(column, Image(decode=False)).with_format("arrow")
    for batch in encoded.iter(batch_size=256):
        for value in batch.column(column).to_pylist():
            data, path = value["bytes"], value["path"]
            key = hashlib.sha1(data).digest() if data is not None else path
            out.append(first.setdefault(key, len(out)))
    return out


def recall_at_k(i2t: torch.Tensor, t2i: torch.Tensor, text_to_image: list[int], ks=(1, 5, 10)) -> dict:
    """TR@k from the image→text matrix, IR@k from the text→image matrix (BLIP computes them separately), by the
    package's `retrieval_recall` evaluate module on each query's top max(ks) ids (ranked here, where the
    matrices are)."""
    from collections import defaultdict

    from .metrics import load_metric

    num_images, num_texts = len(i2t), len(text_to_image)
    if tuple(i2t.shape) != (num_images, num_texts) or tuple(t2i.shape) != (num_texts, num_images):
        raise ValueError(f"score matrices {tuple(i2t.shape)} and {tuple(t2i.shape)} do not match {num_images} "
                         f"images × {num_texts} texts")
    texts_of = defaultdict(list)
    for j, image in enumerate(text_to_image):
        texts_of[image].append(j)
    captionless = [i for i in range(num_images) if not texts_of[i]]
    if captionless:
        # Text retrieval has nothing to find for such an image; counting it a miss would understate TR@k.
        raise ValueError(f"{len(captionless)} image(s) have no caption (first: image {captionless[0]}): text "
                         "retrieval needs at least one per image; leave them out of the test set")
    metric = load_metric("retrieval_recall")
    top_texts = i2t.topk(min(max(ks), num_texts), dim=1).indices.tolist()
    top_images = t2i.topk(min(max(ks), num_images), dim=1).indices.tolist()
    tr = metric.compute(predictions=top_texts, references=[texts_of[i] for i in range(num_images)], ks=ks)
    ir = metric.compute(predictions=top_images, references=[[i] for i in text_to_image], ks=ks)
    out = {**{f"tr@{k}": tr[f"r@{k}"] for k in ks}, **{f"ir@{k}": ir[f"r@{k}"] for k in ks}}
    out["tr_mean"] = sum(out[f"tr@{k}"] for k in ks) / len(ks)
    out["ir_mean"] = sum(out[f"ir@{k}"] for k in ks) / len(ks)
    return out


ROW_COLUMN = "__freeatm_row"


def finetune_retrieval(model_dir: str, dataset: str, output_dir: str, split: str = "train", image_column="image",
                       caption_column="caption", image_size: int | None = None, max_length: int = 35,
                       epochs: float = 6, max_steps: int = -1, learning_rate: float = 1e-5, batch_size: int = 32,
                       seed: int = 0, use_cpu=None, revision: str | None = None) -> str | None:
    """Fine-tune a BLIP checkpoint for retrieval with ITC + ITM (the LM loss is off, as in BLIP's retrieval
    fine-tuning) on `split`; images get a random resized crop (no flip: captions may say left and right), and
    an image with several captions contributes a random one per epoch. An image's id is the first row holding it
    (`distinct_images`: rows that repeat an image, one per caption, share it, as COCO's captions share BLIP's
    img_id): it keeps the image's features from an earlier epoch or another of its rows, in the batch or still in
    the momentum queue (`momentum_distill`), from being its own negative. Saves model and tokenizer to
    `output_dir` and returns it (None on the other processes of a distributed run, which leave the card and
    scoring to the main one)."""
    import random

    from torchvision.transforms import v2
    from transformers import AutoTokenizer, default_data_collator

    from .. import models  # noqa: F401  (registers the Auto classes)
    from ..data.reading import as_images, load
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from ..train.blip import BlipTrainer
    from .finetune import finetune_training_args
    from .frozen import load_model

    model = load_model(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model.config.lm_weight = 0.0
    size = image_size or model.config.vision_config.image_size
    model.set_image_size(size)  # BLIP fine-tunes at 384 from its 224-px pretraining: positions interpolated
    ds = load(dataset, split=split, revision=revision)
    for col in (image_column, caption_column):
        if col not in ds.column_names:
            raise ValueError(f"{dataset} has no column {col!r} (columns: {ds.column_names})")
    ds = as_images(ds, image_column, dataset)
    tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    rng = random.Random(seed)
    ds = ds.add_column(ROW_COLUMN, distinct_images(ds, image_column))

    def transform(batch):
        caps = [one_caption(c, rng) for c in batch[caption_column]]
        enc = tok(caps, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return {"pixel_values": [tf(rgb(im)) for im in batch[image_column]],
                "input_ids": list(enc.input_ids), "attention_mask": list(enc.attention_mask),
                "image_ids": batch[ROW_COLUMN]}

    args = finetune_training_args(output_dir, epochs, learning_rate, batch_size, seed, max_steps, use_cpu,
                                  weight_decay=0.05, lr_scheduler_type="cosine")
    callbacks = []
    if model.config.momentum_distill:  # else the momentum encoders stay frozen while their queues fill
        from ..train.callbacks import DistillAlphaCallback, MomentumUpdateCallback

        callbacks += [MomentumUpdateCallback(), DistillAlphaCallback(ramp_epochs=1)]  # BLIP's fine-tuning ramp
    trainer = BlipTrainer(model=model, args=args, train_dataset=ds.with_transform(transform), processing_class=tok,
                          data_collator=default_data_collator,  # rows come padded (see train.blip)
                          callbacks=callbacks)
    trainer.train()
    trainer.save_model(output_dir)
    if not trainer.is_world_process_zero():  # under accelerate launch one process writes the facts and scores
        return None
    _carry_card_facts(model_dir, output_dir, dataset, split, trainer.state.global_step, learning_rate)
    return output_dir


def _carry_card_facts(model_dir, output_dir, dataset: str, split: str, steps: int, learning_rate: float):
    """The pretraining facts (data, position prompts, hyper-parameters) go with the fine-tuned model, so its card
    still says what it is (a Free-ATM BLIP, not a mask-free baseline), with the fine-tuning added."""
    import json
    from pathlib import Path

    from ..hub.model_card import CARD_INFO_FILE, card_facts, public_dataset_name

    # A checkpoint that is not freeatm's, or out of reach: its card says less, nothing wrong.
    facts = card_facts(model_dir) or {"data": None, "training": None}
    facts["training"] = {**(facts.get("training") or {}), "retrieval_finetune":
                         f"{public_dataset_name(dataset)} [{split}], {steps} steps at lr {learning_rate}"}
    write_text_atomic(Path(output_dir) / CARD_INFO_FILE, json.dumps(facts, indent=2, default=str))

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainingArguments

from freeatm_hf.models.blip import (
    BlipATMConfig,
    BlipATMModel,
    export_stock,
    itc_loss,
    same_caption,
    sample_hard_negatives,
)

# initializer_range as build_blip starts from scratch: BlipVisionConfig's default (1e-10, meant for loading weights)
# gives every image nearly the same embeddings, which no ITM or ITC check could tell apart.
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, initializer_range=0.02)
TEXT = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            encoder_hidden_size=32, max_position_embeddings=40, bos_token_id=1, pad_token_id=0, sep_token_id=2)


def tiny(**kw):
    torch.manual_seed(0)
    return BlipATMModel(BlipATMConfig(vision_config=VISION, text_config=TEXT, image_text_hidden_size=16,
                                      enc_token_id=3, **kw))


def test_itc_loss_against_a_per_sample_reference():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    t = 0.07
    ref = 0.0
    for i in range(5):  # −log p(text_i | image_i) and −log p(image_i | text_i), written out
        si = [float(img[i] @ txt[j]) / t for j in range(5)]
        st = [float(img[j] @ txt[i]) / t for j in range(5)]
        ref += (-(si[i] - math.log(sum(math.exp(v) for v in si))) - (st[i] - math.log(sum(math.exp(v) for v in st)))) / 2
    loss, sim = itc_loss(img, txt, t)
    assert loss.item() == pytest.approx(ref / 5, rel=1e-5)
    assert sim.shape == (5, 5)


def test_itc_with_image_ids_spreads_the_target_over_every_pair_of_the_same_image():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    ids, t = torch.tensor([5, 5, 6, 7]), 0.07
    ref = 0.0
    for i in range(4):  # −Σ_j target_ij log p(j | i), target uniform over the pairs showing image ids[i]
        same = [j for j in range(4) if ids[j] == ids[i]]
        for side in (img[i] @ txt.T / t, txt[i] @ img.T / t):
            logp = side - torch.logsumexp(side, 0)
            ref += -sum(float(logp[j]) for j in same) / len(same) / 2
    loss, _ = itc_loss(img, txt, t, image_ids=ids)
    assert loss.item() == pytest.approx(ref / 4, rel=1e-5)
    # Distinct ids: exactly the one-positive loss.
    torch.testing.assert_close(itc_loss(img, txt, t, torch.tensor([3, 1, 2, 0]))[0], itc_loss(img, txt, t)[0])


def test_hard_negatives_never_pick_a_pair_of_the_same_image():
    g = torch.Generator().manual_seed(0)
    sim = torch.zeros(4, 4)
    sim[0, 1] = sim[1, 0] = 30.0  # pairs 0 and 1 are the most similar, but show the same image
    ids = torch.tensor([5, 5, 6, 7])
    for _ in range(200):
        ni, nt = sample_hard_negatives(sim, generator=g, image_ids=ids)
        assert (ids[ni] != ids).all() and (ids[nt] != ids).all()


def test_forward_with_image_ids_matches_the_same_image_captions_and_skips_itm_for_one_image():
    model = tiny().eval()
    x, ids = torch.randn(3, 3, 32, 32), torch.randint(4, 120, (3, 9))
    x[1] = x[0]  # two captions of one image
    out = model(x, ids, image_ids=torch.tensor([0, 0, 1]))
    assert torch.isfinite(out.loss) and out.loss_itm > 0
    one = model(x[:2], ids[:2], image_ids=torch.tensor([4, 4]))  # one image only: no negative pair to match
    assert one.loss_itm == 0 and torch.isfinite(one.loss)


def test_hard_negatives_never_pick_the_positive_and_prefer_similar_pairs():
    torch.manual_seed(0)
    sim = torch.randn(6, 6) + 20 * torch.eye(6)  # the positive is by far the most similar
    sim[0, 1] = sim[1, 0] = 15.0  # pair (0, 1) is confusable
    g = torch.Generator().manual_seed(0)
    picks_img, picks_txt = [], []
    for _ in range(300):
        ni, nt = sample_hard_negatives(sim, generator=g)
        assert (ni != torch.arange(6)).all() and (nt != torch.arange(6)).all()
        picks_img.append(ni)
        picks_txt.append(nt)
    assert (torch.stack(picks_img)[:, 0] == 1).float().mean() > 0.95  # the hard negative of text 0 is image 1


def test_weights_round_trip_into_stock_blip_retrieval_with_the_same_scores(tmp_path):
    from transformers import BlipForImageTextRetrieval

    model = tiny().eval()
    export_stock(model, tmp_path)
    stock = BlipForImageTextRetrieval.from_pretrained(tmp_path).eval()
    x, ids = torch.randn(3, 3, 32, 32), torch.randint(4, 120, (3, 9))
    ids[:, 0] = 1
    ones = torch.ones_like(ids)
    with torch.no_grad():
        emb = model.image_embeds(x)
        torch.testing.assert_close(stock(input_ids=ids, pixel_values=x, use_itm_head=True).itm_score,
                                   model.itm_logits(emb, ids, ones))
        i, t = model.itc_features(emb, ids, ones)
        torch.testing.assert_close(stock(input_ids=ids, pixel_values=x, use_itm_head=False).itm_score, i @ t.T)


def test_save_load_round_trip_is_exact(tmp_path):
    from transformers import AutoModel

    import freeatm_hf.models  # noqa: F401

    model = tiny()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is BlipATMModel
    for (n, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n


def test_a_few_cpu_trainer_steps_reduce_each_loss(tmp_path):
    from datasets import Dataset

    from freeatm_hf.train.blip import BlipTrainer

    torch.manual_seed(0)
    n = 8
    images = torch.rand(n, 3, 32, 32)
    ids = torch.randint(4, 120, (n, 12))
    ids[:, 0] = 1
    ds = Dataset.from_dict({"pixel_values": images.tolist(), "input_ids": ids.tolist()}).with_format("torch")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=40, learning_rate=1e-3,
                             logging_steps=5, save_strategy="no", report_to="none", use_cpu=True, seed=0)
    trainer = BlipTrainer(model=tiny(), args=args, train_dataset=ds)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss_itc" in h]
    for part in ("loss_itc", "loss_itm", "loss_lm"):
        assert logs[-1][part] < logs[0][part], part
    for h in logs:  # the parts average the same steps as `loss` (all weights 1 here)
        assert h["loss"] == pytest.approx(h["loss_itc"] + h["loss_itm"] + h["loss_lm"], rel=1e-4)


def test_a_batch_of_one_has_no_itm_pair_but_still_trains():
    model = tiny().train()
    out = model(torch.randn(1, 3, 32, 32), torch.randint(4, 120, (1, 9)))
    assert out.loss_itm.item() == 0.0 and torch.isfinite(out.loss)
    out.loss.backward()


@pytest.mark.parametrize("prompts,grid", [("position", 4), ("none", 3)])
def test_model_card_states_the_prompts_and_grid_it_was_trained_with(prompts, grid, tmp_path):
    from freeatm_hf.hub.model_card import write_model_card

    card = write_model_card(tmp_path, tiny().config, data={"dataset": "me/scenes", "prompts": prompts, "grid": grid,
                                                          "min_attention_peak": 0.05})
    # The cut is stated where objects were read: a baseline reads none (an older run's facts may still hold one).
    said = "Objects with attention_peak below 0.05 were taken as not drawn and left out." in card.text
    assert said is (prompts == "position")
    if prompts == "position":
        assert "Position prompts on a 4×4 grid (blocks 1–16, row-major)." in card.text
        assert "attention-masks" in card.data.tags
    else:
        assert "no position prompts" in card.text and "Position prompts on" not in card.text
        assert "baseline" in card.data.tags
    assert "3×3" not in card.text


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_momentum_itc_against_blips_formula(alpha):
    """With momentum encoders equal to the online ones (as at the start), BLIP's ITC is cross-entropy of the
    online features against [batch momentum features; queue] with targets α·softmax(momentum sims) + (1−α)·one-hot;
    the queue then holds the batch's momentum features."""
    model = tiny(momentum_distill=True, queue_size=5, distill_alpha=alpha).train()
    x, ids = torch.randn(3, 3, 32, 32), torch.randint(4, 120, (3, 9))
    ones = torch.ones_like(ids)
    img_q, txt_q = model.image_queue.clone(), model.text_queue.clone()
    assert torch.allclose(img_q.norm(dim=1), torch.ones(5)) and model.queue_ptr.item() == 0
    with torch.no_grad():
        i, t = model.itc_features(model.image_embeds(x), ids, ones)
        temp = model.temp.clamp(0.001, 0.5)
        text_all, image_all = torch.cat([t, txt_q]), torch.cat([i, img_q])
        eye = torch.eye(3, 8)

        def side(a, keys):
            logits = a @ keys.T / temp
            target = alpha * logits.softmax(1) + (1 - alpha) * eye
            return -(logits.log_softmax(1) * target).sum(1).mean()

        expected = (side(i, text_all) + side(t, image_all)) / 2
        out = model(x, ids, ones)
    torch.testing.assert_close(out.loss_itc, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sim_i2t, i @ t.T / temp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.text_queue[:3], t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.image_queue[3:], img_q[3:])  # the rest untouched
    assert model.queue_ptr.item() == 3
    model(x, ids, ones)  # the ring wraps: 3 more from position 3 of 5
    assert model.queue_ptr.item() == 1
    model.eval()(x, ids, ones)  # evaluation never writes the queues
    assert model.queue_ptr.item() == 1


def test_momentum_itc_with_image_ids_takes_queued_features_of_the_same_image_as_positives():
    """BLIP's retrieval fine-tuning: targets α·softmax(momentum sims) + (1−α)·positives, where the positives are the
    batch's and the queue's entries of the same image id, spread evenly."""
    alpha = 0.4
    model = tiny(momentum_distill=True, queue_size=5, distill_alpha=alpha).train()
    x, ids = torch.randn(3, 3, 32, 32), torch.randint(4, 120, (3, 9))
    ones = torch.ones_like(ids)
    model(x, ids, ones, image_ids=torch.tensor([7, 8, 9]))
    assert model.image_id_queue.tolist() == [7, 8, 9, -1, -1]
    img_q, txt_q = model.image_queue.clone(), model.text_queue.clone()
    x2, ids2 = torch.randn(3, 3, 32, 32), torch.randint(4, 120, (3, 9))
    batch_ids = torch.tensor([9, 10, 7])
    with torch.no_grad():
        i, t = model.itc_features(model.image_embeds(x2), ids2, ones)
        temp = model.temp.clamp(0.001, 0.5)
        positives = torch.zeros(3, 8)
        positives[0, [0, 3 + 2]] = 0.5  # image 9: itself and queue slot 2
        positives[1, 1] = 1.0
        positives[2, [2, 3 + 0]] = 0.5  # image 7: itself and queue slot 0

        def side(a, keys):
            logits = a @ keys.T / temp
            target = alpha * logits.softmax(1) + (1 - alpha) * positives
            return -(logits.log_softmax(1) * target).sum(1).mean()

        expected = (side(i, torch.cat([t, txt_q])) + side(t, torch.cat([i, img_q]))) / 2
        out = model(x2, ids2, ones, image_ids=batch_ids)
    torch.testing.assert_close(out.loss_itc, expected, rtol=1e-5, atol=1e-6)
    assert model.image_id_queue.tolist() == [7, 8, 9, 9, 10]  # written at slots 3, 4, then 0 (the ring wraps)


def test_a_checkpoint_saved_without_the_image_id_queue_loads_with_empty_ids_and_its_own_temperature(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    import freeatm_hf.models  # noqa: F401

    model = tiny(momentum_distill=True, queue_size=4)
    with torch.no_grad():
        model.temp.fill_(0.05)
        model.image_id_queue.copy_(torch.arange(4))
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["image_id_queue"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.image_id_queue.tolist() == [-1] * 4  # no id rather than memory garbage matching a real one
    assert loaded.temp.item() == pytest.approx(0.05)  # what was loaded is left alone


def test_momentum_encoders_follow_the_online_ones_by_ema_and_survive_save_and_stock_init(tmp_path):
    from transformers import AutoModel

    import freeatm_hf.models  # noqa: F401
    from freeatm_hf.train.blip import BlipArguments, build_blip

    model = tiny(momentum_distill=True, queue_size=6, momentum=0.9)
    online, mom = model.vision_proj.weight, model.vision_proj_m.weight
    assert torch.equal(online, mom) and not mom.requires_grad
    with torch.no_grad():
        before = mom.clone()
        online.add_(1.0)
    model.momentum_update()
    torch.testing.assert_close(mom, 0.9 * before + 0.1 * online)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModel.from_pretrained(tmp_path / "ckpt")
    for (n, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n
    # From a stock BLIP checkpoint (no momentum part): momentum copies of its weights, fresh unit queues.
    export_stock(model, tmp_path / "stock")
    tok_dir = tmp_path / "stock"
    from freeatm_hf.generate.clip_vocab import load_tokenizer

    load_tokenizer(model_max_length=40).save_pretrained(tok_dir)
    started, _ = build_blip(BlipArguments(dataset="unused", init_from=str(tok_dir), momentum_distill=True,
                                          queue_size=6, image_size=32))
    for online_mod, mom_mod in started.momentum_pairs():
        for (n, a), b in zip(online_mod.state_dict().items(), mom_mod.state_dict().values()):
            assert torch.equal(a, b), n
    assert torch.allclose(started.image_queue.norm(dim=1), torch.ones(6)) and started.queue_ptr.item() == 0
    assert torch.equal(started.vision_proj.weight, model.vision_proj.weight)


def test_lm_loss_teaches_the_end_token_when_it_is_also_the_pad_token():
    # CLIP-style tokenizers (the offline one) pad with their end token: only the attention mask tells padding.
    import torch.nn.functional as F

    text = {**TEXT, "pad_token_id": 2, "sep_token_id": 2}
    torch.manual_seed(0)
    model = BlipATMModel(BlipATMConfig(vision_config=VISION, text_config=text, image_text_hidden_size=16,
                                       enc_token_id=3)).eval()
    ids = torch.tensor([[1, 40, 41, 42, 2, 2, 2], [1, 50, 51, 52, 53, 54, 2]])
    att = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(px, ids, att)
        emb = model.image_embeds(px)
        logits = model.text_decoder(input_ids=ids, attention_mask=att, encoder_hidden_states=emb).logits
    labels = ids.masked_fill(att == 0, -100)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                          ignore_index=-100, label_smoothing=model.text_decoder.label_smoothing)
    assert (labels[:, 1:] == 2).sum() == 2  # both end tokens are targets
    assert model.text_decoder.label_smoothing == 0.1  # BLIP's; transformers' BlipTextConfig defaults to 0
    torch.testing.assert_close(out.loss_lm, ref)


def test_a_checkpoint_started_at_another_size_gets_interpolated_positions(tmp_path):
    """--init_from a 64-px checkpoint at --image_size 32: each vision tower's position table is the stock
    bicubic interpolation (what `interpolate_pos_encoding=True` computes on the fly), saved with the new size."""
    from freeatm_hf.generate.clip_vocab import load_tokenizer
    from freeatm_hf.train.blip import BlipArguments, build_blip

    torch.manual_seed(0)
    big = BlipATMModel(BlipATMConfig(vision_config={**VISION, "image_size": 64}, text_config=TEXT,
                                     image_text_hidden_size=16, enc_token_id=3))
    export_stock(big, tmp_path / "stock")
    load_tokenizer(model_max_length=40).save_pretrained(tmp_path / "stock")
    model, _ = build_blip(BlipArguments(dataset="unused", init_from=str(tmp_path / "stock"), image_size=32,
                                        momentum_distill=True, queue_size=4))
    assert model.config.vision_config.image_size == 32
    px = torch.randn(2, 3, 32, 32)
    stock = big.vision_model.eval()  # transformers' BlipVisionModel, at its own 64 px
    with torch.no_grad():
        want = stock(pixel_values=px, interpolate_pos_encoding=True).last_hidden_state
        for tower in (model.vision_model, model.vision_model_m):
            assert tower.embeddings.position_embedding.shape == (1, 1 + 16, VISION["hidden_size"])
            torch.testing.assert_close(tower.eval()(pixel_values=px).last_hidden_state, want)
    model.save_pretrained(tmp_path / "at32")
    again = BlipATMModel.from_pretrained(tmp_path / "at32")
    assert again.config.vision_config.image_size == 32
    torch.testing.assert_close(again.vision_model.embeddings.position_embedding,
                               model.vision_model.embeddings.position_embedding)
    with pytest.raises(ValueError, match="not a multiple of the vision patch size"):
        model.set_image_size(36)
    # Its text position table holds 40 tokens: the default length fits itself to it, a longer one is refused.
    args = BlipArguments(dataset="unused", init_from=str(tmp_path / "stock"))
    build_blip(args)
    assert args.max_length == 40
    with pytest.raises(ValueError, match=r"--max_length 72 is longer than .* text position table \(40 tokens\)"):
        build_blip(BlipArguments(dataset="unused", init_from=str(tmp_path / "stock"), max_length=72))


class DistillToy(torch.nn.Module):
    """The least a model needs for DistillAlphaCallback: a BLIP-like config and a loss."""

    config = SimpleNamespace(momentum_distill=True, distill_alpha=0.4)

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return {"loss": (self.w * x).sum()}


def test_distillation_weight_ramps_over_blips_epochs_of_the_trainers_loader(tmp_path):
    """Two epochs when pretraining, one when fine-tuning, counted in optimizer steps of the real loader (not
    from max_steps, which --max_steps or a fractional epoch count cut short); a stream has no epoch."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from freeatm_hf.train.callbacks import DistillAlphaCallback

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            seen.append(model.distill_alpha)

    rows = [{"x": torch.ones(1)} for _ in range(20)]  # 10 batches of 2: 5 optimizer steps per epoch at accumulation 2
    for ramp_epochs, max_steps in ((2, 12), (1, 7)):
        seen = []
        args = TrainingArguments(tmp_path / str(ramp_epochs), per_device_train_batch_size=2, max_steps=max_steps,
                                 gradient_accumulation_steps=2, report_to=[], use_cpu=True, save_strategy="no")
        Trainer(DistillToy(), args, train_dataset=rows, callbacks=[DistillAlphaCallback(ramp_epochs), Record()]).train()
        ramp = 5 * ramp_epochs
        assert seen == pytest.approx([0.4 * min(1, k / ramp) for k in range(max_steps)])
    stream = DistillAlphaCallback()
    stream.on_train_begin(SimpleNamespace(gradient_accumulation_steps=1), SimpleNamespace(max_steps=1000), None,
                          train_dataloader=iter([]))
    assert stream.ramp_steps == 100  # BLIP pretraining's share: 2 of its 20 epochs

    model = tiny(momentum_distill=True, queue_size=4, distill_alpha=0.4)
    # The loss uses the current weight (None: the config's).
    model.eval()  # no enqueueing: the same queues for every call
    px, ids = torch.randn(3, 3, 32, 32), torch.randint(4, 120, (3, 9))
    losses = {}
    for alpha in (0.0, 0.4, None):
        model.distill_alpha = alpha
        with torch.no_grad():
            losses[alpha] = model(px, ids).loss_itc
    assert torch.equal(losses[None], losses[0.4]) and not torch.allclose(losses[0.0], losses[0.4])


def test_a_checkpoint_without_a_caption_decoder_starts_it_from_the_text_encoder(tmp_path):
    """The retrieval layout (Salesforce's blip-itm-*, `export --to blip-retrieval`) has no decoder: it starts as
    BLIP shares it with the encoder, and the LM head's bias (no init of transformers' covers it) at zero, not as
    uninitialised memory (an LM loss of 1e23)."""
    from freeatm_hf.generate.clip_vocab import load_tokenizer
    from freeatm_hf.train.blip import BlipArguments, build_blip

    torch.manual_seed(0)
    export_stock(tiny(), tmp_path / "stock")
    load_tokenizer(model_max_length=40).save_pretrained(tmp_path / "stock")
    torch.manual_seed(1)
    with torch.device("cpu"):
        torch.empty(10_000_000).fill_(3e38)  # freed memory that an uninitialised tensor may reuse
    model, _ = build_blip(BlipArguments(dataset="unused", init_from=str(tmp_path / "stock"), image_size=32))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.equal(model.text_decoder.cls.predictions.bias, torch.zeros_like(model.text_decoder.cls.predictions.bias))
    enc, dec = model.text_encoder.state_dict(), model.text_decoder.bert.state_dict()
    assert set(enc) == set(dec) and all(torch.equal(enc[k], dec[k]) for k in enc)
    px, ids = torch.randn(2, 3, 32, 32), torch.randint(4, 120, (2, 9))
    with torch.no_grad():
        assert model(px, ids).loss_lm < 2 * math.log(model.config.text_config.vocab_size)


def test_a_captioning_checkpoint_starts_its_text_encoder_from_the_caption_decoder(tmp_path, caplog):
    """The captioning layout (Salesforce's blip-image-captioning-*, `export --to blip-captioning`) has a decoder and no
    text encoder: the encoder starts from the decoder's BERT (it was left random), the decoder and image tower are
    the checkpoint's, and the log names the parts that start fresh."""
    import logging

    from freeatm_hf.generate.clip_vocab import load_tokenizer
    from freeatm_hf.train.blip import BlipArguments, build_blip

    torch.manual_seed(0)
    source = tiny()
    export_stock(source, tmp_path / "stock", kind="captioning")
    load_tokenizer(model_max_length=40).save_pretrained(tmp_path / "stock")
    caplog.set_level(logging.INFO, "freeatm_hf.train.blip")
    torch.manual_seed(1)
    model, _ = build_blip(BlipArguments(dataset="unused", init_from=str(tmp_path / "stock"), image_size=32))
    enc, dec = model.text_encoder.state_dict(), model.text_decoder.bert.state_dict()
    assert set(enc) == set(dec) and all(torch.equal(enc[k], dec[k]) for k in enc)
    src = source.state_dict()
    assert all(torch.equal(v, src[f"text_decoder.{k}"]) for k, v in model.text_decoder.state_dict().items())
    assert all(torch.equal(v, src[f"vision_model.{k}"]) for k, v in model.vision_model.state_dict().items())
    assert f"{len(enc)} text encoder tensors started from the caption decoder" in caplog.text
    assert "itm_head, text_proj, vision_proj start fresh" in caplog.text


def test_distillation_ramp_counts_an_epochs_last_partial_accumulation_as_a_step(tmp_path):
    """11 batches at accumulation 2: Trainer takes 6 optimizer steps an epoch (the last on one batch), and the
    ramp of one epoch is those 6 steps, as Trainer counted them."""
    from transformers import Trainer, TrainingArguments

    from freeatm_hf.train.callbacks import DistillAlphaCallback

    rows = [{"x": torch.ones(1)} for _ in range(22)]  # 11 batches of 2
    cb = DistillAlphaCallback(ramp_epochs=1)
    args = TrainingArguments(tmp_path, per_device_train_batch_size=2, num_train_epochs=1, gradient_accumulation_steps=2,
                             report_to=[], use_cpu=True, save_strategy="no")
    trainer = Trainer(DistillToy(), args, train_dataset=rows, callbacks=[cb])
    trainer.train()
    assert cb.ramp_steps == trainer.state.global_step == 6


def test_hard_negatives_draw_a_texts_image_from_its_column_and_an_images_text_from_its_row():
    """sim_i2t[i, j] scores image i with text j: text j's negative image is drawn by column j, image i's negative
    text by row i. Image 2 resembles text 0, but image 0 resembles no other text."""
    sim = 20 * torch.eye(4)
    sim[2, 0] = 15.0
    g = torch.Generator().manual_seed(0)
    draws = [sample_hard_negatives(sim, generator=g) for _ in range(300)]
    neg_img = torch.stack([d[0] for d in draws])
    neg_txt = torch.stack([d[1] for d in draws])
    assert (neg_img[:, 0] == 2).float().mean() > 0.95  # text 0's hard negative: image 2
    assert (neg_txt[:, 2] == 0).float().mean() > 0.95  # image 2's hard negative: text 0
    assert 0.2 < (neg_txt[:, 0] == 2).float().mean() < 0.5  # image 0: its row is flat, any other text


def test_itm_loss_against_its_definition_with_the_drawn_hard_negatives():
    """ITM: cross-entropy of the match head over [positive pairs → 1; (negative image, text) → 0; (image, negative
    text) → 0], the texts read with [ENC] as their first token and their own attention masks."""
    import torch.nn.functional as F

    model = tiny().eval()
    x, ids = torch.randn(3, 3, 32, 32), torch.randint(4, 120, (3, 9))
    ids[:, 0] = 1
    att = torch.ones_like(ids)
    att[1, 6:], att[2, 4:] = 0, 0
    torch.manual_seed(7)
    with torch.no_grad():
        out = model(x, ids, att)
        emb = model.image_embeds(x)
        assert (emb[0] - emb[1]).abs().max() > 0.1  # images the match head can tell apart
        i, t = model.itc_features(emb, ids, att)
        torch.manual_seed(7)  # the same draws as the forward made
        neg_img, neg_txt = sample_hard_negatives(i @ t.T / model.temp)
        enc = ids.clone()
        enc[:, 0] = 3  # enc_token_id
        logits = torch.cat([model.itm_logits(emb, enc, att), model.itm_logits(emb[neg_img], enc, att),
                            model.itm_logits(emb, enc[neg_txt], att[neg_txt])])
    ref = F.cross_entropy(logits, torch.tensor([1] * 3 + [0] * 6))
    torch.testing.assert_close(out.loss_itm, ref)


def test_a_pair_with_the_same_caption_is_never_drawn_as_a_hard_negative():
    """Pairs 0 and 1 share their caption (the padding past it aside) and are the most similar: each would be the
    other's negative, a match labelled a mismatch. Pair 3's caption is pair 2's with one more token."""
    ids = torch.tensor([[1, 5, 6, 2, 0], [1, 5, 6, 2, 9], [1, 7, 2, 0, 0], [1, 7, 2, 8, 0]])
    att = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    same = same_caption(ids, att)
    assert same.tolist() == [[True, True, False, False], [True, True, False, False],
                             [False, False, True, False], [False, False, False, True]]
    sim = torch.zeros(4, 4)
    sim[0, 1] = sim[1, 0] = 30.0
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        ni, nt = sample_hard_negatives(sim, generator=g, same_text=same)
        assert not same[torch.arange(4), ni].any() and not same[torch.arange(4), nt].any()
    # One caption throughout: nothing left to draw, said by -1.
    ni, nt = sample_hard_negatives(sim, generator=g, same_text=torch.ones(4, 4, dtype=torch.bool))
    assert ni.tolist() == nt.tolist() == [-1] * 4


def test_itm_leaves_out_the_pairs_of_a_repeated_caption():
    """ITM against its definition where pairs 0 and 1 repeat a caption: their only negatives are pair 2's image and
    text; pair 2 draws either. One caption for the whole batch leaves ITM nothing to learn from."""
    import torch.nn.functional as F

    model = tiny().eval()
    x, ids = torch.randn(3, 3, 32, 32), torch.randint(4, 120, (3, 9))
    ids[:, 0], ids[1] = 1, ids[0]
    att = torch.ones_like(ids)
    enc = ids.clone()
    enc[:, 0] = 3  # enc_token_id
    with torch.no_grad():
        emb = model.image_embeds(x)
        for seed in range(4):  # the old draw picked the repeated caption for about half of them
            torch.manual_seed(seed)
            out = model(x, ids, att)
            torch.manual_seed(seed)  # the same draw for pair 2 as the forward made
            i, t = model.itc_features(emb, ids, att)
            neg_img, neg_txt = sample_hard_negatives(i @ t.T / model.temp, same_text=same_caption(ids, att))
            assert neg_img[:2].tolist() == neg_txt[:2].tolist() == [2, 2]
            logits = torch.cat([model.itm_logits(emb, enc, att), model.itm_logits(emb[neg_img], enc, att),
                                model.itm_logits(emb, enc[neg_txt], att[neg_txt])])
            torch.testing.assert_close(out.loss_itm, F.cross_entropy(logits, torch.tensor([1] * 3 + [0] * 6)))
        one = model(x, ids[[0, 0, 0]], att)
    assert one.loss_itm == 0 and torch.isfinite(one.loss)


def test_lm_loss_feeds_the_decoder_its_bos_token_first_and_the_loss_weights_apply():
    import torch.nn.functional as F

    model = tiny(itc_weight=2.0, itm_weight=0.5, lm_weight=3.0).eval()
    ids = torch.randint(4, 120, (2, 7))
    ids[:, 0] = 3  # a tokenizer's first token ([CLS] / [ENC]): the decoder reads [DEC] = bos (1) instead
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(px, ids)
        dec = ids.clone()
        dec[:, 0] = 1
        logits = model.text_decoder(input_ids=dec, encoder_hidden_states=model.image_embeds(px)).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), dec[:, 1:].reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(out.loss_lm, ref)
    torch.testing.assert_close(out.loss, 2.0 * out.loss_itc + 0.5 * out.loss_itm + 3.0 * out.loss_lm)


def test_the_learned_temperature_is_clamped_to_blips_range_before_use():
    model = tiny().eval()
    x, ids = torch.randn(3, 3, 32, 32), torch.randint(4, 120, (3, 9))
    with torch.no_grad():
        model.temp.fill_(2.0)
        out = model(x, ids)
        i, t = model.itc_features(model.image_embeds(x), ids, torch.ones_like(ids))
    assert model.temp.item() == pytest.approx(0.5)
    torch.testing.assert_close(out.loss_itc, itc_loss(i, t, 0.5)[0])


def test_momentum_itc_targets_and_queues_come_from_the_momentum_encoders():
    """Once the momentum encoders differ from the online ones (after EMA steps): the online features are scored
    against the momentum features and the queues, the targets are the momentum model's, and the queues take
    the momentum features (BLIP's formula, each piece computed apart from the model)."""
    import torch.nn.functional as F

    alpha = 0.4
    model = tiny(momentum_distill=True, queue_size=5, distill_alpha=alpha).train()
    with torch.no_grad():
        for _, mom in model.momentum_pairs():
            for p in mom.parameters():
                p.add_(0.05 * torch.randn_like(p))
    x, ids = torch.randn(3, 3, 32, 32), torch.randint(4, 120, (3, 9))
    ones = torch.ones_like(ids)
    img_q, txt_q = model.image_queue.clone(), model.text_queue.clone()
    with torch.no_grad():
        i, t = model.itc_features(model.image_embeds(x), ids, ones)
        i_m = F.normalize(model.vision_proj_m(model.vision_model_m(pixel_values=x).last_hidden_state[:, 0]), dim=-1)
        text_m = model.text_encoder_m(input_ids=ids, attention_mask=ones).last_hidden_state
        t_m = F.normalize(model.text_proj_m(text_m[:, 0]), dim=-1)
        temp = model.temp.clamp(0.001, 0.5)
        eye = torch.eye(3, 8)

        def side(online, momentum, keys):
            target = alpha * (momentum @ keys.T / temp).softmax(1) + (1 - alpha) * eye
            return -((online @ keys.T / temp).log_softmax(1) * target).sum(1).mean()

        expected = (side(i, i_m, torch.cat([t_m, txt_q])) + side(t, t_m, torch.cat([i_m, img_q]))) / 2
        out = model(x, ids, ones)
    assert not torch.allclose(i_m, i, atol=1e-3) and not torch.allclose(t_m, t, atol=1e-3)
    torch.testing.assert_close(out.loss_itc, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sim_i2t, i @ t_m.T / temp, rtol=1e-5, atol=1e-6)  # what hard negatives see
    torch.testing.assert_close(model.image_queue[:3], i_m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.text_queue[:3], t_m, rtol=1e-5, atol=1e-6)


def test_bad_momentum_settings_are_refused():
    for bad in ({"momentum": 1.0}, {"momentum": -0.1}, {"distill_alpha": 1.5}, {"queue_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BlipATMConfig(**bad)

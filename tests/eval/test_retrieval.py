import json

import pytest
import torch

from freeatm_hf.eval.metrics import load_metric


def test_recall_at_k_against_a_hand_computed_matrix():
    from freeatm_hf.eval.retrieval import recall_at_k

    # 3 images, 4 texts: texts 0, 1 → image 0; text 2 → image 1; text 3 → image 2.
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.0],   # image 0: best text 0 (a hit at rank 1)
                        [0.8, 0.2, 0.3, 0.1],   # image 1: its text 2 ranks 2nd → miss at 1, hit at 2
                        [0.1, 0.2, 0.3, 0.4]])  # image 2: its text 3 ranks 1st
    r = recall_at_k(sim, sim.T, text_to_image=[0, 0, 1, 2], ks=(1, 2))
    assert r["tr@1"] == pytest.approx(200 / 3) and r["tr@2"] == 100.0
    # Texts → images (columns): text 0 → image 0 first ✓; text 1 → image 0 has its lowest score ✗ (3rd of 3);
    # text 2 → image 0 scores 0.5 above image 1's 0.3 ✗ (2nd); text 3 → image 2 first ✓.
    assert r["ir@1"] == 50.0 and r["ir@2"] == 75.0
    assert r["tr_mean"] == pytest.approx((200 / 3 + 100) / 2) and r["ir_mean"] == 62.5


def test_the_recall_module_scores_ranked_ids_against_brute_force_ranks():
    """The module sees each query's top ids; a full ranking of random scores is the reference."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 30, generator=g)
    relevant = [torch.randperm(30, generator=g)[: 1 + q % 3].tolist() for q in range(50)]
    rank = [min(scores[q].argsort(descending=True).tolist().index(i) for i in relevant[q]) for q in range(50)]
    r = load_metric("retrieval_recall").compute(predictions=scores.topk(10, dim=1).indices.tolist(),
                                                references=relevant, ks=(1, 5, 10))
    assert r == {f"r@{k}": pytest.approx(100 * sum(x < k for x in rank) / 50) for k in (1, 5, 10)}
    assert 0 < r["r@1"] < r["r@5"] < r["r@10"] < 100


def test_shape_mismatch_is_named():
    from freeatm_hf.eval.retrieval import recall_at_k

    with pytest.raises(ValueError, match="do not match"):
        recall_at_k(torch.zeros(1, 2), torch.zeros(2, 1), text_to_image=[0])


def test_blip_protocol_runs_and_reranks_only_the_top_k():
    from freeatm_hf.eval.retrieval import recall_at_k, retrieval_scores
    from tests.models.test_blip import tiny

    model = tiny().eval()
    x, ids = torch.randn(4, 3, 32, 32), torch.randint(4, 120, (6, 9))
    sizes = []
    itm = model.itm_logits
    model.itm_logits = lambda e, i, m: sizes.append(len(i)) or itm(e, i, m)
    i2t, t2i = retrieval_scores(model, x, ids, k_test=2)
    del model.itm_logits
    assert i2t.shape == (4, 6) and t2i.shape == (6, 4)
    # Scored without autograd: a graph over a whole test set's embeddings and re-rankings would hold them all.
    assert not i2t.requires_grad and not t2i.requires_grad
    assert sizes == [2] * (4 + 6)  # two pairs re-ranked per image and per text
    r = recall_at_k(i2t, t2i, text_to_image=[0, 0, 1, 2, 3, 3])
    assert set(r) >= {"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10"}
    assert all(0 <= v <= 100 for v in r.values())

    # With an [ENC] token the ITM re-ranking reads it in place of the first token, as training does.
    model.config.enc_token_id = 3
    seen = []
    itm = model.itm_logits
    model.itm_logits = lambda e, i, m: seen.append(i[:, 0].unique().tolist()) or itm(e, i, m)
    retrieval_scores(model, x, ids, k_test=2)
    assert seen and all(first == [3] for first in seen)
    assert (ids[:, 0] != 3).all()  # the caller's ids are left as they were


class GivenFeatures(torch.nn.Module):
    """BLIP's retrieval interface over given ITC features (pixel values and text ids are their indices), with an
    ITM head that scores every pair alike."""

    def __init__(self, image_features, text_features, itm_logit: float):
        super().__init__()
        self.images, self.texts, self.itm_logit = image_features, text_features, itm_logit
        self.vision_proj = self.text_proj = torch.nn.Identity()
        self.weight = torch.nn.Parameter(torch.zeros(()))  # for the device
        self.config = type("Config", (), {"enc_token_id": None})()

    def image_embeds(self, pixel_values):
        return self.images[pixel_values.long()][:, None]

    def text_encoder(self, input_ids, attention_mask):
        return type("Out", (), {"last_hidden_state": self.texts[input_ids[:, 0]][:, None]})()

    def itm_logits(self, embeds, input_ids, attention_mask):
        return torch.full((len(input_ids), 2), self.itm_logit)


def test_pairs_past_k_test_keep_their_itc_order_below_the_reranked_ones():
    from freeatm_hf.eval.retrieval import recall_at_k, retrieval_scores

    # Image 0's one caption is text 11, 2nd by ITC after text 0 (image 1's); texts 1-10 (image 1's too) come after.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0]] + [[0.1 * j, 1.0] for j in range(1, 11)] + [[1.0, 0.3]])
    text_to_image = [1] * 11 + [0]
    sim = torch.nn.functional.normalize(images, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).T
    itc = recall_at_k(sim, sim.T.contiguous(), text_to_image)
    assert itc["tr@5"] == 100.0
    # An ITM head that scores every pair far down (−50) still leaves each row's re-ranked pair first, and the
    # rest in ITC order after it.
    model = GivenFeatures(images, texts, itm_logit=-50.0)
    i2t, t2i = retrieval_scores(model, torch.arange(2), torch.arange(12)[:, None], k_test=1)
    assert torch.equal(i2t.argsort(1, descending=True), sim.argsort(1, descending=True))
    assert torch.equal(t2i.argsort(1, descending=True), sim.T.argsort(1, descending=True))
    # Recall@k for k > k_test is ITC's: text 11 ranks 2nd for image 0, not last among equal scores by its id.
    r = recall_at_k(i2t, t2i, text_to_image)
    assert {k: r[k] for k in ("tr@5", "tr@10", "ir@5", "ir@10")} == {k: itc[k] for k in ("tr@5", "tr@10", "ir@5",
                                                                                        "ir@10")}
    with pytest.raises(ValueError, match="at least 1"):
        retrieval_scores(model, torch.arange(2), torch.arange(12)[:, None], k_test=0)


def test_an_image_without_captions_is_named():
    from freeatm_hf.eval.retrieval import recall_at_k

    with pytest.raises(ValueError, match="have no caption .first: image 1"):
        recall_at_k(torch.tensor([[0.9, 0.1], [0.2, 0.3]]), torch.zeros(2, 2), text_to_image=[0, 0])
    with pytest.raises(ValueError, match="no relevant id .first: query 1"):
        load_metric("retrieval_recall").compute(predictions=[[0, 1], [1, 0]], references=[[0, 1], []])


def test_freeatm_eval_retrieval_on_a_trained_tiny_blip(tmp_path):
    from datasets import Dataset
    from PIL import Image

    from freeatm_hf.eval.cli import main as eval_main
    from freeatm_hf.spaces import space_dir
    from freeatm_hf.train.cli import main as train_main

    model_dir = tmp_path / "blip"
    train_main(["blip", str(space_dir().parents[1] / "recipes" / "blip_cpu_smoke.yaml"), "--output_dir", str(model_dir),
                "--dataset", str(space_dir() / "example_dataset"), "--max_steps", "2"])
    rows = [{"image": Image.new("RGB", (40, 40), (40 * i, 0, 0)), "caption": [f"a red square number {i}", f"square {i}"]}
            for i in range(4)]
    (tmp_path / "ret" / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "ret" / "data" / "test-00000-of-00001.parquet"))
    out = tmp_path / "r.json"
    r = eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "ret"), "--k_test", "3",
                   "--device", "cpu", "--output", str(out)])
    assert r["images"] == 4 and r["texts"] == 8
    assert all(0 <= r[k] <= 100 for k in ("tr@1", "tr@5", "ir@1", "ir@10"))
    assert out.is_file() and json.loads(out.read_text()) == r
    # The recalls join the model's results and its card, keyed by dataset and split.
    from huggingface_hub import ModelCard

    from freeatm_hf.hub.model_card import read_results

    stored = {x["metric"]: x["value"] for x in read_results(model_dir) if x["task"] == "image-text-retrieval"}
    assert stored == {k: r[k] for k in ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "tr_mean", "ir_mean")}
    card = ModelCard.load(model_dir / "README.md")
    assert {m.metric_type for m in card.data.eval_results} >= {"tr@1", "ir@1"}
    assert all(m.dataset_split == "test" for m in card.data.eval_results)
    # Evaluated at another size, the card still gives the size the checkpoint was trained at (its config.json's).
    config_line = next(line for line in card.text.splitlines() if line.startswith("| vision_config.image_size |"))
    assert config_line.split("|")[2].strip().strip("`") == "32"
    eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "ret"), "--k_test", "3",
               "--device", "cpu", "--image_size", "48"])
    assert config_line in ModelCard.load(model_dir / "README.md").text
    # A Hub id has no folder for the card: the results still come back (and go to --output), with a warning.
    from freeatm_hf.hub.model_card import record_results

    assert record_results("me/blip-atm", [], None) is False
    # An image without captions is named before the re-ranking, not left to fail in the recall.
    rows[2]["caption"] = []
    (tmp_path / "bare" / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "bare" / "data" / "test-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match="image 2 of .* has no caption"):
        eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "bare"), "--device", "cpu"])


def test_rows_that_repeat_an_image_one_per_caption_are_scored_as_one_image(tmp_path):
    """COCO-style captions laid out one row per caption: each image was scored as several distinct ones (a caption's
    own row tied with its copies, the image's other captions counted as misses): silently lower recalls."""
    from datasets import Dataset
    from PIL import Image

    from freeatm_hf.eval.cli import main as eval_main
    from freeatm_hf.spaces import space_dir
    from freeatm_hf.train.cli import main as train_main

    pictures = [Image.new("RGB", (40, 40), (60 * i, 20, 0)) for i in range(3)]
    rows = [{"image": pictures[i], "caption": f"caption {j} of {i}"} for i in range(3) for j in range(2)]
    (tmp_path / "flat" / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "flat" / "data" / "test-00000-of-00001.parquet"))
    model_dir = tmp_path / "blip"
    train_main(["blip", str(space_dir().parents[1] / "recipes" / "blip_cpu_smoke.yaml"), "--output_dir", str(model_dir),
                "--dataset", str(space_dir() / "example_dataset"), "--max_steps", "1"])
    r = eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "flat"), "--k_test", "2",
                   "--device", "cpu"])
    assert r["images"] == 3 and r["texts"] == 6
    assert r["ir@5"] == 100.0  # three images: every caption finds its own within five
    from freeatm_hf.eval.retrieval import distinct_images

    assert distinct_images(Dataset.from_list(rows), "image") == [0, 0, 2, 2, 4, 4]


def test_retrieval_finetuning_trains_itc_and_itm_only(tmp_path):
    from datasets import Dataset
    from huggingface_hub import ModelCard
    from PIL import Image
    from transformers import AutoModel, AutoTokenizer

    from freeatm_hf.eval.cli import main as eval_main
    from freeatm_hf.spaces import space_dir
    from freeatm_hf.train.cli import main as train_main

    model_dir = tmp_path / "blip"
    train_main(["blip", str(space_dir().parents[1] / "recipes" / "blip_cpu_smoke.yaml"), "--output_dir", str(model_dir),
                "--dataset", str(space_dir() / "example_dataset"), "--max_steps", "1", "--save_strategy", "steps",
                "--save_steps", "1"])
    # Every checkpoint carries the tokenizer, so any of them evaluates or exports on its own.
    assert AutoTokenizer.from_pretrained(model_dir / "checkpoint-1").vocab_size == AutoTokenizer.from_pretrained(
        model_dir).vocab_size
    rows = [{"image": Image.new("RGB", (40, 40), (60 * i, 0, 200 - 60 * i)), "caption": [f"square {i}", f"tile {i}"]}
            for i in range(4)]
    (tmp_path / "ret" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        Dataset.from_list(rows).to_parquet(str(tmp_path / "ret" / "data" / f"{split}-00000-of-00001.parquet"))
    ft = tmp_path / "ft"
    r = eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "ret"), "--k_test", "3",
                   "--device", "cpu", "--finetune_split", "train", "--finetune_dir", str(ft),
                   "--finetune_max_steps", "2", "--finetune_lr", "1e-3", "--batch_size", "4"])
    assert r["finetuned_on"] == "train" and r["images"] == 4
    before, after = AutoModel.from_pretrained(model_dir), AutoModel.from_pretrained(ft)
    moved = lambda name: not torch.equal(before.state_dict()[name], after.state_dict()[name])  # noqa: E731
    sd = after.state_dict()
    assert any(moved(k) for k in sd if k.startswith("vision_model."))
    assert any(moved(k) for k in sd if k.startswith("itm_head."))
    # No LM loss in retrieval fine-tuning: the decoder gets no gradient and stays as it was.
    assert not any(moved(k) for k in sd if k.startswith("text_decoder."))
    assert after.config.lm_weight == 0.0
    # The fine-tuned model's card still says what it was pretrained as, and what it was fine-tuned on.
    card = ModelCard.load(ft / "README.md")
    assert "attention-masks" in card.data.tags and "Position prompts on a 3×3 grid" in card.text
    assert "ret [train], 2 steps at lr 0.001" in card.text and str(tmp_path) not in card.text
    # Another process of an `accelerate launch` run trains along, then leaves the card and scoring to the main one
    # (which writes them while it would read them).
    from accelerate import PartialState

    from freeatm_hf.train.blip import BlipTrainer

    results = (ft / "eval_results.json").read_text()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BlipTrainer, "is_world_process_zero", lambda self: False)
        mp.setattr(PartialState, "is_main_process", property(lambda self: False))
        assert eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "ret"), "--device",
                          "cpu", "--finetune_split", "train", "--finetune_dir", str(tmp_path / "ft-rank1"),
                          "--finetune_max_steps", "1", "--batch_size", "4"]) is None
        assert eval_main(["retrieval", "--model", str(ft), "--dataset", str(tmp_path / "ret"), "--device", "cpu"]) is None
    assert not (tmp_path / "ft-rank1" / "card_info.json").exists() and not (tmp_path / "ft-rank1" / "README.md").exists()
    assert (ft / "eval_results.json").read_text() == results
    with pytest.raises(ValueError, match="finetune_dir"):
        eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "ret"), "--finetune_split",
                   "train"])
    with pytest.raises(ValueError, match="--finetune_split and --split are both 'train'"):
        eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "ret"), "--split", "train",
                   "--finetune_split", "train", "--finetune_dir", str(tmp_path / "ft2")])


def test_retrieval_finetuning_moves_the_momentum_encoders_it_distills_from(tmp_path):
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModel

    from freeatm_hf.eval.retrieval import finetune_retrieval
    from freeatm_hf.train.blip import BlipArguments, build_blip

    torch.manual_seed(0)
    model, tok = build_blip(BlipArguments(dataset="unused", model_size="tiny", image_size=32, max_length=35,
                                          momentum_distill=True, queue_size=16, momentum=0.5))
    model.save_pretrained(tmp_path / "blip")
    tok.save_pretrained(tmp_path / "blip")
    rows = [{"image": Image.new("RGB", (40, 40), (60 * i, 0, 200 - 60 * i)), "caption": f"square {i}"}
            for i in range(4)]
    (tmp_path / "ret" / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "ret" / "data" / "train-00000-of-00001.parquet"))
    finetune_retrieval(str(tmp_path / "blip"), str(tmp_path / "ret"), str(tmp_path / "ft"), max_steps=2, batch_size=4,
                       learning_rate=1e-2, use_cpu=True)
    before, after = AutoModel.from_pretrained(tmp_path / "blip"), AutoModel.from_pretrained(tmp_path / "ft")
    assert int(after.queue_ptr) == 8  # the queues filled...
    # ...each entry with its row's image id (2 epochs of the 4 rows), so a later batch's image is not its own negative
    assert sorted(after.image_id_queue[:8].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert after.image_id_queue[8:].tolist() == [-1] * 8
    # ...with features of momentum encoders that follow the online ones (EMA at 0.5), as in pretraining.
    assert not torch.equal(before.text_proj.weight, after.text_proj.weight)
    assert not torch.equal(before.text_proj_m.weight, after.text_proj_m.weight)
    assert not torch.equal(before.vision_proj_m.weight, after.vision_proj_m.weight)


class PairITM(GivenFeatures):
    """GivenFeatures with an ITM head that scores each pair on its own: match logit (column 1) = 3·⟨image, text⟩ +
    0.1·text id, no-match logit (column 0) something else entirely."""

    def itm_logits(self, embeds, input_ids, attention_mask):
        match = 3 * (embeds[:, 0] * self.texts[input_ids[:, 0]]).sum(-1) + 0.1 * input_ids[:, 0]
        return torch.stack([-5 * match + 1.0, match], 1)


def test_reranked_pairs_score_their_itm_match_logit_plus_their_itc_similarity():
    """BLIP's score of a re-ranked pair: ITM match logit + ITC similarity, for both directions, written out."""
    from freeatm_hf.eval.retrieval import retrieval_scores

    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    model = PairITM(images, texts, itm_logit=0.0)
    i2t, t2i = retrieval_scores(model, torch.arange(3), torch.arange(5)[:, None], k_test=2)
    sim = images @ texts.T
    match = 3 * sim + 0.1 * torch.arange(5.0)
    for i in range(3):
        for j in sim[i].topk(2).indices.tolist():
            assert i2t[i, j].item() == pytest.approx((match[i, j] + sim[i, j]).item(), abs=1e-5)
    for j in range(5):
        for i in sim[:, j].topk(2).indices.tolist():
            assert t2i[j, i].item() == pytest.approx((match[i, j] + sim[i, j]).item(), abs=1e-5)


def test_retrieval_finetuning_at_another_size_trains_and_saves_the_model_at_that_size(tmp_path, monkeypatch):
    """BLIP fine-tunes at 384 from its 224-px pretraining: the images are cropped to the size asked, and the saved
    model takes that size (its position table interpolated to the new grid). Each row is its own image id, however
    the rows are batched."""
    import transformers
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModel

    from freeatm_hf.eval.retrieval import finetune_retrieval
    from freeatm_hf.train.blip import BlipArguments, build_blip

    model, tok = build_blip(BlipArguments(dataset="unused", model_size="tiny", image_size=32, max_length=35))
    model.save_pretrained(tmp_path / "blip")
    tok.save_pretrained(tmp_path / "blip")
    rows = [{"image": Image.new("RGB", (40, 40), (60 * i, 0, 0)), "caption": f"square {i}"} for i in range(2)]
    (tmp_path / "ret" / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "ret" / "data" / "train-00000-of-00001.parquet"))
    seen = []
    monkeypatch.setattr(transformers.Trainer, "train", lambda self, *a, **k: seen.append(self.train_dataset))
    finetune_retrieval(str(tmp_path / "blip"), str(tmp_path / "ret"), str(tmp_path / "ft"), image_size=48,
                       max_steps=1, batch_size=2, use_cpu=True)
    assert seen[0][0]["pixel_values"].shape == (3, 48, 48)
    # Its own row index, not its place in the (shuffled) batch it was fetched in.
    assert [seen[0][i]["image_ids"] for i in range(len(rows))] == [0, 1]
    after = AutoModel.from_pretrained(tmp_path / "ft")
    patch = after.config.vision_config.patch_size
    assert after.config.vision_config.image_size == 48
    assert after.vision_model.embeddings.position_embedding.shape[1] == (48 // patch) ** 2 + 1


def test_retrieval_finetuning_gives_rows_that_repeat_an_image_one_image_id(tmp_path, monkeypatch):
    """Captions laid out one row per caption (COCO-style, as `eval retrieval` scores them): the rows of one picture
    share its image id, as BLIP's img_id, so neither the batch nor the momentum queue holds it as its own negative."""
    import transformers
    from datasets import Dataset
    from PIL import Image

    from freeatm_hf.eval.retrieval import finetune_retrieval
    from freeatm_hf.train.blip import BlipArguments, build_blip

    model, tok = build_blip(BlipArguments(dataset="unused", model_size="tiny", image_size=32, max_length=35))
    model.save_pretrained(tmp_path / "blip")
    tok.save_pretrained(tmp_path / "blip")
    pictures = [Image.new("RGB", (40, 40), (60 * i, 0, 0)) for i in range(2)]
    rows = [{"image": pictures[i], "caption": f"caption {j} of {i}"} for i in (0, 1, 0) for j in range(2)]
    (tmp_path / "ret" / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "ret" / "data" / "train-00000-of-00001.parquet"))
    seen = []
    monkeypatch.setattr(transformers.Trainer, "train", lambda self, *a, **k: seen.append(self.train_dataset))
    finetune_retrieval(str(tmp_path / "blip"), str(tmp_path / "ret"), str(tmp_path / "ft"), max_steps=1,
                       batch_size=2, use_cpu=True)
    assert [seen[0][i]["image_ids"] for i in range(len(rows))] == [0, 0, 2, 2, 0, 0]


def test_the_caption_length_defaults_to_the_models_shorter_text_table_and_a_longer_one_is_refused(tmp_path):
    """A BLIP trained with --max_length under BLIP's 35 has a shorter text position table: evaluating it with the
    default length must fit it, not fail with a shape error in the text embeddings."""
    from datasets import Dataset
    from PIL import Image

    from freeatm_hf.eval.cli import main as eval_main
    from freeatm_hf.spaces import space_dir
    from freeatm_hf.train.cli import main as train_main

    model_dir = tmp_path / "blip"
    train_main(["blip", str(space_dir().parents[1] / "recipes" / "blip_cpu_smoke.yaml"), "--output_dir", str(model_dir),
                "--dataset", str(space_dir() / "example_dataset"), "--max_steps", "1", "--max_length", "24"])
    rows = [{"image": Image.new("RGB", (40, 40), (60 * i, 0, 0)), "caption": f"a red square number {i}"}
            for i in range(3)]
    (tmp_path / "ret" / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "ret" / "data" / "test-00000-of-00001.parquet"))
    r = eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "ret"), "--k_test", "2",
                   "--device", "cpu"])
    assert r["images"] == 3
    with pytest.raises(ValueError, match=r"--max_length 30 is longer than .* \(24 tokens\)"):
        eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "ret"), "--max_length", "30",
                   "--device", "cpu"])


def test_reranked_scores_are_stock_blip_retrievals_itm_logit_plus_itc_cosine_of_the_export(tmp_path):
    """An independent reference: the `blip-retrieval` export in stock transformers scores every pair (ITM match
    logit with `use_itm_head=True`, ITC cosine without), and with every pair re-ranked the protocol's matrices are
    those sums; the recalls are a brute-force ranking of them."""
    from transformers import BlipForImageTextRetrieval

    from freeatm_hf.eval.retrieval import recall_at_k, retrieval_scores
    from freeatm_hf.hub.export import export_checkpoint
    from tests.hub.test_stock_exports import checkpoint

    model = checkpoint("blip", tmp_path / "ckpt")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "stock", "blip-retrieval", model=model)
    stock = BlipForImageTextRetrieval.from_pretrained(tmp_path / "stock").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.randint(5, 100, (5, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    i2t, t2i = retrieval_scores(model, x, ids, mask, k_test=5)
    itm_ids = ids.clone()
    if model.config.enc_token_id is not None:  # the protocol's ITM reads [ENC] first, as training does
        itm_ids[:, 0] = model.config.enc_token_id
    ref = torch.zeros(3, 5)
    with torch.no_grad():
        for i in range(3):
            for j in range(5):
                itc = stock(input_ids=ids[j : j + 1], attention_mask=mask[j : j + 1], pixel_values=x[i : i + 1],
                            use_itm_head=False).itm_score
                itm = stock(input_ids=itm_ids[j : j + 1], attention_mask=mask[j : j + 1], pixel_values=x[i : i + 1],
                            use_itm_head=True).itm_score
                ref[i, j] = itc.flatten()[0] + itm[0, 1]
    torch.testing.assert_close(i2t, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(t2i, ref.T, atol=1e-5, rtol=0)
    text_to_image = [0, 0, 1, 2, 2]
    r = recall_at_k(i2t, t2i, text_to_image, ks=(1, 2))
    for k in (1, 2):
        tr = [any(j in ref[i].argsort(descending=True)[:k].tolist() for j, im in enumerate(text_to_image) if im == i)
              for i in range(3)]
        ir = [text_to_image[j] in ref[:, j].argsort(descending=True)[:k].tolist() for j in range(5)]
        assert r[f"tr@{k}"] == pytest.approx(100 * sum(tr) / 3) and r[f"ir@{k}"] == pytest.approx(100 * sum(ir) / 5)


def test_a_bf16_checkpoint_is_scored_as_its_float32_copy(tmp_path):
    """transformers 5 loads a checkpoint in the dtype it was saved in, and BLIP casts the pixels to its weights':
    a bf16 BLIP was scored in bf16, its ITC similarities rounded (here TR@1 50 where the same weights in float32
    score 25)."""
    from datasets import Dataset
    from PIL import Image

    from freeatm_hf.eval.cli import main as eval_main
    from freeatm_hf.train.blip import BlipArguments, build_blip

    torch.manual_seed(0)
    model, tok = build_blip(BlipArguments(dataset="unused", model_size="tiny", image_size=32, max_length=20))
    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    model.float().save_pretrained(tmp_path / "fp32")
    for d in ("bf16", "fp32"):
        tok.save_pretrained(tmp_path / d)
    rows = [{"image": Image.new("RGB", (40, 40), (60 * i, 30, 0)), "caption": [f"a square number {i}"]}
            for i in range(4)]
    (tmp_path / "ret" / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "ret" / "data" / "test-00000-of-00001.parquet"))
    got = {d: eval_main(["retrieval", "--model", str(tmp_path / d), "--dataset", str(tmp_path / "ret"), "--k_test", "2",
                         "--device", "cpu"]) for d in ("bf16", "fp32")}
    assert got["bf16"] == got["fp32"]

import json

import pytest
import torch

from freeatm_hf.eval.metrics import load_metric


def test_recall_at_k_against_a_hand_computed_matrix():
    # 3 images, 4 texts: texts 0, 1 → image 0; text 2 → image 1; text 3 → image 2.
    sim = [[0.9, 0.1, 0.5, 0.0],   # image 0: best text 0 (a hit at rank 1)
           [0.8, 0.2, 0.3, 0.1],   # image 1: its text 2 ranks 2nd → miss at 1, hit at 5
           [0.1, 0.2, 0.3, 0.4]]   # image 2: its text 3 ranks 1st
    r = load_metric("retrieval_recall").compute(predictions=sim, references=[[0, 1], [2], [3]],
                                                text_to_image=[0, 0, 1, 2], ks=(1, 2))
    assert r["tr@1"] == pytest.approx(200 / 3) and r["tr@2"] == 100.0
    # Texts → images (columns): text 0 → image 0 first ✓; text 1 → image 0 has its lowest score ✗;
    # text 2 → image 0 scores 0.5 above image 1's 0.3 ✗; text 3 → image 2 first ✓.
    assert r["ir@1"] == 50.0


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="does not match"):
        load_metric("retrieval_recall").compute(predictions=[[0.1, 0.2]], references=[[0]], text_to_image=[0])


def test_blip_protocol_runs_and_reranks_only_the_top_k():
    from freeatm_hf.eval.retrieval import recall_at_k, retrieval_scores
    from tests.models.test_blip import tiny

    model = tiny().eval()
    x, ids = torch.randn(4, 3, 32, 32), torch.randint(4, 120, (6, 9))
    i2t, t2i = retrieval_scores(model, x, ids, k_test=2)
    assert i2t.shape == (4, 6) and t2i.shape == (6, 4)
    assert ((i2t > -100).sum(1) == 2).all() and ((t2i > -100).sum(1) == 2).all()
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
    with pytest.raises(ValueError, match="finetune_dir"):
        eval_main(["retrieval", "--model", str(model_dir), "--dataset", str(tmp_path / "ret"), "--finetune_split",
                   "train"])

import os
import tempfile

# Offline and quiet before any Hugging Face import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="freeatm-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_pipe():
    from freeatm_hf.generate.tiny import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="session")
def tokenizer():
    from freeatm_hf.generate.clip_vocab import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """Shapes-world scenes in the freeatm schema, each object's exact mask standing in for its attention map:
    distinct, structured images (unlike the random pipeline's noise), so a few steps can learn something."""
    from datasets import Dataset

    from freeatm_hf.generate.schema import dataset_features
    from freeatm_hf.toy.dataset import rendered_rows
    from freeatm_hf.toy.world import ShapesWorld

    rows = [{"image": r["image"], "prompt": r["caption"], "label": -1, "seed": r["seed"], "truncated_objects": [],
             "objects": [{"name": o["name"], "token_indices": [1], "attention": o["mask"], "bbox": o["bbox"],
                          "area": 0.0, "attention_peak": 1.0} for o in r["objects"]]} for r in rendered_rows(ShapesWorld(seed=1), 64)]
    folder = tmp_path_factory.mktemp("shapes") / "ds"
    (folder / "data").mkdir(parents=True)
    Dataset.from_list(rows, features=dataset_features()).to_parquet(str(folder / "data" / "train-0.parquet"))
    return str(folder)

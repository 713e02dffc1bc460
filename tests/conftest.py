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

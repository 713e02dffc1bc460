"""Loading a pipeline by name, and the fingerprint of a local pipeline folder."""

import pytest
import torch


def _pipeline_folder(root):
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (root / "unet" / "config.json").write_text('{"sample_size": 32}')
    (root / "unet" / "weights.bin").write_bytes(bytes(range(100)))
    return root


def test_a_local_folders_fingerprint_covers_what_from_pretrained_loads_and_nothing_else(tmp_path):
    from freeatm_hf.generate.pipelines import local_fingerprint

    folder = _pipeline_folder(tmp_path / "model")
    fp = local_fingerprint(str(folder))
    assert fp is not None
    # Not loaded by from_pretrained: the card, the recommendation, hidden files and folders (caches, .git).
    (folder / "README.md").write_text("a card")
    (folder / "freeatm.json").write_text("{}")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("x")
    (folder / "unet" / ".hidden").write_text("x")
    assert local_fingerprint(str(folder)) == fp
    # Loaded: the index (which classes load) and every file of a component.
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    changed = local_fingerprint(str(folder))
    assert changed != fp
    (folder / "unet" / "extra.json").write_text("{}")
    assert local_fingerprint(str(folder)) != changed
    # No folder to hash: a pipeline built in code, a Hub id, a folder that is no pipeline.
    (tmp_path / "plain").mkdir()
    assert [local_fingerprint(s) for s in ("tiny", "me/model", str(tmp_path / "plain"))] == [None, None, None]


def test_a_large_file_is_fingerprinted_by_its_first_and_last_head_bytes(tmp_path):
    from freeatm_hf.generate.pipelines import local_fingerprint

    folder = _pipeline_folder(tmp_path / "model")
    weights = folder / "unet" / "weights.bin"
    fp = local_fingerprint(str(folder), head=8)
    middle = bytearray(weights.read_bytes())
    middle[50] ^= 1
    weights.write_bytes(bytes(middle))
    assert local_fingerprint(str(folder), head=8) == fp  # 100 bytes > 2 × 8: the middle is not read
    assert local_fingerprint(str(folder), head=64) != local_fingerprint(str(folder), head=8)
    first = bytearray(middle)
    first[0] ^= 1
    weights.write_bytes(bytes(first))
    assert local_fingerprint(str(folder), head=8) != fp


def test_built_in_names_load_the_pipeline_they_name_in_the_dtype_asked(monkeypatch, tiny_pipe):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    import freeatm_hf.toy.model as toy_model
    from freeatm_hf.generate.pipelines import load_pipeline

    cpu = torch.device("cpu")
    monkeypatch.setattr(toy_model, "trained_pipeline_available", lambda: False)
    pipe = load_pipeline("default", cpu)  # no shapes model shipped: the tiny one
    reference = tiny_pipe.unet.state_dict()
    assert type(pipe) is StableDiffusionPipeline
    assert all(torch.equal(v, reference[k]) for k, v in pipe.unet.state_dict().items())
    with pytest.raises(FileNotFoundError, match="the trained shapes model is not in"):
        load_pipeline("shapes", cpu)
    assert type(load_pipeline("tiny-sdxl", cpu)) is StableDiffusionXLPipeline
    half = load_pipeline("tiny", cpu, torch_dtype="bf16")
    assert {p.dtype for c in (half.unet, half.vae, half.text_encoder) for p in c.parameters()} == {torch.bfloat16}
    named = load_pipeline("tiny", "cpu")  # a device by name, as torch takes one
    assert named.device == cpu and named.unet.dtype == torch.float32


def test_a_pipeline_spec_is_said_to_be_built_in_local_or_from_the_hub(tmp_path):
    from freeatm_hf.generate.pipelines import BUILT_IN_PIPELINES, pipeline_source

    assert {pipeline_source(s) for s in BUILT_IN_PIPELINES} == {"built-in"}
    assert pipeline_source(str(tmp_path)) == "local" and pipeline_source("me/model") == "hub"

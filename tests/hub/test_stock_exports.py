"""`freeatm export` and `push-model --exports`: each stock export loads in a process that never imports
freeatm_hf and gives the training model's encoder features."""

import pytest
import torch

from freeatm_hf.hub.cli import export_main

from .stock_reader import read_stock


def checkpoint(method, folder):
    """A tiny checkpoint with trained-looking statistics, so a dropped BN buffer or swapped norm would show."""
    from freeatm_hf.models import MAEConfig, MAEModel, SimCLRConfig, SimCLRModel
    from freeatm_hf.train.mae import SIZES

    torch.manual_seed(0)
    if method == "simclr":
        model = SimCLRModel(SimCLRConfig(backbone="resnet18", proj_hidden_dim=16, proj_dim=8))
    elif method == "mae":
        model = MAEModel(MAEConfig(image_size=32, patch_size=8, mask_ratio=0.0, **SIZES["tiny"]))
    else:
        from freeatm_hf.train.blip import BlipArguments, build_blip

        model, tok = build_blip(BlipArguments(dataset="unused", model_size="tiny", image_size=32))
        tok.save_pretrained(folder)
    with torch.no_grad():
        for name, t in model.named_buffers():
            if "running_mean" in name:
                t.normal_()
            elif "running_var" in name:
                t.uniform_(0.5, 2.0)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    model.save_pretrained(folder)
    return model.eval()


def encoder_features(method, model, x):
    with torch.no_grad():
        if method == "simclr":
            return model.backbone.forward_features(x).mean((2, 3))
        if method == "mae":
            n = (model.config.image_size // model.config.patch_size) ** 2
            ordered = torch.arange(n).float().expand(len(x), n)  # every patch kept, in its order
            return model.vit(x, noise=ordered).last_hidden_state
        return model.vision_model(pixel_values=x).last_hidden_state


@pytest.mark.parametrize("method, kind", [("simclr", "torchvision"), ("mae", "vit"), ("blip", "blip-retrieval"),
                                          ("blip", "blip-captioning")])
def test_freeatm_export_loads_in_the_stock_library_with_the_same_features(method, kind, tmp_path):
    model = checkpoint(method, tmp_path / "ckpt")
    out = tmp_path / ("r18.pth" if kind == "torchvision" else kind)
    export_main([str(tmp_path / "ckpt"), str(out), "--to", kind])
    x = torch.randn(2, 3, 32, 32)
    got, _ = read_stock(kind, out, x, tmp_path)
    expected = encoder_features(method, model, x)
    assert got.shape == expected.shape and (got - expected).abs().max().item() < 1e-5


def test_an_export_the_method_has_not_is_refused(tmp_path):
    checkpoint("simclr", tmp_path / "ckpt")
    with pytest.raises(ValueError, match="a simclr checkpoint exports to timm or torchvision, not 'vit'"):
        export_main([str(tmp_path / "ckpt"), str(tmp_path / "out"), "--to", "vit"])


def test_a_blip_export_without_a_tokenizer_is_refused(tmp_path):
    checkpoint("blip", tmp_path / "ckpt")
    for f in (tmp_path / "ckpt").iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    with pytest.raises(ValueError, match="has no tokenizer, which a blip-retrieval export needs"):
        export_main([str(tmp_path / "ckpt"), str(tmp_path / "out"), "--to", "blip-retrieval"])


def test_push_model_exports_serves_the_vit_from_the_repo(tmp_path):
    from huggingface_hub import ModelCard

    from freeatm_hf.hub.model_card import write_model_card

    from .fake_hub import FakeHub
    from .test_push import run_cli

    model = checkpoint("mae", tmp_path / "ckpt")
    write_model_card(tmp_path / "ckpt", model.config, data={"dataset": "me/scenes"}, training={})
    with FakeHub() as hub:
        res = run_cli(["push-model", str(tmp_path / "ckpt"), "me/mae-atm", "--exports"], hub.url, tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        files = hub.repos[("model", "me/mae-atm")]["files"]
    assert {"vit/config.json", "vit/model.safetensors", "model.safetensors", "README.md"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert 'ViTModel.from_pretrained("me/mae-atm", subfolder="vit", add_pooling_layer=False)' in card.text
    repo = tmp_path / "repo"  # the repo as a user's snapshot_download would lay it out
    for rel, data in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    x = torch.randn(2, 3, 32, 32)
    got, _ = read_stock("vit", repo, x, tmp_path, subfolder="vit")
    assert (got - encoder_features("mae", model, x)).abs().max().item() < 1e-5


def test_a_retrained_folder_pushes_neither_the_exports_nor_the_results_of_its_earlier_weights(tmp_path,
                                                                                                in_process_hub):
    from huggingface_hub import ModelCard

    from freeatm_hf.hub.export import add_stock_exports, stale_exports
    from freeatm_hf.hub.model_card import add_results, write_model_card
    from freeatm_hf.hub.push import push_folder

    folder = tmp_path / "ckpt"
    model = checkpoint("simclr", folder)
    assert add_stock_exports(folder) == ["torchvision/resnet18.pth"] and stale_exports(folder) == []
    add_results(folder, [{"task": "image-classification", "dataset": "me/shapes", "split": "test",
                          "metric": "knn20_top1", "value": 0.5}])
    write_model_card(folder, model.config, data={"dataset": "me/scenes"}, training={})
    push_folder(folder, "me/simclr-atm", repo_type="model")
    files = in_process_hub.repos[("model", "me/simclr-atm")]["files"]
    assert "torchvision/resnet18.pth" in files
    assert [r.metric_type for r in ModelCard(files["README.md"].decode()).data.eval_results] == ["knn20_top1"]

    with torch.no_grad():  # retrained into the same folder
        model.backbone.conv1.weight.add_(1.0)
    model.save_pretrained(folder)
    write_model_card(folder, model.config)
    assert stale_exports(folder) == ["torchvision/resnet18.pth"]
    assert not ModelCard.load(folder / "README.md").data.eval_results  # measured on the earlier weights
    push_folder(folder, "me/simclr-atm", repo_type="model")
    files = in_process_hub.repos[("model", "me/simclr-atm")]["files"]
    assert "torchvision/resnet18.pth" not in files  # left out, and the old one removed from the repo
    assert not ModelCard(files["README.md"].decode()).data.eval_results
    # Results measured on these weights are shown again.
    add_results(folder, [{"task": "image-classification", "dataset": "me/shapes", "split": "test",
                          "metric": "knn20_top1", "value": 0.7}])
    write_model_card(folder, model.config)
    assert [r.metric_value for r in ModelCard.load(folder / "README.md").data.eval_results] == [0.7]


@pytest.mark.parametrize("method, kind", [("simclr", "timm"), ("mae", "timm"), ("blip", "blip-retrieval")])
def test_an_exports_own_preprocessing_is_what_freeatm_evaluates_with(method, kind, tmp_path):
    """A user preprocessing with the export's stock config (timm's eval transform from its pretrained_cfg, BLIP's
    image processor) feeds the backbone what `freeatm eval knn` / `eval retrieval` fed it: the same crop, the same
    resize filter (bicubic where MAE trained, bilinear elsewhere; a filter off by one kind moves pixels by ~0.5
    here), the same statistics. Up to one 8-bit level, PIL and torchvision rounding apart."""
    import numpy as np
    from PIL import Image

    from freeatm_hf.data.transforms import training_interpolation
    from freeatm_hf.eval.frozen import eval_transform
    from freeatm_hf.eval.retrieval import retrieval_transform

    model = checkpoint(method, tmp_path / "ckpt")
    export_main([str(tmp_path / "ckpt"), str(tmp_path / kind), "--to", kind])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    if kind == "timm":
        import timm

        encoder = timm.create_model(f"local-dir:{tmp_path / kind}", pretrained=True)
        config = timm.data.resolve_data_config({}, model=encoder)
        got = timm.data.create_transform(**config)(image)
        side = config["input_size"][-1]
        expected = eval_transform(side, training_interpolation(model.config.model_type))(image)
    else:
        from transformers import AutoImageProcessor

        got = AutoImageProcessor.from_pretrained(tmp_path / kind)(images=image, return_tensors="pt")["pixel_values"][0]
        side = model.config.vision_config.image_size
        expected = retrieval_transform(side)(image)
    assert got.shape == expected.shape == (3, side, side)
    assert (got - expected).abs().max().item() < 1.01 / 255 / 0.224


def test_an_export_into_a_folder_holding_another_model_is_refused_and_the_folder_kept(tmp_path):
    """`freeatm export ckpt OTHER_CKPT --to timm` replaced the other checkpoint's config.json and weights with the
    export's: a training run lost. A folder holding an export of another kind would end up a mix of both."""
    from freeatm_hf.hub.export import export_timm

    mae = checkpoint("mae", tmp_path / "mae")
    simclr = checkpoint("simclr", tmp_path / "simclr")
    before = {p.name: p.read_bytes() for p in (tmp_path / "mae").iterdir()}
    with pytest.raises(ValueError, match="mae holds a freeatm mae checkpoint, which a timm export would overwrite"):
        export_main([str(tmp_path / "simclr"), str(tmp_path / "mae"), "--to", "timm"])
    with pytest.raises(ValueError, match="holds a freeatm mae checkpoint, which a timm export would overwrite"):
        export_timm(simclr, tmp_path / "mae")  # the library call alike
    with pytest.raises(ValueError, match="holds a freeatm simclr checkpoint, which a vit export would overwrite"):
        export_main([str(tmp_path / "mae"), str(tmp_path / "simclr"), "--to", "vit"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "mae").iterdir()} == before
    export_main([str(tmp_path / "mae"), str(tmp_path / "out"), "--to", "vit"])
    with pytest.raises(ValueError, match="out holds a vit export, which a timm export would overwrite"):
        export_main([str(tmp_path / "simclr"), str(tmp_path / "out"), "--to", "timm"])
    # An earlier export of the same kind is replaced, as `push-model --exports` rewrites its own.
    export_main([str(tmp_path / "mae"), str(tmp_path / "out"), "--to", "vit"])
    export_timm(mae, tmp_path / "timm")
    export_timm(mae, tmp_path / "timm")

"""Exported backbones load in stock timm, in a process that never imports freeatm_hf, with the same features."""

import pytest
import torch

from freeatm_hf.hub.export import export_timm
from freeatm_hf.models import METHODS

from .stock_reader import read_stock


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_timm_export_gives_the_training_encoders_features(method, tmp_path):
    config_cls, model_cls = METHODS[method]
    torch.manual_seed(0)
    model = model_cls(config_cls(backbone="resnet18", proj_hidden_dim=16, proj_dim=8)).eval()
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    folder = export_timm(model, tmp_path / "timm")
    x = torch.randn(2, 3, 64, 64)
    got, stdout = read_stock("timm", folder, x, tmp_path)
    assert "(3, 224, 224)" in stdout  # pretrained_cfg travels with the weights
    with torch.no_grad():
        expected = model.backbone.forward_features(x)
    assert (got - expected).abs().max().item() < 1e-5
    # timm's default model(x) pools, as any timm model with num_classes=0; transformers' AutoModel reads the
    # same repo (TimmWrapperModel) and gives the same maps and pooled features.
    pooled, _ = read_stock("timm-pooled", folder, x, tmp_path)
    assert (pooled - expected.mean((2, 3))).abs().max().item() < 1e-5
    wrapped, _ = read_stock("transformers-timm", folder, x, tmp_path)
    assert (wrapped - torch.cat([expected.flatten(1), expected.mean((2, 3))], 1)).abs().max().item() < 1e-5


def test_mae_encoder_exports_to_a_timm_vit_with_the_same_features(tmp_path):
    from freeatm_hf.models import MAEConfig, MAEModel

    torch.manual_seed(0)
    model = MAEModel(MAEConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                               intermediate_size=96, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                               decoder_num_attention_heads=4, decoder_intermediate_size=64, mask_ratio=0.0)).eval()
    with torch.no_grad():  # trained-looking norms, so a swapped weight or bias would show
        for n, p in model.vit.named_parameters():
            if "layernorm" in n:
                p.normal_(1.0 if n.endswith("weight") else 0.0, 0.3)
    x = torch.randn(2, 3, 32, 32)
    got, stdout = read_stock("timm", export_timm(model, tmp_path / "timm"), x, tmp_path)
    assert "(3, 32, 32)" in stdout
    with torch.no_grad():  # all 16 patches kept in their order: the encoder's plain forward
        expected = model.vit(x, noise=torch.arange(16).float().expand(2, 16)).last_hidden_state
    assert got.shape == expected.shape == (2, 17, 48)
    assert (got - expected).abs().max().item() < 1e-5
    # A checkpoint with ViTMAE's old 1e-12 norms cannot be matched by any timm ViT: refused, by name.
    old = MAEModel(MAEConfig(**{**model.config.to_dict(), "layer_norm_eps": 1e-12}))
    with pytest.raises(ValueError, match="LayerNorm eps is 1e-12"):
        export_timm(old, tmp_path / "old")
    # Nor can one with another GELU than timm's exact one (its features would drift): refused, by name.
    tanh = MAEModel(MAEConfig(**{**model.config.to_dict(), "hidden_act": "gelu_new"}))
    with pytest.raises(ValueError, match="exact GELU; this encoder uses 'gelu_new'"):
        export_timm(tanh, tmp_path / "tanh")


def test_blip_vision_tower_exports_to_a_timm_vit_with_the_same_features(tmp_path):
    from freeatm_hf.models.blip import BlipATMConfig, BlipATMModel

    torch.manual_seed(0)
    # BlipVisionConfig's default initializer_range (1e-10) leaves every block near zero, so that only the stem
    # and the final norm would be compared: trained-scale weights, as build_blip starts from.
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, initializer_range=0.02)
    text = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                encoder_hidden_size=32, max_position_embeddings=40)
    model = BlipATMModel(BlipATMConfig(vision_config=vision, text_config=text, image_text_hidden_size=16)).eval()
    with torch.no_grad():
        for n, p in model.vision_model.named_parameters():
            if "norm" in n:
                p.normal_(1.0 if n.endswith("weight") else 0.0, 0.3)
            elif "mlp" in n:  # activations where exact and tanh-approximated GELU part
                p.normal_(0.0, 0.3)
    x = torch.randn(2, 3, 32, 32)
    got, _ = read_stock("timm", export_timm(model, tmp_path / "timm"), x, tmp_path)
    with torch.no_grad():
        expected = model.vision_model(pixel_values=x).last_hidden_state
    assert got.shape == expected.shape == (2, 17, 32)
    assert (got - expected).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="no ViT encoder"):
        from freeatm_hf.hub.export import _vit_encoder_as_timm

        _vit_encoder_as_timm(METHODS["simclr"][1](METHODS["simclr"][0](backbone="resnet18", proj_hidden_dim=8,
                                                                       proj_dim=4)))


def test_torchvision_export_loads_into_resnet_with_the_same_features(tmp_path):
    import torchvision

    from freeatm_hf.hub.export import export_torchvision
    from freeatm_hf.models import SimCLRConfig, SimCLRModel

    torch.manual_seed(0)
    model = SimCLRModel(SimCLRConfig(backbone="resnet18", proj_hidden_dim=16, proj_dim=8)).eval()
    path = export_torchvision(model, tmp_path / "r18.pth")
    tv = torchvision.models.resnet18()
    missing, unexpected = tv.load_state_dict(torch.load(path), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.backbone.forward_features(x).mean((2, 3))
        assert (tv.eval()(x) - expected).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="ResNet-family"):
        export_torchvision(SimCLRModel(SimCLRConfig(backbone="test_convnext", proj_hidden_dim=8, proj_dim=4)), tmp_path / "x")


def test_exporting_something_that_is_not_a_freeatm_checkpoint_says_so(tmp_path):
    from transformers import BertConfig

    from freeatm_hf.hub.cli import export_main

    with pytest.raises(ValueError, match="is not a checkpoint folder \\(no such folder\\)"):
        export_main([str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "timm"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json in it"):
        export_main([str(tmp_path / "empty"), str(tmp_path / "out"), "--to", "timm"])
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(ValueError, match="holds a bert model, not a freeatm checkpoint"):
        export_main([str(tmp_path / "bert"), str(tmp_path / "out"), "--to", "timm"])


def test_a_timm_exports_data_config_is_the_checkpoints_own(tmp_path):
    """timm's data config from the export: the size the checkpoint was trained at (its card facts), nothing of the
    architecture's default weights (a 288-px test size, timm's licence and paper); and no export over the
    checkpoint itself."""
    import json

    import timm

    from freeatm_hf.hub.cli import export_main
    from freeatm_hf.hub.model_card import write_model_card

    config_cls, model_cls = METHODS["simclr"]
    model = model_cls(config_cls(backbone="resnet50", proj_hidden_dim=16, proj_dim=8))
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    write_model_card(ckpt, model.config, data={"dataset": None, "image_size": 64}, training={})
    export_main([str(ckpt), str(tmp_path / "timm"), "--to", "timm"])
    cfg = json.loads((tmp_path / "timm" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [3, 64, 64]
    assert not {"test_input_size", "test_crop_pct", "license", "paper_ids", "origin_url"} & set(cfg)
    encoder = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True)
    # What timm's validate.py resolves (use_test_size=True) is the training size too.
    assert timm.data.resolve_data_config({}, model=encoder, use_test_size=True)["input_size"] == (3, 64, 64)
    with pytest.raises(ValueError, match="would overwrite the checkpoint"):
        export_main([str(ckpt), str(ckpt), "--to", "timm"])
    (tmp_path / "tv").mkdir()
    with pytest.raises(ValueError, match="is a folder; a torchvision export is one state-dict file"):
        export_main([str(ckpt), str(tmp_path / "tv"), "--to", "torchvision"])
    (tmp_path / "taken.pth").write_bytes(b"")  # mkdir on it was a FileExistsError traceback
    with pytest.raises(ValueError, match="taken.pth is a file; a timm export is a folder"):
        export_main([str(ckpt), str(tmp_path / "taken.pth"), "--to", "timm"])
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "freeatm_simclr"


def test_a_timm_export_cut_short_leaves_no_unedited_timm_config_and_nothing_a_push_would_send(tmp_path, monkeypatch):
    """timm writes its config first and freeatm edits it after: a crash in between left timm's own config (its
    inherited test size and licence, `num_classes` twice) beside the weights, loading as another model."""
    import json
    import os

    from freeatm_hf.hub.export import INHERITED_CFG_KEYS
    from freeatm_hf.hub.push import IGNORE

    config_cls, model_cls = METHODS["simclr"]
    model = model_cls(config_cls(backbone="resnet18", proj_hidden_dim=16, proj_dim=8)).eval()
    real_replace = os.replace

    def crash_at_the_config(src, dst):
        if str(dst).endswith("config.json"):
            raise KeyboardInterrupt  # killed here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_at_the_config)
    with pytest.raises(KeyboardInterrupt):
        export_timm(model, tmp_path / "ckpt" / "timm")
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in (tmp_path / "ckpt" / "timm").iterdir()) == ["model.safetensors"]  # loads as none
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["timm"]  # the temporary folder went with the crash
    export_timm(model, tmp_path / "ckpt" / "timm")  # run again: whole
    config = json.loads((tmp_path / "ckpt" / "timm" / "config.json").read_text())
    assert "num_classes" not in config["model_args"] and not set(INHERITED_CFG_KEYS) & set(config["pretrained_cfg"])
    # What a harder kill (no cleanup) leaves beside it is not pushed.
    from huggingface_hub.utils import filter_repo_objects

    left = ["timm/config.json", "timm/.timm.x1y2.tmp/config.json", ".timm.x1y2.tmp/model.safetensors"]
    assert list(filter_repo_objects(left, ignore_patterns=IGNORE)) == ["timm/config.json"]


def test_a_timm_export_of_a_model_loaded_from_its_folder_states_the_size_it_was_trained_at(tmp_path):
    """`export_timm(SimCLRModel.from_pretrained(folder), out)`, the module's own example, stated 224 for a model
    trained at 64 px (only `freeatm export` read the card facts): timm's eval transform then fed it 224-px crops."""
    import json

    from freeatm_hf.hub.model_card import write_model_card

    config_cls, model_cls = METHODS["simclr"]
    ckpt = tmp_path / "ckpt"
    model_cls(config_cls(backbone="resnet18", proj_hidden_dim=16, proj_dim=8)).save_pretrained(ckpt)
    write_model_card(ckpt, config_cls.from_pretrained(ckpt), data={"dataset": None, "image_size": 64}, training={})
    loaded = model_cls.from_pretrained(ckpt)

    def input_size(folder):
        return json.loads((folder / "config.json").read_text())["pretrained_cfg"]["input_size"]

    assert input_size(export_timm(loaded, tmp_path / "timm")) == [3, 64, 64]
    assert input_size(export_timm(loaded, tmp_path / "timm-96", image_size=96)) == [3, 96, 96]
    fresh = model_cls(config_cls(backbone="resnet18", proj_hidden_dim=16, proj_dim=8))
    assert input_size(export_timm(fresh, tmp_path / "timm-fresh")) == [3, 224, 224]


def test_a_backbone_built_from_a_timm_folder_or_repo_exports_as_its_architecture(tmp_path):
    """A backbone given as `local-dir:…` (or `hf-hub:…`) was exported with that name as its architecture: timm
    cannot build it ("Unknown model"), and the config named a folder on this machine."""
    import json

    import timm
    from timm.models import save_for_hf

    from freeatm_hf.models import SimCLRConfig, SimCLRModel

    torch.manual_seed(0)
    save_for_hf(timm.create_model("resnet18", num_classes=0), tmp_path / "bb", safe_serialization=True)
    model = SimCLRModel(SimCLRConfig(backbone=f"local-dir:{tmp_path / 'bb'}", proj_hidden_dim=16, proj_dim=8)).eval()
    folder = export_timm(model, tmp_path / "timm")
    assert json.loads((folder / "config.json").read_text())["architecture"] == "resnet18"
    assert str(tmp_path / "bb") not in (folder / "config.json").read_text()
    x = torch.randn(2, 3, 64, 64)
    got, _ = read_stock("timm", folder, x, tmp_path)
    with torch.no_grad():
        assert (got - model.backbone.forward_features(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("arch", ["convnext_atto", "mobilenetv3_small_050"])
def test_a_cnn_whose_timm_head_adds_layers_after_the_pool_is_not_exported_to_timm(arch, tmp_path, in_process_hub):
    """timm's ConvNeXt normalizes after its pool, MobileNetV3 widens with a 1×1 conv and an activation: layers
    SimCLR and MoCo, which pool `forward_features`, never train. Their export's model(x) ran them at their initial
    weights (features off by 2.2 for convnext_atto, 1024 wide instead of 576 for mobilenetv3) under a card saying
    `model(x): pooled features`; `push-model --timm` published that."""
    from freeatm_hf.hub.cli import push_model_main
    from freeatm_hf.hub.model_card import write_model_card
    from freeatm_hf.models import SimCLRConfig, SimCLRModel

    model = SimCLRModel(SimCLRConfig(backbone=arch, proj_hidden_dim=16, proj_dim=8)).eval()
    with pytest.raises(ValueError, match=f"timm's {arch} runs layers after its pool"):
        export_timm(model, tmp_path / "timm")
    assert not (tmp_path / "timm" / "config.json").exists()
    model.save_pretrained(tmp_path / "ckpt")
    write_model_card(tmp_path / "ckpt", model.config, data={"dataset": "me/scenes"}, training={})
    with pytest.raises(ValueError, match="runs layers after its pool"):  # before anything is uploaded
        push_model_main([str(tmp_path / "ckpt"), "me/enc", "--timm"])
    assert not in_process_hub.repos

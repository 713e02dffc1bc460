"""Exported backbones load in stock timm, in a process that never imports freeatm_hf, with the same features."""

import subprocess
import sys

import pytest
import torch

from freeatm_hf.hub.export import export_timm
from freeatm_hf.models import METHODS

READER = r"""
import sys, torch, timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True, num_classes=0, global_pool="").eval()
assert "freeatm_hf" not in sys.modules
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model.forward_features(x), sys.argv[3])
print(model.pretrained_cfg["mean"], model.pretrained_cfg["input_size"])
"""


@pytest.mark.parametrize("method", ["simclr", "moco"])  # the CNN methods; MAE exports a ViT (test_mae.py)
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
    torch.save(x, tmp_path / "x.pt")
    res = subprocess.run([sys.executable, "-c", READER, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                         capture_output=True, text=True, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "(3, 224, 224)" in res.stdout  # pretrained_cfg travels with the weights
    with torch.no_grad():
        expected = model.backbone.forward_features(x)
    assert (torch.load(tmp_path / "y.pt") - expected).abs().max().item() < 1e-5


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

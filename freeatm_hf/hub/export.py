"""Hand a pretrained backbone to people who do not use freeatm_hf: a timm model folder in Hub layout.

    from freeatm_hf.hub.export import export_timm
    export_timm(SimCLRModel.from_pretrained("outputs/simclr-atm"), "outputs/simclr-atm-timm")
    # anywhere, without freeatm_hf:
    timm.create_model("local-dir:outputs/simclr-atm-timm", pretrained=True, num_classes=0)   # or hf-hub:user/repo
    export_torchvision(model, "outputs/simclr-atm-r50.pth")       # torchvision.models.resnet50 state dict
"""

from pathlib import Path

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


def export_timm(model, folder: str | Path, image_size: int = 224, notes: str | None = None) -> Path:
    """Write the backbone of a SimCLR/MoCo model with timm's own `save_for_hf` (config.json with
    `architecture` and `pretrained_cfg`, model.safetensors). The classifier is absent (`num_classes=0`)."""
    from timm.models import save_for_hf

    backbone = model.backbone
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = model.config.backbone
    cfg = {"architecture": arch, "num_classes": 0, "num_features": backbone.num_features, "global_pool": "avg",
           "pretrained_cfg": {"input_size": [3, image_size, image_size], "mean": list(IMAGENET_MEAN),
                              "std": list(IMAGENET_STD), "interpolation": "bicubic", "crop_pct": 0.875,
                              "num_classes": 0, "tag": f"freeatm_{model.config.model_type.split('_')[-1]}"}}
    save_for_hf(backbone, str(folder), model_config=cfg, safe_serialization=True)
    if notes:
        (folder / "NOTES.md").write_text(notes)
    return folder


def export_torchvision(model, path: str | Path) -> Path:
    """Save the backbone as a torchvision ResNet state dict (`torchvision.models.resnet50().load_state_dict`),
    the form detection code (Mask R-CNN, Detectron-style converters) expects. timm's ResNet names its layers
    like torchvision's; the classifier (`fc`) is absent, so load with `strict=False` or drop `fc` first."""
    import torch

    arch = model.config.backbone
    if not arch.startswith(("resnet", "wide_resnet", "resnext")):
        raise ValueError(f"torchvision export is for ResNet-family backbones, not {arch!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}, path)
    return path

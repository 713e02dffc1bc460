"""Hand a pretrained backbone to people who do not use freeatm_hf: a timm model folder in Hub layout.

    from freeatm_hf.hub.export import export_timm
    export_timm(SimCLRModel.from_pretrained("outputs/simclr-atm"), "outputs/simclr-atm-timm")
    # MAE's encoder and BLIP's vision tower become a timm VisionTransformer the same way
    # anywhere, without freeatm_hf:
    timm.create_model("local-dir:outputs/simclr-atm-timm", pretrained=True, num_classes=0)   # or hf-hub:user/repo
    export_torchvision(model, "outputs/simclr-atm-r50.pth")       # torchvision.models.resnet50 state dict
    # the same from the command line, from a checkpoint folder: freeatm export DIR OUT --to timm|torchvision|vit|...
"""

import json
from pathlib import Path

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, training_interpolation
from ..eval.frozen import EVAL_CROP_PCT

INHERITED_CFG_KEYS = ("test_input_size", "test_crop_pct", "test_crop_mode", "license", "origin_url", "paper_ids",
                      "paper_name", "hf_hub_id", "hf_hub_filename", "url", "notes", "description")


def drop_inherited_cfg(config: dict) -> dict:
    """A timm `save_for_hf` config.json without what it took from the architecture's default config: its test-time
    size and crop (timm's validate.py evaluates at those), and the licence, paper and origin of timm's ImageNet
    weights, none of which describe the weights saved."""
    for key in INHERITED_CFG_KEYS:
        config.get("pretrained_cfg", {}).pop(key, None)
    return config


def trained_image_size(model: str | Path) -> int | None:
    """The input side a checkpoint (folder or Hub id) was trained at, from its card facts, when they say."""
    from .model_card import card_facts

    size = ((card_facts(model) or {}).get("data") or {}).get("image_size")
    return int(size) if size else None


def _loaded_image_size(model) -> int | None:
    """The training size of the checkpoint folder `model` was loaded from (`from_pretrained` records the folder as
    `name_or_path`); None for a model built in code or loaded from the Hub (no download for a default)."""
    source = getattr(model, "name_or_path", None)
    return trained_image_size(source) if source and Path(source).is_dir() else None


def export_timm(model, folder: str | Path, image_size: int | None = None, notes: str | None = None) -> Path:
    """Write a model's image encoder as a timm model folder with timm's own `save_for_hf` (config.json with
    `architecture`, `model_args` and `pretrained_cfg`, model.safetensors), no classifier (`num_classes=0`):
    the ResNet (or other timm CNN) of SimCLR/MoCo, MAE's ViT encoder, or BLIP's vision tower (both as a timm
    `VisionTransformer` with a class token). `image_size` (the size timm's data config states) defaults to the ViT's
    own size; for a CNN, to the size it was trained at when it was loaded from a checkpoint folder whose card facts
    say (as `freeatm export` reads them), else 224."""
    from timm.models import save_for_hf

    kind = model.config.model_type.removeprefix("freeatm_")
    folder = Path(folder)
    check_export_folder(folder, "timm")
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("mae", "blip"):  # timm records the ViT's architecture and arguments itself
        backbone = _vit_encoder_as_timm(model)
        image_size, cnn = backbone.patch_embed.img_size[0], {}
    else:
        backbone, image_size = _pooled_cnn(model), image_size or _loaded_image_size(model) or 224
        cnn = {"architecture": _cnn_architecture(model, backbone), "num_features": backbone.num_features,
               "global_pool": "avg"}
    cfg = {"num_classes": 0, **cnn,
           "pretrained_cfg": {"input_size": [3, image_size, image_size], "mean": list(IMAGENET_MEAN),
                              "std": list(IMAGENET_STD), "interpolation": training_interpolation(kind), "crop_pct": EVAL_CROP_PCT,
                              "num_classes": 0, "tag": f"freeatm_{kind}"}}
    import os
    import tempfile

    # Written beside the folder and moved in, config.json last: a crash leaves no config (or the earlier
    # export's), never timm's unedited one, which loads as another model (the inherited test size and licence).
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp") as tmp:
        save_for_hf(backbone, tmp, model_config=cfg, safe_serialization=True)
        # transformers' TimmWrapperModel (AutoModel) passes num_classes itself and fails on a second one in
        # model_args; timm takes it from pretrained_cfg (0) all the same.
        config_path = Path(tmp) / "config.json"
        config = json.loads(config_path.read_text())
        config.get("model_args", {}).pop("num_classes", None)
        config_path.write_text(json.dumps(drop_inherited_cfg(config), indent=2))
        if notes:
            (Path(tmp) / "NOTES.md").write_text(notes)
        for name in sorted(os.listdir(tmp), key=lambda n: n == "config.json"):
            os.replace(Path(tmp) / name, folder / name)
    return folder


def _cnn_architecture(model, backbone) -> str:
    """timm's own name for the architecture: a backbone named `hf-hub:…` or `local-dir:…` is built from a config
    whose architecture this is, and timm cannot build an export that names the repo or folder instead."""
    return backbone.pretrained_cfg.get("architecture") or model.config.backbone


def _pooled_cnn(model):
    """A copy of a SimCLR/MoCo backbone whose `model(x)` gives the pooled features, as a timm model with
    num_classes=0 does (training reads the maps before pooling, so the training backbone has no pool). Refused
    where timm's head runs more than the pool (ConvNeXt's norm, MobileNetV3's 1×1 conv): layers that training,
    pooling `forward_features`, never used, so `model(x)` would run them at their initial weights."""
    import copy

    import torch

    backbone = copy.deepcopy(model.backbone)
    backbone.reset_classifier(0, global_pool="avg")
    param = next(backbone.parameters())
    maps = torch.randn(2, backbone.num_features, 3, 3, generator=torch.Generator().manual_seed(0))
    maps = maps.to(param.device, param.dtype)
    with torch.no_grad():
        head = backbone.eval().forward_head(maps)
    pooled = maps.mean((2, 3))
    if head.shape != pooled.shape or not torch.allclose(head.float(), pooled.float(), atol=1e-4):
        arch = _cnn_architecture(model, backbone)
        raise ValueError(f"timm's {arch} runs layers after its pool, which SimCLR and MoCo never train (they pool "
                         "forward_features): its timm export's model(x) would not give the trained features. Pool "
                         "`model.backbone.forward_features(x)` of the checkpoint (freeatm_hf) instead, or pretrain a "
                         "backbone whose timm head is its pool alone (resnet, efficientnet, regnet…)")
    return backbone


def check_timm_export(folder: str | Path):
    """Refuse, before anything is uploaded, a checkpoint whose timm export `export_timm` would refuse."""
    model = load_checkpoint(folder)
    if model.config.model_type not in ("freeatm_mae", "freeatm_blip"):
        _pooled_cnn(model)


def held_export(folder: str | Path) -> str | None:
    """What the model folder `folder` holds by its config.json: an export's kind (`timm`, `vit`, `blip-retrieval`,
    `blip-captioning`), or else a description of the model; None without a config.json."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return "an unreadable config.json"
    if not isinstance(config, dict):
        return "a config.json that is no model's"
    model_type = str(config.get("model_type") or "")
    if model_type.startswith("freeatm_"):
        return f"a freeatm {model_type.removeprefix('freeatm_')} checkpoint"
    if not model_type and "architecture" in config and "pretrained_cfg" in config:
        return "timm"
    if model_type == "vit":
        return "vit"
    architectures = config.get("architectures") or []
    if model_type == "blip" and "BlipForImageTextRetrieval" in architectures:
        return "blip-retrieval"
    if model_type == "blip" and "BlipForConditionalGeneration" in architectures:
        return "blip-captioning"
    return f"a {model_type or 'non-transformers'} model"


def check_export_folder(folder: str | Path, to: str):
    """Refuse an export into a folder that holds a model other than an earlier export of the same kind: its
    config.json and weights would be overwritten (a checkpoint lost), or mixed with the export's files."""
    held = held_export(folder)
    if held is None or held == to:
        return
    what = f"a {held} export" if held in ("timm", "vit", "blip-retrieval", "blip-captioning") else held
    raise ValueError(f"{folder} holds {what}, which a {to} export would overwrite: give a new folder (or one "
                     f"holding an earlier {to} export)")


def _vit_encoder_as_timm(model):
    """A timm `VisionTransformer` carrying the weights of MAE's encoder (transformers ViTMAE, fixed sin-cos
    position embeddings) or BLIP's vision tower (transformers BlipVisionModel). Both are pre-norm ViTs with a
    class token and a final LayerNorm; only the names differ, and ViTMAE keeps q, k, v apart where timm and
    BLIP fuse them. The LayerNorm eps picks the timm architecture (a config cannot carry it): 1e-6 is timm's
    ViT (MAE), 1e-5 its CLIP ViT without the pre-norm (BLIP); any other would change the features."""
    import timm
    import torch

    if model.config.model_type == "freeatm_mae":
        c, sd = model.config, model.vit.state_dict()
        qkv_bias = c.qkv_bias
        state = _stem(sd, "embeddings.cls_token", "embeddings.position_embeddings",
                      "embeddings.patch_embeddings.projection", "layernorm")
        for i in range(c.num_hidden_layers):
            layer = f"layers.{i}."
            att = layer + "attention."
            block = {"attn.qkv.weight": torch.cat([sd[f"{att}{n}_proj.weight"] for n in "qkv"]),
                     "attn.proj": att + "o_proj", "norm1": layer + "layernorm_before",
                     "norm2": layer + "layernorm_after", "mlp.fc1": layer + "mlp.fc1", "mlp.fc2": layer + "mlp.fc2"}
            if qkv_bias:
                block["attn.qkv.bias"] = torch.cat([sd[f"{att}{n}_proj.bias"] for n in "qkv"])
            state.update(_expand(f"blocks.{i}.", block, sd))
    elif model.config.model_type == "freeatm_blip":
        c, sd, qkv_bias = model.config.vision_config, model.vision_model.state_dict(), True
        state = _stem(sd, "embeddings.class_embedding", "embeddings.position_embedding", "embeddings.patch_embedding",
                      "post_layernorm")
        for i in range(c.num_hidden_layers):
            layer = f"encoder.layers.{i}."
            state.update(_expand(f"blocks.{i}.", {"attn.qkv": layer + "self_attn.qkv",
                                                  "attn.proj": layer + "self_attn.projection",
                                                  "norm1": layer + "layer_norm1", "norm2": layer + "layer_norm2",
                                                  "mlp.fc1": layer + "mlp.fc1", "mlp.fc2": layer + "mlp.fc2"}, sd))
    else:
        raise ValueError(f"no ViT encoder in a {model.config.model_type} model")
    if c.hidden_act != "gelu":
        raise ValueError(f"timm's ViT uses exact GELU; this encoder uses {c.hidden_act!r}")
    dims = dict(embed_dim=c.hidden_size, depth=c.num_hidden_layers, num_heads=c.num_attention_heads,
                mlp_ratio=c.intermediate_size / c.hidden_size, img_size=c.image_size, patch_size=c.patch_size,
                in_chans=getattr(c, "num_channels", 3), qkv_bias=qkv_bias)
    eps = c.layer_norm_eps
    if eps == 1e-6:
        arch, extra = "vit_base_patch16_224", {}
    elif eps == 1e-5:
        arch, extra = "vit_base_patch16_clip_224", {"pre_norm": False, "act_layer": "gelu"}
    else:
        raise ValueError(f"this encoder's LayerNorm eps is {eps}; timm's ViTs use 1e-6 or 1e-5, so its features "
                         f"would differ (MAE checkpoints: export_vit writes a transformers ViTModel instead)")
    vit = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="token", **dims, **extra)
    vit.load_state_dict(state, strict=True)  # every timm tensor filled, nothing left over
    return vit.eval()


def _stem(sd: dict, cls: str, pos: str, patch: str, norm: str) -> dict:
    """The tensors around the blocks: class token, position embeddings, patch projection, final norm."""
    return {"cls_token": sd[cls], "pos_embed": sd[pos], **_expand("", {"patch_embed.proj": patch, "norm": norm}, sd)}


def _expand(prefix: str, names: dict, sd: dict) -> dict:
    """timm name → tensor, for a block: values are tensors, or a source module prefix whose weight and bias
    (where present) carry over."""
    out = {}
    for dst, src in names.items():
        if not isinstance(src, str):
            out[prefix + dst] = src
            continue
        for p in ("weight", "bias"):
            if f"{src}.{p}" in sd:
                out[f"{prefix}{dst}.{p}"] = sd[f"{src}.{p}"]
    return out


def has_torchvision_twin(arch: str) -> bool:
    """Whether torchvision builds this timm ResNet under the same name and layer names (not resnet50d, resnetv2)."""
    import torchvision.models

    return arch.startswith(("resnet", "wide_resnet", "resnext")) and callable(getattr(torchvision.models, arch, None))


def export_torchvision(model, path: str | Path) -> Path:
    """Save the backbone as a torchvision ResNet state dict (`torchvision.models.resnet50().load_state_dict`),
    the form detection code (Mask R-CNN, Detectron-style converters) expects. timm's ResNet names its layers
    like torchvision's; the classifier (`fc`) is absent: set `model.fc = torch.nn.Identity()` and load strictly."""
    import torch

    arch = model.config.backbone
    if not has_torchvision_twin(arch):
        raise ValueError(f"torchvision export is for ResNet-family backbones torchvision has, not {arch!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}, path)
    return path


# What each method's checkpoint can become, besides timm (which needs its own repo root, see push_timm_export):
# a subfolder or file that stock libraries read, in the checkpoint folder or a pushed repo.
STOCK_EXPORTS = {"simclr": ("torchvision",), "moco": ("torchvision",), "mae": ("vit",),
                 "blip": ("blip-retrieval", "blip-captioning")}


def load_checkpoint(folder: str | Path):
    """A freeatm checkpoint folder as its model class (the Auto classes are registered on import)."""
    from transformers import AutoModel

    from .. import models  # noqa: F401

    # A missing folder would reach the Hub as a repo id ("Repo id must be in the form ...").
    if not (Path(folder) / "config.json").is_file():
        what = "no config.json in it" if Path(folder).is_dir() else "no such folder"
        raise ValueError(f"{folder} is not a checkpoint folder ({what}): pass a training output_dir")
    model_type = json.loads((Path(folder) / "config.json").read_text()).get("model_type", "")
    if not model_type.startswith("freeatm_"):
        raise ValueError(f"{folder} holds a {model_type or 'non-transformers'} model, not a freeatm checkpoint "
                         "(SimCLR, MoCo, MAE or BLIP from `freeatm train`)")
    return AutoModel.from_pretrained(str(folder))


def export_checkpoint(folder: str | Path, out: str | Path, to: str, model=None) -> Path:
    """Export the checkpoint in `folder` as `to`: "timm" (a timm model folder), "torchvision" (a ResNet state
    dict file), "vit" (a transformers ViTModel folder), "blip-retrieval" / "blip-captioning" (a stock BLIP
    folder, with the checkpoint's tokenizer and the image processor its weights were trained with). `model`:
    the checkpoint already loaded, when exporting it several ways."""
    if Path(out).resolve() == Path(folder).resolve():
        raise ValueError(f"the export would overwrite the checkpoint in {folder}: give another output path")
    if to == "torchvision" and Path(out).is_dir():
        raise ValueError(f"{out} is a folder; a torchvision export is one state-dict file (e.g. {Path(out) / 'resnet50.pth'})")
    if to != "torchvision" and Path(out).is_file():
        raise ValueError(f"{out} is a file; a {to} export is a folder: give a folder's path")
    if to != "torchvision":
        check_export_folder(out, to)
    model = model if model is not None else load_checkpoint(folder)
    method = model.config.model_type.removeprefix("freeatm_")
    if to != "timm" and to not in STOCK_EXPORTS[method]:
        raise ValueError(f"a {method} checkpoint exports to timm or {', '.join(STOCK_EXPORTS[method])}, not {to!r}")
    if to == "timm":
        return export_timm(model, out, image_size=trained_image_size(folder))
    if to == "torchvision":
        return export_torchvision(model, out)
    if to == "vit":
        from ..models.mae import export_vit

        return Path(export_vit(model, out))
    import PIL.Image
    from transformers import AutoTokenizer, BlipImageProcessor

    from ..models.blip import export_stock

    try:  # a BLIP folder without its tokenizer would load, then fail at the first caption
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder} has no tokenizer, which a {to} export needs: export the training output_dir, "
                         f"or a checkpoint saved with its tokenizer") from e
    export_stock(model, out, kind=to.removeprefix("blip-"))
    tokenizer.save_pretrained(out)
    # The input pipeline the weights were trained with (freeatm's BLIP normalizes with ImageNet statistics).
    side = model.config.vision_config.image_size
    # Bilinear, as `freeatm eval retrieval` resizes (BlipImageProcessor's own default is bicubic).
    BlipImageProcessor(size={"height": side, "width": side}, image_mean=list(IMAGENET_MEAN),
                       image_std=list(IMAGENET_STD), resample=PIL.Image.BILINEAR).save_pretrained(out)
    return Path(out)


def add_stock_exports(folder: str | Path) -> list[str]:
    """Write the method's stock exports into the checkpoint folder itself (`torchvision/<arch>.pth`, `vit/`,
    `blip-retrieval/`, `blip-captioning/`), so that a pushed repo serves them to users without freeatm_hf:
    `ViTModel.from_pretrained(repo, subfolder="vit")`. Returns the paths written, relative to the folder."""
    from ..files import write_text_atomic
    from .model_card import weights_fingerprint

    folder = Path(folder)
    model = load_checkpoint(folder)
    kinds = [k for k in STOCK_EXPORTS[model.config.model_type.removeprefix("freeatm_")]
             if k != "torchvision" or has_torchvision_twin(model.config.backbone)]  # else timm serves it
    paths = [f"torchvision/{model.config.backbone}.pth" if k == "torchvision" else k for k in kinds]
    # Which weights each export was made from: a push leaves out an export of other weights (`stale_exports`).
    # Each one leaves the record while it is rewritten, so one cut short by a crash counts as stale, the others not.
    record = folder / EXPORTS_RECORD
    record.parent.mkdir(exist_ok=True)
    made, weights = exports_made(folder), weights_fingerprint(folder)
    for kind, rel in zip(kinds, paths, strict=True):
        made.pop(rel, None)
        write_text_atomic(record, json.dumps(made, indent=2))
        export_checkpoint(folder, folder / rel, kind, model=model)
        made[rel] = weights
        write_text_atomic(record, json.dumps(made, indent=2))
    return paths


EXPORTS_RECORD = ".freeatm/exports.json"  # beside the checkpoint (never pushed): the weights each export is of


def exports_made(folder: Path) -> dict[str, str]:
    """The fingerprint of the weights each recorded export was made from, by its path in the folder."""
    record = folder / EXPORTS_RECORD
    return json.loads(record.read_text()) if record.is_file() else {}


def stale_exports(folder: str | Path) -> list[str]:
    """The stock exports in a checkpoint folder not made from the weights it holds now (retrained since, or
    written before exports were recorded): paths relative to the folder."""
    from .model_card import weights_fingerprint

    folder = Path(folder)
    made = exports_made(folder)
    now = None
    stale = []
    for kind in sorted({k for kinds in STOCK_EXPORTS.values() for k in kinds}):
        for path in sorted(folder.glob("torchvision/*.pth") if kind == "torchvision" else [folder / kind]):
            if not path.exists():
                continue
            rel = path.relative_to(folder).as_posix()
            now = now or weights_fingerprint(folder)
            if made.get(rel) != now:
                stale.append(rel)
    return stale

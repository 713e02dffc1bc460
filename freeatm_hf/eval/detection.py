"""Detection / instance segmentation fine-tuning with torchvision's Mask R-CNN R50-FPN (the detector family
of the Free-ATM, MoCo and SimCLR papers), initialised from a pretrained ResNet backbone; box and mask AP by
the COCO protocol (torchmetrics' `MeanAveragePrecision` on the pycocotools backend).

    freeatm eval detect --model outputs/moco-atm --dataset outputs/shapes-coco --output_dir outputs/det

Data: a COCO-style folder, `images/<split>/…` and `annotations/<split>.json` (polygons or RLE), read by
`torchvision.datasets.CocoDetection` wrapped for transforms v2, so boxes and masks follow the flips. As in
the usual protocol for self-supervised backbones, batch norm is frozen (`FrozenBatchNorm2d`, the pretrained
statistics) and the stem and first stage are not trained (`trainable_layers=3`). Crowd regions (`iscrowd`) are
left out of training and ignored by the AP, as COCOeval does; category ids (any numbering, 0 included) become
the detector's labels 1..K in sorted order, 0 being its background (`categories.json` keeps the map).
"""

import functools
import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)


def maskrcnn_from_backbone(model, num_classes: int, trainable_layers: int = 3, min_size: int = 800,
                           max_size: int = 1333):
    """A torchvision `MaskRCNN` (ResNet-FPN) whose ResNet carries `model.backbone`'s weights; `num_classes`
    excludes the background."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    arch = getattr(getattr(model, "config", None), "backbone", None)
    if not isinstance(arch, str) or not arch.startswith(("resnet", "wide_resnet", "resnext")):
        what = f"backbone {arch!r}" if isinstance(arch, str) else f"a {type(model).__name__} (no CNN backbone)"
        raise ValueError(f"Mask R-CNN fine-tuning (eval detect) needs a ResNet-family CNN checkpoint, got {what}")
    fpn = resnet_fpn_backbone(backbone_name=arch, weights=None, norm_layer=FrozenBatchNorm2d,
                              trainable_layers=trainable_layers)
    state = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith("fc.")}
    # timm and torchvision name ResNet layers alike; the FPN body is the ResNet without avgpool/fc.
    missing, unexpected = fpn.body.load_state_dict(state, strict=False)
    if missing or [k for k in unexpected if not k.endswith("num_batches_tracked")]:
        raise ValueError(f"backbone weights do not fit torchvision's {arch}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return MaskRCNN(fpn, num_classes=num_classes + 1, min_size=min_size, max_size=max_size)


class DetectionLoss(nn.Module):
    """Trainer-facing wrapper: torchvision detectors return a dict of losses in train mode."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images, targets):
        losses = self.detector(images, targets)
        return {"loss": sum(losses.values())}


def coco_split(folder: str | Path, split: str, train: bool):
    """`CocoDetection` of `<folder>/images/<split>` + `<folder>/annotations/<split>.json`, wrapped for v2."""
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
    from torchvision.transforms import v2

    folder = Path(folder)
    ann = folder / "annotations" / f"{split}.json"
    images = folder / "images" / split
    if not ann.is_file() or not images.is_dir():
        raise FileNotFoundError(f"a COCO-style folder needs {ann} and {images}/")
    steps = [v2.ToImage()] + ([v2.RandomHorizontalFlip()] if train else []) + [v2.ToDtype(torch.float32, scale=True)]
    ds = CocoDetection(str(images), str(ann), transforms=v2.Compose(steps))
    return wrap_dataset_for_transforms_v2(ds, target_keys=("image_id", "boxes", "labels", "masks", "iscrowd"))


def category_ids(dataset) -> list[int]:
    """The COCO category ids of a `coco_split`, sorted: id `category_ids[k - 1]` is the detector's label k."""
    ids = sorted(c["id"] for c in dataset.coco.dataset["categories"])
    if not ids:
        raise ValueError("the annotations list no categories")
    return ids


def collate(rows, categories: list[int] | None = None, drop_crowd: bool = True):
    """Images and Mask R-CNN targets; `categories` (from `category_ids`) maps COCO ids to labels 1..K. With
    `drop_crowd` (training) crowd regions and boxes of no area are left out; else they stay (crowds flagged
    `iscrowd`, for the AP to ignore), as COCOeval reads the ground truth."""
    images, targets = [], []
    lookup = {c: k + 1 for k, c in enumerate(categories)} if categories is not None else None
    for image, t in rows:
        h, w = image.shape[-2:]
        # The v2 wrapper leaves out boxes/labels/masks for an image without annotations.
        target = {"boxes": t.get("boxes", torch.zeros(0, 4)).as_subclass(torch.Tensor).float(),
                  "labels": t.get("labels", torch.zeros(0, dtype=torch.int64)).as_subclass(torch.Tensor),
                  "masks": t.get("masks", torch.zeros(0, h, w, dtype=torch.uint8)).as_subclass(torch.Tensor),
                  "iscrowd": torch.as_tensor(t.get("iscrowd", [0] * len(t.get("labels", []))), dtype=torch.int64)}
        if lookup is not None:
            unknown = sorted({int(c) for c in target["labels"]} - set(lookup))
            if unknown:
                raise ValueError(f"annotations use category ids {unknown} that the categories list lacks")
            target["labels"] = torch.tensor([lookup[int(c)] for c in target["labels"]], dtype=torch.int64)
        if drop_crowd:
            # A box of no width or height is left out too, as torchvision's COCO reference does: Mask R-CNN refuses
            # such a target, and COCO train2017 holds two (height 0), which ended a run when a batch drew them.
            boxes = target["boxes"]
            keep = (target.pop("iscrowd") == 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            target = {k: v[keep] for k, v in target.items()}
        targets.append(target)
        images.append(image.as_subclass(torch.Tensor))
    return {"images": images, "targets": targets}


@torch.no_grad()
def coco_ap(detector, dataset, batch_size: int = 8, mask_threshold: float = 0.5,
            categories: list[int] | None = None) -> dict:
    """Box and mask AP, AP50, AP75 (COCO protocol: crowd regions ignored) of `detector` on `dataset`, whose
    labels are `categories` mapped to 1..K (see `collate`)."""
    from pycocotools.cocoeval import Params
    from torchmetrics.detection import MeanAveragePrecision
    from tqdm.auto import tqdm

    device = next(detector.parameters()).device
    detector.eval()
    # COCOeval's own IoU and recall grids: torchmetrics hands COCOeval float32 linspaces instead, whose points
    # fall on the other side of a recall such as 7/10 or an IoU such as 0.6 (AP 71/101 where COCO says 70/101).
    coco = Params(iouType="bbox")
    metric = MeanAveragePrecision(iou_type=("bbox", "segm"), backend="pycocotools",
                                  iou_thresholds=coco.iouThrs.tolist(), rec_thresholds=coco.recThrs.tolist())
    for start in tqdm(range(0, len(dataset), batch_size), desc="detect", leave=False):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))], categories,
                        drop_crowd=False)
        outputs = detector([im.to(device) for im in batch["images"]])
        preds = [{"boxes": o["boxes"].cpu(), "scores": o["scores"].cpu(), "labels": o["labels"].cpu(),
                  "masks": (o["masks"][:, 0] > mask_threshold).cpu()} for o in outputs]
        refs = [{"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"].bool(), "iscrowd": t["iscrowd"]}
                for t in batch["targets"]]
        metric.update(preds, refs)
    r = metric.compute()
    return {f"{kind}_{name}": float(r[f"{prefix}_{name}"]) for kind, prefix in (("box", "bbox"), ("mask", "segm"))
            for name in ("map", "map_50", "map_75")}


def finetune_detection(model_dir: str, dataset: str, output_dir: str, train_split="train", test_split="test",
                       epochs: float = 12, learning_rate: float = 0.02, batch_size: int = 16, max_steps: int = -1,
                       min_size: int = 800, max_size: int = 1333, trainable_layers: int = 3, seed: int = 0,
                       use_cpu=None, update_card: bool = True) -> list[dict]:
    """Fine-tune Mask R-CNN from the checkpoint's backbone (SGD with momentum, as detectron's schedules),
    report box/mask AP on the test split, save the detector's state dict, and update the card."""
    import json

    from transformers import Trainer, set_seed

    from .. import models  # noqa: F401  (registers the Auto classes)
    from ..hub.model_card import record_results
    from .finetune import finetune_training_args
    from .frozen import distinct_splits, load_model

    distinct_splits(train_split, test_split)
    train_ds = coco_split(dataset, train_split, train=True)
    test_ds = coco_split(dataset, test_split, train=False)
    categories = category_ids(train_ds)
    if category_ids(test_ds) != categories:
        raise ValueError(f"{train_split} and {test_split} list different categories: labels would not correspond")
    listed = set(categories)
    for split, ds in ((train_split, train_ds), (test_split, test_ds)):
        # Found by the collate, such an annotation ended the run when a batch drew it (in the test split: after
        # the whole fine-tune, when scoring).
        anns = ds.coco.dataset.get("annotations") or []
        unknown = [a["category_id"] for a in anns if a["category_id"] not in listed]
        if unknown:
            raise ValueError(f"{dataset} [{split}]: {len(unknown)} annotation(s) use category ids "
                             f"{sorted(set(unknown))} that the categories list lacks")
    coco = test_ds.coco.dataset
    if not any(not a.get("iscrowd", 0) for a in coco.get("annotations") or []):
        # COCOeval's AP of a split with nothing to find is its -1 for "undefined", which would go into the card.
        raise ValueError(f"the {test_split} split of {dataset} has no object to find ({len(coco.get('images') or [])} "
                         f"images, 0 annotations that are not crowd regions): AP is undefined; evaluate on an "
                         "annotated split (COCO's test-dev lists its images alone)")
    pretrained = load_model(model_dir)
    set_seed(seed)  # the new heads' weights: Trainer seeds only after they exist
    detector = maskrcnn_from_backbone(pretrained, num_classes=len(categories), trainable_layers=trainable_layers,
                                      min_size=min_size, max_size=max_size)
    args = finetune_training_args(output_dir, epochs, learning_rate, batch_size, seed, max_steps, use_cpu,
                                  optim="sgd", optim_args="momentum=0.9", weight_decay=1e-4, warmup_steps=0.05,
                                  max_grad_norm=10.0)
    trainer = Trainer(model=DetectionLoss(detector), args=args, train_dataset=train_ds,
                      data_collator=functools.partial(collate, categories=categories))
    trainer.train()
    if not trainer.is_world_process_zero():  # one process saves, scores the test split and writes the card
        return []
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(detector.state_dict(), out / "maskrcnn.pth")
    names = {c["id"]: c.get("name", str(c["id"])) for c in train_ds.coco.dataset["categories"]}
    (out / "categories.json").write_text(json.dumps(
        {str(k + 1): {"category_id": c, "name": names[c]} for k, c in enumerate(categories)}, indent=2))
    ap = coco_ap(detector, test_ds, batch_size=batch_size, categories=categories)
    (out / "coco_ap.json").write_text(json.dumps(ap, indent=2))
    logger.info("detection: box AP %.4f, mask AP %.4f", ap["box_map"], ap["mask_map"])
    base = {"task": "object-detection", "dataset": str(dataset), "split": test_split, "revision": None}
    results = [{**base, "metric": k, "value": v} for k, v in ap.items()]
    if update_card:
        record_results(model_dir, results, pretrained.config)
    return results

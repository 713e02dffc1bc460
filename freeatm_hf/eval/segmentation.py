"""Semantic segmentation fine-tuning from a pretrained CNN backbone, with transformers' UperNet on a timm
backbone (`UperNetForSemanticSegmentation` + `TimmBackboneConfig`): the head is a stock HF model, so the
fine-tuned folder loads with `UperNetForSemanticSegmentation.from_pretrained` and no freeatm_hf.

    freeatm eval segment --model outputs/simclr-atm --dataset outputs/shapes-seg --output_dir outputs/seg

Data: any `load_dataset` id or folder with an image column and a label-map column (the scene_parse_150 /
ADE20K layout: `image`, `annotation`); `--reduce_labels` maps 0 ("other") to the ignore index and shifts the
rest down, as ADE20K's protocol does. Image and label map get the same random resized crop and flip
(torchvision v2 with `tv_tensors.Mask`, nearest-exact for the labels). The test mIoU is computed at each label
map's own resolution (logits are upsampled to it), summed over the split per class.
"""

import logging

import numpy as np
import torch
from torch import nn

from ..data.rows import rgb

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255


def upernet_from_backbone(model, num_labels: int, id2label: dict | None = None, hidden_size: int = 512):
    """A fresh `UperNetForSemanticSegmentation` whose timm backbone carries `model.backbone`'s weights
    (a freeatm SimCLR/MoCo model, or anything with `.backbone` and `.config.backbone` = a timm CNN name)."""
    from transformers import TimmBackboneConfig, UperNetConfig, UperNetForSemanticSegmentation

    if not hasattr(model, "backbone") or not hasattr(model.config, "backbone"):
        raise ValueError(f"UperNet fine-tuning (eval segment) needs a CNN checkpoint (SimCLR/MoCo), not a "
                         f"{type(model).__name__}; evaluate it with eval knn or eval finetune")
    backbone_config = TimmBackboneConfig(backbone=model.config.backbone, out_indices=(1, 2, 3, 4))
    id2label = id2label or {i: str(i) for i in range(num_labels)}
    config = UperNetConfig(backbone_config=backbone_config, num_labels=num_labels, hidden_size=hidden_size,
                           auxiliary_channels=hidden_size // 2, loss_ignore_index=IGNORE_INDEX,
                           id2label={int(k): v for k, v in id2label.items()},
                           label2id={v: int(k) for k, v in id2label.items()})
    seg = UperNetForSemanticSegmentation(config)
    missing, unexpected = seg.backbone._backbone.load_state_dict(model.backbone.state_dict(), strict=False)
    # The feature extractor has no classifier; everything else must match one to one.
    unexpected = [k for k in unexpected if not k.startswith(("fc.", "head.", "classifier."))]
    if missing or unexpected:
        raise ValueError(f"backbone weights do not fit {model.config.backbone}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return seg


def _transforms(image_size: int, reduce_labels: bool, num_labels: int):
    from torchvision import tv_tensors
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, resized_crop_mask

    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    crop = v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True)

    def labels_of(annotation) -> torch.Tensor:
        lab = torch.as_tensor(np.array(annotation), dtype=torch.int64)
        if lab.ndim != 2:
            raise ValueError(f"label maps must be single-channel, got shape {tuple(lab.shape)}")
        if reduce_labels:  # 0 (background) → ignored, k → k − 1; void pixels stay void
            lab = torch.where((lab == 0) | (lab == IGNORE_INDEX), IGNORE_INDEX, lab - 1)
        top = int(lab[lab != IGNORE_INDEX].max()) if (lab != IGNORE_INDEX).any() else -1
        if top >= num_labels:  # else a CUDA device-side assert in the loss, hours in
            raise ValueError(f"a label map holds class {top}, but the head has num_labels={num_labels} (classes "
                             f"0..{num_labels - 1}{', after --reduce_labels' if reduce_labels else ''}): pass a larger "
                             "--num_labels")
        return lab

    def paired(image, annotation) -> tuple[torch.Tensor, torch.Tensor]:
        """The image as uint8 CHW and its label map, which must cover the same pixels: a map of another size was
        cropped unlike its image in training, and stretched onto the prediction in testing, without a word."""
        img, lab = v2.functional.pil_to_tensor(rgb(image)), labels_of(annotation)
        if tuple(img.shape[-2:]) != tuple(lab.shape):
            (h, w), (lh, lw) = img.shape[-2:], lab.shape
            turned = " (turned by 90°: a JPEG with an EXIF rotation is read upright, as viewers show it, so its " \
                     "label map must be drawn on the upright image)" if (h, w) == (lw, lh) else ""
            raise ValueError(f"an image is {w}x{h} but its label map is {lw}x{lh}{turned}: each label map must "
                             "have its image's size")
        return img, lab

    def train_tf(image, annotation):
        img, lab = paired(image, annotation)
        box = crop.make_params([img])
        box = (box["top"], box["left"], box["height"], box["width"])
        img = F.resized_crop(tv_tensors.Image(img), *box, [image_size, image_size], antialias=True)
        lab = resized_crop_mask(lab, box, image_size)  # nearest-exact, as the pretraining masks
        if torch.rand(()) < 0.5:
            img, lab = F.horizontal_flip(img), F.horizontal_flip(lab)
        return norm(img), lab.as_subclass(torch.Tensor)

    def test_tf(image, annotation):
        img, lab = paired(image, annotation)
        img = v2.functional.resize(img, [image_size, image_size], antialias=True)
        return norm(img), lab

    return train_tf, test_tf


def label_maps(ds, column: str, where: str):
    """`ds` with a label-map column of file paths (a CSV's or JSON Lines', as its images) or of `{bytes, path}`
    read as images, as `as_images` reads the image column; images and arrays (rows of labels) are left. Left as
    strings, the paths reached the class count as text."""
    from datasets import Value

    from ..data.reading import as_images

    feature = (ds.features or {}).get(column)
    if (isinstance(feature, Value) and feature.dtype in ("string", "large_string")) or (
            isinstance(feature, dict) and set(feature) == {"bytes", "path"}):
        return as_images(ds, column, where)
    return ds


def largest_label(annotations, reduce_labels: bool = False) -> int:
    """The largest class in these label maps (-1: none), the ignore index (void) left out; with `reduce_labels`
    0 is ignored too and the rest shift down by one."""
    from tqdm.auto import tqdm

    top = -1
    for a in tqdm(annotations, desc="count labels", leave=False, disable=len(annotations) < 1000):
        labels = np.asarray(a)
        labels = labels[labels != IGNORE_INDEX]
        if labels.size:
            top = max(top, int(labels.max()))
    return top - 1 if reduce_labels else top


def count_labels(annotations, reduce_labels: bool = False) -> int:
    """Classes in these label maps: the largest label + 1, the ignore index (void) left out; with
    `reduce_labels` 0 is ignored too and the rest shift down by one."""
    num_labels = largest_label(annotations, reduce_labels) + 1
    if num_labels < 1:
        raise ValueError(f"the label maps hold no class (every pixel is {IGNORE_INDEX}, the ignore index"
                         + (", or 0, ignored with --reduce_labels" if reduce_labels else "") + "): pass --num_labels")
    return num_labels


def confusion_matrix(prediction, reference, num_labels: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """`(num_labels, num_labels)` pixel counts, row: reference class, column: predicted class; pixels whose
    reference is `ignore_index` are skipped. Label maps: arrays or tensors of one shape."""
    p, r = torch.as_tensor(prediction).long(), torch.as_tensor(reference).long()
    if p.shape != r.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and reference {tuple(r.shape)} differ in shape")
    keep = r != ignore_index
    p, r = p[keep], r[keep]
    if ((r < 0) | (r >= num_labels)).any() or ((p < 0) | (p >= num_labels)).any():
        raise ValueError(f"labels must lie in [0, {num_labels}) (or be ignore_index={ignore_index})")
    return torch.bincount(r * num_labels + p, minlength=num_labels * num_labels).view(num_labels, num_labels)


@torch.no_grad()
def predict_confusion(model, dataset, num_labels: int, batch_size: int = 16, device=None) -> torch.Tensor:
    """The test set's confusion matrix of arg-max label maps at each reference's resolution, counted on the
    device image by image (the maps themselves are not kept: a test set of them is gigabytes)."""
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    model.eval()
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.long, device=device)
    for start in tqdm(range(0, len(dataset), batch_size), desc="segment", leave=False):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        logits = model(pixel_values=torch.stack([r["pixel_values"] for r in rows]).to(device)).logits
        for lg, r in zip(logits, rows, strict=True):
            up = nn.functional.interpolate(lg[None].float(), size=r["labels"].shape, mode="bilinear",
                                           align_corners=False)
            confusion += confusion_matrix(up[0].argmax(0), r["labels"].to(device), num_labels)
    return confusion.cpu()


def finetune_segmentation(model_dir: str, dataset: str, output_dir: str, train_split="train", test_split="test",
                          image_column="image", label_column="annotation", num_labels: int | None = None,
                          reduce_labels: bool = False, image_size: int = 512, epochs: float = 10,
                          learning_rate: float = 1e-4, batch_size: int = 16, max_steps: int = -1, seed: int = 0,
                          revision: str | None = None, use_cpu=None, update_card: bool = True) -> list[dict]:
    """Fine-tune UperNet + the checkpoint's backbone on the train split, report test mIoU (and pixel accuracy),
    save the fine-tuned UperNet to `output_dir`, and add the numbers to the checkpoint's results and card."""
    from transformers import Trainer, set_seed

    from .. import models  # noqa: F401  (registers the Auto classes)
    from ..data.reading import as_images, load
    from ..hub.model_card import record_results
    from .finetune import finetune_training_args
    from .frozen import distinct_splits, load_model
    from .metrics import load_metric

    distinct_splits(train_split, test_split)
    train_ds = load(dataset, split=train_split, revision=revision)
    test_ds = load(dataset, split=test_split, revision=revision)
    for col in (image_column, label_column):
        if col not in train_ds.column_names:
            raise ValueError(f"{dataset} has no column {col!r} (columns: {train_ds.column_names})")
    train_ds, test_ds = (label_maps(as_images(d, image_column, f"{dataset} [{s}]"), label_column, f"{dataset} [{s}]")
                         for d, s in ((train_ds, train_split), (test_ds, test_split)))
    for d, s in ((train_ds, train_split), (test_ds, test_split)):
        # A row without a map (scene_parse_150's test split has none) has nothing to train on or score.
        missing = d.with_format("arrow")[label_column].null_count
        if missing:
            raise ValueError(f"{dataset} [{s}] has {missing} of {len(d)} rows without a label map ({label_column!r} is "
                             "null): evaluate on a labelled split (ADE20K's: --test_split validation)")
    # The test maps too, now: a class past the head's would otherwise be found only when scoring, after training.
    test_top = largest_label(test_ds[label_column], reduce_labels)  # a lazy column: decoded one by one
    if num_labels is None:
        # Every map: a class first seen late in the split would crash training when its image comes up.
        num_labels = count_labels(train_ds[label_column], reduce_labels)
        if test_top >= num_labels:
            # An output it never learns: the class scores IoU 0 in the mean, as the test split holds it.
            logger.warning("the %s split holds class %d, which no %s label map has: the head gets %d classes",
                           test_split, test_top, train_split, test_top + 1)
            num_labels = test_top + 1
        logger.info("num_labels = %d (from the label maps; pass num_labels to override)", num_labels)
    elif test_top >= num_labels:
        raise ValueError(f"a {test_split} label map holds class {test_top}, but the head has num_labels={num_labels} "
                         f"(classes 0..{num_labels - 1}{', after --reduce_labels' if reduce_labels else ''}): pass a "
                         "larger --num_labels")
    if num_labels < 2:
        # One class is predicted everywhere, and its IoU, the mean, is 1 for any model.
        raise ValueError(f"the label maps hold a single class (0): there is nothing to segment; {IGNORE_INDEX} is the "
                         "void index, ignored (a binary mask drawn 0/255 needs its objects as 1)"
                         + (", and 0 is ignored with --reduce_labels" if reduce_labels else ""))
    train_tf, test_tf = _transforms(image_size, reduce_labels, num_labels)

    def with_tf(tf):
        def apply(batch):
            out = [tf(im, ann) for im, ann in zip(batch[image_column], batch[label_column], strict=True)]
            return {"pixel_values": [o[0] for o in out], "labels": [o[1] for o in out]}
        return apply

    train_ds = train_ds.with_transform(with_tf(train_tf))
    test_ds = test_ds.with_transform(with_tf(test_tf))
    pretrained = load_model(model_dir)
    set_seed(seed)  # the new head's weights: Trainer seeds only after they exist
    seg = upernet_from_backbone(pretrained, num_labels)
    args = finetune_training_args(output_dir, epochs, learning_rate, batch_size, seed, max_steps, use_cpu)
    trainer = Trainer(model=seg, args=args, train_dataset=train_ds)
    trainer.train()
    trainer.save_model(output_dir)
    if not trainer.is_world_process_zero():  # one process scores the test split and writes the card
        return []
    confusion = predict_confusion(trainer.model, test_ds, num_labels, batch_size=batch_size)
    scores = load_metric("semantic_miou").compute(predictions=confusion.tolist(), references=list(range(num_labels)))
    logger.info("segmentation: mIoU %.4f, pixel accuracy %.4f", scores["mean_iou"], scores["overall_accuracy"])
    base = {"task": "image-segmentation", "dataset": dataset, "split": test_split, "revision": revision}
    results = [{**base, "metric": "segmentation_miou", "value": scores["mean_iou"]},
               {**base, "metric": "segmentation_pixel_accuracy", "value": scores["overall_accuracy"]}]
    if update_card:
        record_results(model_dir, results, pretrained.config)
    return results


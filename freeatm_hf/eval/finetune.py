"""End-to-end fine-tuning for image classification through transformers' Trainer, from a pretrained
checkpoint: the ViT of an MAE checkpoint becomes a stock `ViTForImageClassification`; a CNN backbone becomes a
timm classifier of its architecture. Top-1 on the test split goes into the checkpoint's results and card; the
fine-tuned classifier is saved to `output_dir` in its library's own layout, label names included, so it loads
without freeatm_hf."""

import copy
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..data.rows import rgb


class CNNClassifier(nn.Module):
    """The timm CNN with timm's own classifier head for `num_labels` (ResNet: global average pool + linear);
    returns `{"loss", "logits"}` for Trainer. `model` is a plain timm model: `save_timm_classifier` writes it."""

    def __init__(self, backbone: nn.Module, num_labels: int):
        super().__init__()
        # A copy: the pretraining backbone (no pool, no classifier) stays as it was.
        self.model = copy.deepcopy(backbone)
        self.model.reset_classifier(num_labels, global_pool="avg")

    def forward(self, pixel_values, labels=None):
        logits = self.model(pixel_values)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def save_timm_classifier(clf: CNNClassifier, folder, architecture: str, label_names: list[str], image_size: int):
    """The fine-tuned CNN as a timm model folder (timm's `save_for_hf`): `timm.create_model("local-dir:folder",
    pretrained=True)` is the classifier, its config naming the labels, and timm's data config states the
    evaluation's preprocessing (a bilinear resize of the whole image to the side, ImageNet statistics)."""
    from timm.models import save_for_hf

    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    n = len(label_names)
    cfg = {"architecture": architecture, "num_classes": n, "num_features": clf.model.num_features,
           "global_pool": "avg", "label_names": list(label_names),
           "pretrained_cfg": {"input_size": [3, image_size, image_size], "mean": list(IMAGENET_MEAN),
                              "std": list(IMAGENET_STD), "interpolation": "bilinear", "crop_pct": 1.0,
                              "crop_mode": "squash", "num_classes": n, "tag": "freeatm_finetuned"}}
    save_for_hf(clf.model, str(folder), model_config=cfg, safe_serialization=True)
    from ..hub.export import drop_inherited_cfg

    path = Path(folder) / "config.json"  # a ResNet's inherited test size, 288, is not the size this one was scored at
    path.write_text(json.dumps(drop_inherited_cfg(json.loads(path.read_text())), indent=2))


def save_vit_processor(folder, image_size: int):
    """The fine-tuned ViT classifier's image processor: the evaluation's preprocessing (a bilinear resize of the
    whole image to the side, ImageNet statistics), so that `pipeline("image-classification", model=folder)` feeds
    the classifier what it was fine-tuned and scored on."""
    from transformers import ViTImageProcessor
    from transformers.image_utils import PILImageResampling

    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    ViTImageProcessor(size={"height": image_size, "width": image_size}, resample=PILImageResampling.BILINEAR,
                      image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(folder)


def finetune_training_args(output_dir: str, epochs: float, learning_rate: float, batch_size: int, seed: int = 0,
                           max_steps: int = -1, use_cpu=None, **extra):
    """The `TrainingArguments` every downstream fine-tune shares (no checkpoints, no trackers, the caller's
    columns kept for its own transform); `extra` adds the task's optimiser and schedule settings."""
    from transformers import TrainingArguments

    from ..devices import unpinned_on_cpu

    return unpinned_on_cpu(TrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs, max_steps=max_steps, learning_rate=learning_rate,
        per_device_train_batch_size=batch_size, remove_unused_columns=False, save_strategy="no", report_to="none",
        seed=seed, logging_steps=10, **({"use_cpu": use_cpu} if use_cpu is not None else {}), **extra))


def classification_model(model, num_labels: int, label_names: list[str] | None = None):
    if hasattr(model, "backbone"):
        return CNNClassifier(model.backbone, num_labels)
    if hasattr(model, "vit"):
        from transformers import ViTForImageClassification

        from ..models.mae import export_vit

        names = label_names or [f"LABEL_{i}" for i in range(num_labels)]
        with tempfile.TemporaryDirectory(prefix="freeatm-vit-") as folder:  # the weights are read into memory
            export_vit(model, folder)
            return ViTForImageClassification.from_pretrained(
                folder, num_labels=num_labels, id2label=dict(enumerate(names)),
                label2id={name: i for i, name in enumerate(names)})
    raise ValueError(f"no classification fine-tuning for {type(model).__name__}: eval finetune takes a SimCLR, MoCo "
                     "or MAE checkpoint")


def finetune_classification(model_dir: str, dataset: str, output_dir: str, train_split="train", test_split="test",
                            image_column="image", label_column="label", image_size: int | None = None,
                            epochs: float = 10, learning_rate=1e-3, batch_size=64, seed=0, use_cpu=None,
                            update_card=True, revision: str | None = None, max_steps: int = -1) -> list[dict]:
    """Fine-tune the checkpoint end to end on `train_split`, report top-1 on `test_split`, save the classifier to
    `output_dir` and, with `update_card`, add `finetune_top1` to the checkpoint's results and card. `image_size`
    defaults to the checkpoint's own (`checkpoint_image_size`), as `freeatm eval finetune` does."""
    from torchvision.transforms import v2
    from transformers import Trainer, set_seed

    from .. import models  # noqa: F401  (registers the Auto classes)
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from ..hub.model_card import record_results
    from .frozen import checkpoint_image_size, labelled_splits, load_model
    from .metrics import load_metric

    train_ds, test_ds = labelled_splits(dataset, train_split, test_split, revision, image_column,
                                        label_column).values()
    if image_size is None:  # not 224 for all: a 32-px ViT would fail there, a CNN trained at 64 train otherwise
        image_size = checkpoint_image_size(model_dir)
    # A ClassLabel's classes, every one a logit (one absent from both splits too); plain ids up to the largest.
    label_names = list(getattr(train_ds.features[label_column], "names", None) or [])
    num_labels = len(label_names) or int(max(max(train_ds[label_column]), max(test_ds[label_column]))) + 1
    label_names = label_names or [str(i) for i in range(num_labels)]
    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), *norm])
    test_tf = v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True), *norm])

    def with_tf(tf):
        return lambda b: {"pixel_values": [tf(rgb(im)) for im in b[image_column]], "labels": b[label_column]}

    train_ds, test_ds = train_ds.with_transform(with_tf(train_tf)), test_ds.with_transform(with_tf(test_tf))
    pretrained = load_model(model_dir)
    set_seed(seed)  # the new head's weights: Trainer seeds only after they exist
    clf = classification_model(pretrained, num_labels, label_names)
    args = finetune_training_args(output_dir, epochs, learning_rate, batch_size, seed, max_steps=max_steps,
                                  use_cpu=use_cpu, per_device_eval_batch_size=batch_size)
    metric = load_metric("topk_accuracy")

    def accuracy(pred):
        ranked = pred.predictions.argmax(-1)[:, None].tolist()
        return metric.compute(predictions=ranked, references=pred.label_ids.tolist(), k=1)

    trainer = Trainer(model=clf, args=args, train_dataset=train_ds, eval_dataset=test_ds, compute_metrics=accuracy)
    trainer.train()
    # The fine-tuned classifier, as `eval segment` and `eval detect` keep theirs, and before the scoring, whose
    # failure (a test image that does not decode) would otherwise lose the fine-tune: MAE's a stock
    # ViTForImageClassification folder, a CNN's a timm model folder.
    if isinstance(clf, CNNClassifier):
        if trainer.is_world_process_zero():
            save_timm_classifier(clf, output_dir, pretrained.config.backbone, label_names, image_size)
    else:
        trainer.save_model(output_dir)
        if trainer.is_world_process_zero():
            save_vit_processor(output_dir, image_size)
    top1 = trainer.evaluate()["eval_top1"]  # gathered over processes
    if not trainer.is_world_process_zero():
        return []
    results = [{"task": "image-classification", "dataset": dataset, "split": test_split, "revision": revision,
                "metric": "finetune_top1", "value": top1}]
    if update_card:
        record_results(model_dir, results, pretrained.config)
    return results

"""End-to-end fine-tuning for image classification through transformers' Trainer, from a pretrained
checkpoint: the ViT of an MAE checkpoint becomes a stock `ViTForImageClassification`; a CNN backbone gets a
linear head. Top-1 on the test split goes into the checkpoint's results and card; the fine-tuned classifier is
saved to `output_dir`."""

import tempfile

import torch
from torch import nn

from ..data.rows import rgb


class CNNClassifier(nn.Module):
    """timm CNN backbone + global average pool + linear head; returns `{"loss", "logits"}` for Trainer."""

    def __init__(self, backbone: nn.Module, num_labels: int):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(backbone.num_features, num_labels)

    def forward(self, pixel_values, labels=None):
        logits = self.head(self.backbone.forward_features(pixel_values).mean((2, 3)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def finetune_training_args(output_dir: str, epochs: float, learning_rate: float, batch_size: int, seed: int = 0,
                           max_steps: int = -1, use_cpu=None, **extra):
    """The `TrainingArguments` every downstream fine-tune shares (no checkpoints, no trackers, the caller's
    columns kept for its own transform); `extra` adds the task's optimiser and schedule settings."""
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=output_dir, num_train_epochs=epochs, max_steps=max_steps,
                             learning_rate=learning_rate, per_device_train_batch_size=batch_size,
                             remove_unused_columns=False, save_strategy="no", report_to="none", seed=seed,
                             logging_steps=10, **({"use_cpu": use_cpu} if use_cpu is not None else {}), **extra)


def classification_model(model, num_labels: int):
    if hasattr(model, "backbone"):
        return CNNClassifier(model.backbone, num_labels)
    if hasattr(model, "vit"):
        from transformers import ViTForImageClassification

        from ..models.mae import export_vit

        with tempfile.TemporaryDirectory(prefix="freeatm-vit-") as folder:  # the weights are read into memory
            export_vit(model, folder)
            return ViTForImageClassification.from_pretrained(folder, num_labels=num_labels)
    raise TypeError(f"no classification fine-tuning for {type(model).__name__}")


def finetune_classification(model_dir: str, dataset: str, output_dir: str, train_split="train", test_split="test",
                            image_column="image", label_column="label", image_size=224, epochs: float = 10,
                            learning_rate=1e-3, batch_size=64, seed=0, use_cpu=None, update_card=True,
                            revision: str | None = None, max_steps: int = -1) -> list[dict]:
    from torchvision.transforms import v2
    from transformers import AutoModel, Trainer, set_seed

    from .. import models  # noqa: F401  (registers the Auto classes)
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from ..hub.model_card import record_results
    from .frozen import labelled_splits
    from .metrics import load_metric

    train_ds, test_ds = labelled_splits(dataset, train_split, test_split, revision, image_column,
                                        label_column).values()
    num_labels = int(max(max(train_ds[label_column]), max(test_ds[label_column]))) + 1
    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), *norm])
    test_tf = v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True), *norm])

    def with_tf(tf):
        return lambda b: {"pixel_values": [tf(rgb(im)) for im in b[image_column]], "labels": b[label_column]}

    train_ds, test_ds = train_ds.with_transform(with_tf(train_tf)), test_ds.with_transform(with_tf(test_tf))
    pretrained = AutoModel.from_pretrained(model_dir)
    set_seed(seed)  # the new head's weights: Trainer seeds only after they exist
    clf = classification_model(pretrained, num_labels)
    args = finetune_training_args(output_dir, epochs, learning_rate, batch_size, seed, max_steps=max_steps,
                                  use_cpu=use_cpu, per_device_eval_batch_size=batch_size)
    metric = load_metric("topk_accuracy")

    def accuracy(pred):
        ranked = pred.predictions.argmax(-1)[:, None].tolist()
        return metric.compute(predictions=ranked, references=pred.label_ids.tolist(), k=1)

    trainer = Trainer(model=clf, args=args, train_dataset=train_ds, eval_dataset=test_ds, compute_metrics=accuracy)
    trainer.train()
    top1 = trainer.evaluate()["eval_top1"]  # gathered over processes
    # The fine-tuned classifier (MAE: a stock ViTForImageClassification folder; a CNN: the backbone and head's
    # state dict in model.safetensors), as `eval segment` and `eval detect` keep theirs.
    trainer.save_model(output_dir)
    if not trainer.is_world_process_zero():
        return []
    results = [{"task": "image-classification", "dataset": dataset, "split": test_split, "revision": revision,
                "metric": "finetune_top1", "value": top1}]
    if update_card:
        record_results(model_dir, results, pretrained.config)
    return results

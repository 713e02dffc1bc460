"""Evaluate a pretrained checkpoint on a labelled image dataset with frozen features; results go into the
checkpoint's `eval_results.json` and its model card's `model-index`."""

import torch

from .knn import accuracy, check_vote, extract_features, knn_classify, linear_probe

# The standard ImageNet evaluation crop: resize the short side to size / 0.875, centre-crop size. A timm export
# records this crop, and the checkpoint's interpolation, in its pretrained_cfg: timm's own eval transform of the
# exported backbone then sees what these evaluations saw.
EVAL_CROP_PCT = 0.875


def eval_transform(image_size: int, interpolation: str = "bilinear"):
    """PIL image → normalised float tensor, as timm's `create_transform` makes it from an export's data config."""
    from torchvision.transforms import v2

    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return v2.Compose([v2.PILToTensor(),
                       v2.Resize(int(image_size / EVAL_CROP_PCT), interpolation=v2.InterpolationMode(interpolation),
                                 antialias=True),
                       v2.CenterCrop(image_size), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class _ViTFeatures(torch.nn.Module):
    """`forward_features` for a ViTMAE encoder: every patch kept in order, the CLS token's output."""

    def __init__(self, vit, num_patches: int):
        super().__init__()
        self.vit, self.n = vit, num_patches

    def forward_features(self, x):
        noise = torch.arange(self.n, device=x.device, dtype=torch.float32).expand(len(x), self.n)
        mask_ratio = self.vit.config.mask_ratio
        self.vit.config.mask_ratio = 0.0  # no masking at evaluation time
        try:
            return self.vit(x, noise=noise).last_hidden_state
        finally:
            self.vit.config.mask_ratio = mask_ratio


def feature_backbone(model):
    if hasattr(model, "backbone"):  # SimCLR / MoCo: the timm CNN
        return model.backbone
    if hasattr(model, "vit"):  # MAE
        from ..models.mae import num_patches

        return _ViTFeatures(model.vit, num_patches(model.config))
    # ValueError: a wrong --model is the user's to fix (BLIP: its vision tower, exported, is a timm model).
    hint = (": export its vision tower (`freeatm export DIR OUT --to timm`) and evaluate that with timm"
            if "Blip" in type(model).__name__ else "")
    raise ValueError(f"kNN and linear probes take a SimCLR, MoCo or MAE checkpoint, not {type(model).__name__}{hint}")


def load_model(model_dir: str):
    """The checkpoint, in float32 whatever its weights were saved in. transformers 5 loads a bf16 or fp16 folder in
    that dtype: a CNN's or ViT's first layer then met the evaluations' float32 pixels ("Input type (float) and bias
    type (BFloat16) should be the same"), and BLIP, which casts the pixels to its weights', scored retrieval in
    bf16. The evaluations set their own precision (kNN's features under bf16 autocast on a GPU)."""
    from transformers import AutoModel

    from .. import models  # noqa: F401  (registers the Auto classes)

    return AutoModel.from_pretrained(model_dir, dtype=torch.float32)


def checkpoint_image_size(model_dir: str, default: int = 224) -> int:
    """The input side a checkpoint is evaluated at: a ViT's (MAE) own `image_size`, its position embeddings being
    fixed; for a CNN, which takes any size, the size it was trained at (its card facts, as its timm export states),
    else `default`."""
    from transformers import AutoConfig

    from .. import models  # noqa: F401  (registers the freeatm configs)
    from ..hub.export import trained_image_size

    size = getattr(AutoConfig.from_pretrained(model_dir), "image_size", None) or trained_image_size(model_dir)
    return int(size or default)


def distinct_splits(train_split: str, test_split: str, what: str = "the model was fine-tuned on"):
    """A score on the training images would go into the card as a test score."""
    if train_split == test_split:
        raise ValueError(f"train_split and test_split are both {train_split!r}: the score would be measured on the "
                         f"images {what}")


def labelled_splits(dataset: str, train_split: str, test_split: str, revision, image_column: str,
                    label_column: str) -> dict:
    """Both splits, checked before any model runs: distinct splits (a score on the training images would go
    into the card), an image column, and a class column in each (indices, or names: `_classes_by_name`) with a
    class for every row (the Hub marks an unlabelled row -1, as ImageNet's test split: counted, it would be a miss
    the model never made)."""
    import pyarrow.compute as pc
    from datasets import ClassLabel, Value

    from ..data.reading import as_images, load

    distinct_splits(train_split, test_split, "the classifier was fitted on")
    splits = {s: load(dataset, split=s, revision=revision) for s in (train_split, test_split)}
    for s, d in splits.items():
        for col in (image_column, label_column):
            if col not in d.column_names:
                raise ValueError(f"{dataset} [{s}] has no column {col!r} (columns: {d.column_names}); name it "
                                 f"with --{'image' if col == image_column else 'label'}_column")
        splits[s] = d = as_images(d, image_column, f"{dataset} [{s}]")
        feature = d.features[label_column]
        if not (isinstance(feature, ClassLabel) or (isinstance(feature, Value) and "int" in feature.dtype)
                or _named_classes(feature)):
            raise ValueError(f"{dataset} [{s}] column {label_column!r} is {feature}, not a class index (int or "
                             "ClassLabel) or a class name (string)")
    if any(_named_classes(d.features[label_column]) for d in splits.values()):
        splits = _classes_by_name(splits, dataset, train_split, label_column)
    for s, d in splits.items():
        labels = d.with_format("arrow")[label_column]
        unlabelled = len(labels) - (pc.sum(pc.greater_equal(labels, 0)).as_py() or 0)
        if unlabelled:
            raise ValueError(f"{dataset} [{s}] has {unlabelled} of {len(labels)} rows without a class ({label_column!r} "
                             "below 0, or null): evaluate on a labelled split")
    return splits


def _named_classes(feature) -> bool:
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _classes_by_name(splits: dict, dataset: str, train_split: str, label_column: str) -> dict:
    """Class names (a `metadata.csv`'s, say) as one ClassLabel for both splits: the train split's names in order,
    then any only the test split has (each a class the model never saw, scored as such). `class_encode_column` on
    each split would number each split's own names, and a class missing from one would shift the others."""
    import numpy as np
    from datasets import ClassLabel

    kinds = {s: d.features[label_column] for s, d in splits.items()}
    if not all(map(_named_classes, kinds.values())):
        raise ValueError(f"{dataset}: one split's {label_column!r} names classes, the other's numbers them ("
                         + ", ".join(f"[{s}] {f}" for s, f in kinds.items()) + "): give both the same kind")
    values = {s: d.with_format("arrow")[label_column].to_pylist() for s, d in splits.items()}
    seen = sorted({v for v in values[train_split] if v is not None})
    names = seen + sorted({v for vs in values.values() for v in vs if v is not None} - set(seen))
    index = {n: i for i, n in enumerate(names)}
    # Only the label column is replaced (`cast` would rewrite every image); a row without a name is -1, refused
    # below as unlabelled.
    return {s: d.remove_columns(label_column).add_column(
                label_column, np.array([index.get(v, -1) for v in values[s]], np.int64),
                feature=ClassLabel(names=names))
            for s, d in splits.items()}


def evaluate_frozen(model_dir: str, dataset: str, train_split="train", test_split="test", revision=None,
                    image_column="image", label_column="label", image_size: int | None = None, k=20, temperature=0.07,
                    batch_size=256, linear=True, device=None, update_card=True) -> list[dict]:
    """kNN top-1 (and with `linear`, the linear probe's) of the checkpoint's frozen features on `test_split`, the
    training features from `train_split`; with `update_card`, recorded in the checkpoint's results and card.
    `image_size` defaults to the checkpoint's own (`checkpoint_image_size`), as `freeatm eval knn` does."""
    from ..data.transforms import training_interpolation
    from ..hub.model_card import record_results

    check_vote(k, temperature)  # said before any feature is extracted
    splits = labelled_splits(dataset, train_split, test_split, revision, image_column, label_column)
    if k > len(splits[train_split]):  # fewer would vote, and the card would say knn{k} all the same
        raise ValueError(f"--k {k} is more neighbours than the {len(splits[train_split])} images of {dataset} "
                         f"[{train_split}]: give --k {len(splits[train_split])} or less")
    if image_size is None:  # not 224 for all: a 32-px ViT would fail there, a CNN trained at 64 score otherwise
        image_size = checkpoint_image_size(model_dir)
    model = load_model(model_dir)
    transform = eval_transform(image_size, training_interpolation(model.config.model_type))
    backbone = feature_backbone(model)
    feats = {s: extract_features(backbone, d, transform, batch_size, device, image_column, label_column)
             for s, d in splits.items()}
    (xtr, ytr), (xte, yte) = feats[train_split], feats[test_split]
    num_classes = int(max(ytr.max(), yte.max())) + 1
    # The vote and the probe where the features were made: on ImageNet, kNN compares 50k × 1.28M features and
    # L-BFGS fits 1.28M × 2048 rows a hundred times, seconds on a GPU and hours on a CPU.
    on = next(backbone.parameters()).device
    xtr, ytr, xte = xtr.to(on), ytr.to(on), xte.to(on)
    scores = knn_classify(xtr, ytr, xte, k=k, temperature=temperature, num_classes=num_classes)
    base = {"task": "image-classification", "dataset": dataset, "split": test_split, "revision": revision}
    results = [{**base, "metric": f"knn{k}_top1", "value": accuracy(scores, yte)}]
    if linear:
        results.append({**base, "metric": "linear_probe_top1",
                        "value": accuracy(linear_probe(xtr, ytr, xte, num_classes), yte)})
    if update_card:
        record_results(model_dir, results, model.config)
    return results

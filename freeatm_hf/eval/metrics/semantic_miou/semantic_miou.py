"""Semantic-segmentation mean IoU over a dataset, as an `evaluate` module that loads offline:

    import evaluate
    from freeatm_hf.eval.metrics import metric_path
    from freeatm_hf.eval.segmentation import confusion_matrix
    miou = evaluate.load(metric_path("semantic_miou"))
    counts = sum(confusion_matrix(pred, label, num_labels=7, ignore_index=255) for pred, label in maps)
    miou.compute(predictions=counts.tolist(), references=list(range(7)))

`references[i]` is a reference class and `predictions[i]` how many of its pixels were predicted as each class
(a row of the dataset's confusion matrix; rows of the same class add up). Intersections and unions are so
summed over all images per class (the ADE20K / Cityscapes protocol, like the Hub's `mean_iou`), then averaged
over the classes that occur in the references or the predictions. Counts rather than label maps keep what
travels through Arrow small: ADE20K's 2,000 validation maps are gigabytes as Python lists, its confusion
matrix is 150 × 150 numbers.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Dataset-level mean IoU, per-class IoU and pixel accuracy from a confusion matrix."
_KWARGS = ("predictions: per row, the pixel counts of a reference class by predicted class; references: that "
           "class.")


class SemanticMIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        widths = {len(p) for p in predictions}
        if len(widths) != 1:
            raise ValueError(f"every row needs a count per class, got rows of lengths {sorted(widths)}")
        num_labels = widths.pop()
        if any(not 0 <= r < num_labels for r in references):
            raise ValueError(f"reference classes must lie in [0, {num_labels}), the row length")
        confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
        np.add.at(confusion, np.asarray(references), np.asarray(predictions, dtype=np.int64))
        if (confusion < 0).any():
            raise ValueError("pixel counts cannot be negative")
        inter = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - inter
        present = union > 0
        iou = np.where(present, inter / np.maximum(union, 1), np.nan)
        total = int(confusion.sum())
        return {"mean_iou": float(np.nanmean(iou)) if present.any() else float("nan"),
                "per_category_iou": [None if np.isnan(v) else float(v) for v in iou],
                "overall_accuracy": int(inter.sum()) / total if total else float("nan")}

"""Semantic-segmentation mean IoU over a dataset, as an `evaluate` module that loads offline:

    import evaluate
    from freeatm_hf.eval.metrics import metric_path
    miou = evaluate.load(metric_path("semantic_miou"))
    miou.compute(predictions=[pred_a, ...], references=[label_a, ...], num_labels=7, ignore_index=255)

Intersections and unions are summed over all images per class (the ADE20K / Cityscapes protocol, like the
Hub's `mean_iou`), then averaged over the classes that occur in the references or the predictions.
Pixels whose reference is `ignore_index` are skipped.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Dataset-level mean IoU, per-class IoU and pixel accuracy of semantic label maps."
_KWARGS = ("predictions, references: lists of 2-D integer label maps of equal shapes; num_labels: int; "
           "ignore_index: reference value to skip (default 255).")


class SemanticMIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                "references": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
            }),
        )

    def _compute(self, predictions, references, num_labels: int, ignore_index: int = 255):
        inter = np.zeros(num_labels, dtype=np.int64)
        union = np.zeros(num_labels, dtype=np.int64)
        correct = total = 0
        for p, r in zip(predictions, references, strict=True):
            p, r = np.asarray(p, dtype=np.int64), np.asarray(r, dtype=np.int64)
            if p.shape != r.shape:
                raise ValueError(f"prediction {p.shape} and reference {r.shape} differ in shape")
            keep = r != ignore_index
            p, r = p[keep], r[keep]
            if ((r < 0) | (r >= num_labels)).any() or ((p < 0) | (p >= num_labels)).any():
                raise ValueError(f"labels must lie in [0, {num_labels}) (or be ignore_index={ignore_index})")
            inter += np.bincount(r[p == r], minlength=num_labels)
            union += np.bincount(p, minlength=num_labels) + np.bincount(r, minlength=num_labels)
            correct += int((p == r).sum())
            total += r.size
        union -= inter
        present = union > 0
        iou = np.where(present, inter / np.maximum(union, 1), np.nan)
        return {"mean_iou": float(np.nanmean(iou)) if present.any() else float("nan"),
                "per_category_iou": [None if np.isnan(v) else float(v) for v in iou],
                "overall_accuracy": correct / total if total else float("nan")}

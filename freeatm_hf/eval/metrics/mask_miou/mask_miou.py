"""Mean IoU of binary object masks, as an `evaluate` module that loads offline:

    import evaluate
    from freeatm_hf.eval.metrics import metric_path
    miou = evaluate.load(metric_path("mask_miou"))
    miou.compute(predictions=[mask_a, ...], references=[gt_a, ...])   # 2-D 0/1 arrays, one pair per object

Each pair is one object: IoU = |P ∩ R| / |P ∪ R|; a pair whose union is empty (nothing predicted, nothing
there) scores 1. `mean_iou` averages over objects; `groups` (optional, one label per object) adds a mean per
group (e.g. per shape class).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Mean intersection-over-union of binary object masks (one prediction/reference pair per object)."
_CITATION = ""
_KWARGS = "predictions, references: lists of 2-D 0/1 masks of equal shapes; groups: optional list of labels."


class MaskMIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))),
                "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))),
            }),
        )

    def _compute(self, predictions, references, groups=None):
        ious = []
        for p, r in zip(predictions, references):
            p, r = np.asarray(p, dtype=bool), np.asarray(r, dtype=bool)
            if p.shape != r.shape:
                raise ValueError(f"prediction {p.shape} and reference {r.shape} differ in shape")
            union = np.logical_or(p, r).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(p, r).sum() / union))
        result = {"mean_iou": float(np.mean(ious)) if ious else float("nan"), "per_object_iou": ious}
        if groups is not None:
            if len(groups) != len(ious):
                raise ValueError(f"{len(groups)} groups for {len(ious)} objects")
            result["per_group_iou"] = {g: float(np.mean([i for i, gg in zip(ious, groups) if gg == g]))
                                       for g in sorted(set(groups))}
        return result

"""Top-k classification accuracy as an `evaluate` module (loads offline):

    import evaluate
    from freeatm_hf.eval.metrics import metric_path
    acc = evaluate.load(metric_path("topk_accuracy"))
    acc.compute(predictions=[[3, 1], [0, 2]], references=[1, 2], k=1)   # {"top1": 0.0}

`predictions[i]` is the ranked list of predicted labels for example i (best first; a single label works as a
list of one); `references[i]` its true label. Returns `top{k}` for each k asked (default 1 and, when the lists
are long enough, 5): the share of examples whose label is among their first k predictions. Ranked labels
rather than score rows keep what travels through Arrow small (ImageNet: 50,000 × 5 labels, not × 1,000 scores).
"""

import numbers

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-k accuracy from ranked predicted labels."
_KWARGS = "predictions: per example its predicted labels, best first; references: the true labels; k: int or list."


class TopkAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, k=None):
        width = min(len(p) for p in predictions) if predictions else 0
        if k is None:
            k = [1, 5] if width >= 5 else [1]
        ks = [int(k)] if isinstance(k, numbers.Integral) else [int(v) for v in k]
        if not ks or min(ks) < 1:
            raise ValueError(f"k must be at least 1, got {k!r}")
        if not predictions or max(ks) > width:
            raise ValueError(f"top-{max(ks)} accuracy needs at least {max(ks)} ranked labels per example, got {width}")
        ranked = np.asarray([p[:width] for p in predictions])
        hit = ranked == np.asarray(references)[:, None]
        return {f"top{j}": float(hit[:, :j].any(1).mean()) for j in ks}

"""Retrieval recall@k as an `evaluate` module (loads offline):

    import evaluate
    from freeatm_hf.eval.metrics import metric_path
    recall = evaluate.load(metric_path("retrieval_recall"))
    recall.compute(predictions=[[4, 0, 2], [1, 3, 0]], references=[[0, 1], [2]], ks=(1, 3))
    # {"r@1": 0.0, "r@3": 50.0}

`predictions[q]` are the ids query q retrieved, best first (the largest k of them, or all there are);
`references[q]` the ids that belong to it (an image's captions, a caption's image). A query is a hit at k when
any of its ids is among its first k. Returns `r@k` in percent, as BLIP reports TR@k (images as queries) and IR@k
(texts). Ranked ids rather than score rows keep what travels through Arrow small: COCO's 5,000 × 25,000 scores would be
gigabytes as Python floats, its 30,000 × 10 ranked ids are not (`freeatm_hf.eval.retrieval.recall_at_k` ranks
the score matrices on the device).
"""

import numbers

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Retrieval recall@k (TR@k, IR@k) from ranked retrieved ids."
_KWARGS = "predictions: per query its retrieved ids, best first; references: per query its relevant ids; ks."


class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64")),
                                        "references": datasets.Sequence(datasets.Value("int64"))}),
        )

    def _compute(self, predictions, references, ks=(1, 5, 10)):
        ks = [int(ks)] if isinstance(ks, numbers.Integral) else [int(k) for k in ks]
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be at least 1, got {ks!r}")
        if not predictions:
            raise ValueError("no queries to score")
        empty = [q for q, refs in enumerate(references) if len(refs) == 0]
        if empty:
            # Nothing to find for such a query; counting it a miss would understate recall.
            raise ValueError(f"{len(empty)} quer{'y has' if len(empty) == 1 else 'ies have'} no relevant id (first: "
                             f"query {empty[0]})")
        # Where each query's first relevant id came (inf: not among those retrieved).
        first = np.array([next((r for r, i in enumerate(ids) if i in relevant), np.inf)
                          for ids, relevant in zip(predictions, map(set, references))])
        return {f"r@{k}": float(100 * np.mean(first < k)) for k in ks}

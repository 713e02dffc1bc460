"""Image-text retrieval recall@k as an `evaluate` module (loads offline):

    import evaluate
    from freeatm_hf.eval.metrics import metric_path
    recall = evaluate.load(metric_path("retrieval_recall"))
    recall.compute(predictions=sim_i2t_rows, references=[...], text_to_image=[...])

`predictions` are the rows of an image × text score matrix; `references[i]` lists the texts that belong to
image i; `text_to_image[j]` is the image of text j. Returns TR@k (image → text: a hit if any of the image's
texts is in its top k) and IR@k (text → image), for k in 1, 5, 10, in percent, as BLIP reports them.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Text retrieval (TR@k) and image retrieval (IR@k) recall from an image-text score matrix."
_KWARGS = "predictions: rows of the image × text score matrix; references: per image its text ids; text_to_image."


class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Sequence(datasets.Value("int64"))}),
        )

    def _compute(self, predictions, references, text_to_image, ks=(1, 5, 10)):
        sim = np.asarray(predictions, dtype=np.float64)
        t2i = np.asarray(text_to_image)
        if sim.shape != (len(references), len(t2i)):
            raise ValueError(f"score matrix {sim.shape} does not match {len(references)} images × {len(t2i)} texts")
        captionless = [i for i, refs in enumerate(references) if len(refs) == 0]
        if captionless:
            # Text retrieval has nothing to find for such an image; counting it a miss would understate TR@k.
            raise ValueError(f"{len(captionless)} image(s) have no caption (first: image {captionless[0]}): text "
                             "retrieval needs at least one per image; leave them out of the test set")
        # Rank of the best ground-truth text per image, and of the true image per text (0 = first).
        order_t = np.argsort(-sim, axis=1)
        tr_rank = np.array([min(int(np.where(order_t[i] == t)[0][0]) for t in refs)
                            for i, refs in enumerate(references)])
        order_i = np.argsort(-sim.T, axis=1)
        ir_rank = np.array([int(np.where(order_i[j] == t2i[j])[0][0]) for j in range(len(t2i))])
        out = {}
        for k in ks:
            out[f"tr@{k}"] = float(100 * np.mean(tr_rank < k))
            out[f"ir@{k}"] = float(100 * np.mean(ir_rank < k))
        out["tr_mean"] = float(np.mean([out[f"tr@{k}"] for k in ks]))
        out["ir_mean"] = float(np.mean([out[f"ir@{k}"] for k in ks]))
        return out

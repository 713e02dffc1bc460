import numpy as np
import pytest

from freeatm_hf.eval.metrics import load_metric, metric_path


def test_mask_miou_against_hand_computed_ious():
    m = load_metric("mask_miou")
    a = np.zeros((4, 4), np.uint8)
    a[:2, :2] = 1  # 4 px
    b = np.zeros((4, 4), np.uint8)
    b[:2, :3] = 1  # 6 px, contains a
    c = np.zeros((4, 4), np.uint8)
    c[3, 3] = 1
    r = m.compute(predictions=[a, a, c, np.zeros((4, 4))], references=[b, a, a, np.zeros((4, 4))],
                  groups=["x", "y", "y", "z"])
    assert r["per_object_iou"] == [pytest.approx(4 / 6), 1.0, 0.0, 1.0]
    assert r["mean_iou"] == pytest.approx((4 / 6 + 1 + 0 + 1) / 4)
    assert r["per_group_iou"] == {"x": pytest.approx(4 / 6), "y": 0.5, "z": 1.0}


def test_unknown_metric_lists_the_available_ones():
    with pytest.raises(FileNotFoundError, match="mask_miou"):
        metric_path("nope")


def test_semantic_miou_sums_over_images_per_class_and_skips_ignored_pixels():
    from freeatm_hf.eval.segmentation import confusion_matrix

    m = load_metric("semantic_miou")
    r1 = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 255]])
    p1 = np.array([[0, 1, 1], [0, 1, 1], [2, 0, 0]])  # the 255 pixel's prediction must not count
    r2 = np.array([[1, 1], [1, 1]])
    p2 = np.array([[1, 1], [1, 0]])
    counts = confusion_matrix(p1, r1, 4) + confusion_matrix(p2, r2, 4)
    assert counts.sum() == 8 + 4 and counts[0].tolist() == [2, 1, 0, 0] and counts[2].tolist() == [1, 0, 1, 0]
    res = m.compute(predictions=counts.tolist(), references=[0, 1, 2, 3])
    # Rows of one class add up: each image's matrix passed on its own scores the same.
    split = m.compute(predictions=confusion_matrix(p1, r1, 4).tolist() + confusion_matrix(p2, r2, 4).tolist(),
                      references=[0, 1, 2, 3] * 2)
    assert split == res
    # class 0: ref {(0,0),(0,1),(1,0)}, pred {(0,0),(1,0),(2,1)} → 2 / 4; image 2 adds pred (1,1) → 2 / 5
    # class 1: ref 3 + 4 = 7, pred 4 + 3 = 7, inter 3 + 3 = 6 → 6 / 8; class 2: ref 2, pred 1, inter 1 → 1 / 2
    # class 3 occurs nowhere: None, and left out of the mean
    assert res["per_category_iou"] == [pytest.approx(2 / 5), pytest.approx(6 / 8), pytest.approx(1 / 2), None]
    assert res["mean_iou"] == pytest.approx((2 / 5 + 6 / 8 + 1 / 2) / 3)
    assert res["overall_accuracy"] == pytest.approx((6 + 3) / (8 + 4))
    with pytest.raises(ValueError, match="labels must lie"):
        confusion_matrix(p1, r1, 2)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(p1, r2, 4)
    with pytest.raises(ValueError, match="reference classes must lie"):
        m.compute(predictions=[[1, 0], [0, 1]], references=[0, 2])


def test_topk_accuracy_against_hand_counts_and_refuses_short_rankings():
    m = load_metric("topk_accuracy")
    ranked = [[3, 1, 0, 2, 4], [0, 2, 1, 3, 4], [4, 3, 2, 1, 0], [1, 0, 2, 3, 4]]
    labels = [1, 0, 0, 2]
    # top-1 hits: example 1 only; top-2: examples 0 and 1; top-5: all four.
    assert m.compute(predictions=ranked, references=labels) == {"top1": 0.25, "top5": 1.0}
    assert m.compute(predictions=ranked, references=labels, k=[2, 3]) == {"top2": 0.5, "top3": 0.75}
    # numpy's integers are counts too (a k from an array or a config read with numpy).
    assert m.compute(predictions=ranked, references=labels, k=np.int64(2)) == {"top2": 0.5}
    assert m.compute(predictions=ranked, references=labels, k=np.array([2, 3])) == {"top2": 0.5, "top3": 0.75}
    with pytest.raises(ValueError, match="top-5 accuracy needs at least 5 ranked labels"):
        m.compute(predictions=[[1], [0]], references=[1, 0], k=5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        m.compute(predictions=ranked, references=labels, k=0)  # "top0" would read as a score of 0


def test_mask_miou_divides_by_the_union_and_refuses_mismatched_inputs():
    m = load_metric("mask_miou")
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 2, (5, 6), dtype=np.uint8) for _ in range(3)]
    refs = [rng.integers(0, 2, (5, 6), dtype=np.uint8) for _ in range(3)]
    preds[0][:] = 1  # a prediction larger than its reference: IoU = |R| / |P|
    expected = [(p & r).sum() / (p | r).sum() for p, r in zip(preds, refs)]
    r = m.compute(predictions=preds, references=refs)
    assert r["per_object_iou"] == pytest.approx(expected) and r["mean_iou"] == pytest.approx(np.mean(expected))
    assert np.isnan(m.compute(predictions=[], references=[])["mean_iou"])  # no objects: no score, not 0
    with pytest.raises(ValueError, match="differ in shape"):
        m.compute(predictions=[np.zeros((2, 3))], references=[np.zeros((3, 2))])
    with pytest.raises(ValueError, match="2 groups for 3 objects"):
        m.compute(predictions=preds, references=refs, groups=["a", "b"])


def test_semantic_miou_counts_a_wrongly_predicted_class_as_zero_and_refuses_bad_counts():
    m = load_metric("semantic_miou")
    # class 2 is predicted (for class-0 pixels) but never right: IoU 0, in the mean; class 1 is nowhere: None.
    res = m.compute(predictions=[[3, 0, 1], [0, 0, 0], [0, 0, 0]], references=[0, 1, 2])
    assert res["per_category_iou"] == [pytest.approx(3 / 4), None, 0.0]
    assert res["mean_iou"] == pytest.approx(3 / 8)
    empty = m.compute(predictions=[[0, 0], [0, 0]], references=[0, 1])
    assert np.isnan(empty["mean_iou"]) and np.isnan(empty["overall_accuracy"])
    with pytest.raises(ValueError, match="cannot be negative"):
        m.compute(predictions=[[2, -1], [0, 1]], references=[0, 1])
    with pytest.raises(ValueError, match="every row needs a count per class"):
        m.compute(predictions=[[1, 0], [0, 1, 0]], references=[0, 1])
    with pytest.raises(ValueError, match="every row needs a count per class"):
        m.compute(predictions=[], references=[])


def test_topk_accuracy_reads_the_shortest_ranking_and_refuses_a_k_past_it():
    m = load_metric("topk_accuracy")
    # Rankings of different lengths are read to the shortest one's length.
    assert m.compute(predictions=[[1, 2, 0], [0]], references=[2, 0], k=1) == {"top1": 0.5}
    with pytest.raises(ValueError, match="top-2 accuracy needs at least 2 ranked labels per example, got 1"):
        m.compute(predictions=[[1, 2, 0], [0]], references=[2, 0], k=2)


def test_retrieval_recall_takes_a_single_k_and_refuses_k_zero_or_no_queries():
    m = load_metric("retrieval_recall")
    assert m.compute(predictions=[[4, 0, 2], [1, 3, 0]], references=[[0, 1], [2]], ks=2) == {"r@2": 50.0}
    assert m.compute(predictions=[[4, 0, 2], [1, 3, 0]], references=[[0, 1], [2]], ks=np.int64(2)) == {"r@2": 50.0}
    with pytest.raises(ValueError, match="ks must be at least 1"):
        m.compute(predictions=[[0, 1]], references=[[0]], ks=(0, 1))
    with pytest.raises(ValueError, match="no queries to score"):
        m.compute(predictions=[], references=[])

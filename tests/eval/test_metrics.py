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

import numpy as np
import pytest
import torch

from freeatm_hf.masks import (
    bbox,
    binarize,
    connected_components,
    full_resolution_mask,
    mask_from_map,
    normalize,
    otsu_threshold,
)


def blob_map():
    m = np.zeros((8, 10))
    m[2:5, 3:7] = 1.0  # rows 2-4, cols 3-6
    m[6, 0] = 0.2
    return m


def test_normalize_is_min_max_and_flat_maps_have_no_mask():
    n = normalize(np.array([[1.0, 3.0], [2.0, 5.0]]))
    np.testing.assert_allclose(n, [[0, 0.5], [0.25, 1]])
    assert normalize(np.full((4, 4), 0.3)) is None
    assert normalize(torch.zeros(4, 4)) is None
    with pytest.raises(ValueError, match="NaN"):
        normalize(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        normalize(np.zeros(4))


def test_flat_and_zero_maps_give_explicit_empty_results():
    for m in (np.zeros((6, 6)), np.full((6, 6), 7.0)):
        r = mask_from_map(m)
        assert r.empty and r.bbox is None and r.area == 0.0 and not r.mask.any() and r.normalized is None


def test_bbox_in_image_pixels_uses_cell_borders():
    r = mask_from_map(blob_map(), threshold=0.4, image_size=(80, 100))
    assert r.bbox == (30.0, 20.0, 70.0, 50.0)  # cols 3..6 → x 30..70, rows 2..4 → y 20..50
    assert r.area == pytest.approx(12 / 80)
    assert r.num_components == 1
    assert bbox(np.zeros((3, 3), bool)) is None
    assert bbox(np.eye(3, dtype=bool)) == (0.0, 0.0, 3.0, 3.0)


def test_threshold_is_strict_and_validated():
    n = np.array([[0.0, 0.4, 0.41, 1.0]])
    assert binarize(n, 0.4).tolist() == [[False, False, True, True]]
    with pytest.raises(ValueError, match="threshold"):
        binarize(n, 1.5)


def test_otsu_splits_a_bimodal_map_between_the_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.03, 500), rng.normal(0.8, 0.03, 300)]).clip(0, 1)
    t = otsu_threshold(values)
    assert 0.3 < t < 0.7
    m = binarize(values.reshape(40, 20), "otsu")
    assert m.sum() == 300


def test_components_and_largest_component():
    m = np.zeros((6, 6))
    m[0:2, 0:2] = 1.0
    m[4:6, 3:6] = 0.9
    m[5, 0] = 0.8
    r = mask_from_map(m, threshold=0.5)
    assert r.num_components == 3 and r.bbox == (0.0, 0.0, 6.0, 6.0)
    big = mask_from_map(m, threshold=0.5, largest_component=True)
    assert big.mask.sum() == 6 and big.bbox == (3.0, 4.0, 6.0, 6.0)
    labels, n = connected_components(np.eye(3, dtype=bool))
    assert n == 1  # diagonal neighbours are connected (8-connectivity)


def test_full_resolution_mask_from_a_stored_8bit_map():
    stored = np.round(normalize(blob_map()) * 255).astype(np.uint8)
    r = full_resolution_mask(stored, image_size=(16, 20), threshold=0.5)
    assert r.mask.shape == (16, 20)
    ys, xs = np.nonzero(r.mask)
    # The blob covers rows 2-4 and cols 3-6 of the 8×10 grid: rows 4..10 and cols 6..14 at 2×.
    assert 4 <= ys.min() and ys.max() < 10 and 6 <= xs.min() and xs.max() < 14

import numpy as np
import pytest
import torch

from freeatm_hf.masks import (
    bbox,
    binarize,
    connected_components,
    full_resolution_mask,
    guided_filter,
    mask_from_map,
    normalize,
    otsu_threshold,
    refine_maps,
    resize_map,
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
    # float32 rounding noise on attention-sized values (~1e-3) is flat too, not a full-image mask.
    noise = np.float32(2e-3) + np.random.default_rng(0).integers(0, 2, (8, 8)).astype(np.float32) * np.float32(2e-10)
    assert noise.max() > noise.min() and normalize(noise) is None
    assert normalize(np.array([[1e-3, 1.01e-3]], np.float32)) is not None  # a 1 % contrast is a map
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


def test_otsu_on_a_flat_map_marks_nothing():
    for value in (0.0, 0.5, 1.0):
        flat = np.full((8, 8), value)
        assert otsu_threshold(flat) == 1.0
        assert not binarize(flat, "otsu").any()


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


@pytest.mark.parametrize("threshold", [0.4, "otsu"])
def test_a_stored_map_at_image_resolution_is_the_mask_training_reads(threshold):
    """The viewer's and the card's masks are the ones the card's formula and training give: a sharp peak loses
    height in the bilinear resize, and scaling it back to 1 would lower the threshold."""
    from PIL import Image

    from freeatm_hf.data.masks import row_masks

    stored = np.zeros((16, 16), np.uint8)
    stored[6:10, 6:10] = 90
    stored[7, 7] = 255
    r = full_resolution_mask(stored, image_size=(64, 64), threshold=threshold)
    expected = row_masks({"objects": [{"attention": Image.fromarray(stored)}]}, (64, 64), threshold)[0].numpy() > 0
    assert np.array_equal(r.mask, expected)
    if threshold == 0.4:
        resized = resize_map(stored / 255.0, (64, 64))
        assert resized.max() < 0.99 and np.array_equal(r.mask, resized > 0.4)


def reference_guided_filter(guide, p, r, eps):
    """He et al.'s colour guided filter written out window by window (windows cut at the border)."""
    c, h, w = guide.shape
    windows = {}
    a, b = np.zeros((h, w, c)), np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            ys, xs = slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1)
            i = guide[:, ys, xs].reshape(c, -1)
            q = p[ys, xs].reshape(-1)
            mu = i.mean(1)
            sigma = (i @ i.T) / i.shape[1] - np.outer(mu, mu)
            cov = (i * q).mean(1) - mu * q.mean()
            a[y, x] = np.linalg.solve(sigma + eps * np.eye(c), cov)
            b[y, x] = q.mean() - a[y, x] @ mu
            windows[y, x] = (ys, xs)
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            # Pixel (y, x) lies in the windows centred within r of it: the same clipped neighbourhood.
            ys, xs = windows[y, x]
            out[y, x] = a[ys, xs].reshape(-1, c).mean(0) @ guide[:, y, x] + b[ys, xs].mean()
    return out


@pytest.mark.parametrize("channels", [3, 1])  # colour (closed-form 3×3 inverse) and grey (general solve)
def test_guided_filter_matches_the_window_by_window_formula(channels):
    rng = np.random.default_rng(channels)
    guide = rng.random((channels, 7, 9))
    maps = rng.random((2, 7, 9))
    out = guided_filter(torch.as_tensor(guide), torch.as_tensor(maps), radius=2, eps=1e-2).numpy()
    for k in range(2):
        np.testing.assert_allclose(out[k], reference_guided_filter(guide, maps[k], 2, 1e-2), rtol=1e-8, atol=1e-10)
    # float32 on an image-like guide: flat patches make near-singular windows, held up by eps.
    img = np.zeros((channels, 12, 12))
    img[:, 3:8, 2:9] = 0.8
    out32 = guided_filter(torch.as_tensor(img, dtype=torch.float32), torch.as_tensor(maps[:, :6, :6]).repeat(1, 2, 2).float(),
                          radius=2, eps=1e-3).numpy()
    ref = reference_guided_filter(img, np.tile(maps[0, :6, :6], (2, 2)), 2, 1e-3)
    np.testing.assert_allclose(out32[0], ref, atol=1e-4)


def test_guided_filter_on_a_flat_guide_is_a_double_box_blur():
    import torch.nn.functional as F

    p = torch.rand(1, 6, 6, dtype=torch.float64)
    out = guided_filter(torch.full((3, 6, 6), 0.5, dtype=torch.float64), p, radius=1, eps=1e-3)

    def box(x):
        return F.avg_pool2d(x[None], 3, stride=1, padding=1, count_include_pad=False)[0]

    torch.testing.assert_close(out, box(box(p)))


def test_refined_maps_follow_the_image_edges():
    # A red disc on grey, and a coarse 8×8 attention map of it (what a 4×-down-sampled layer sees).
    yy, xx = np.mgrid[:32, :32]
    disc = (yy - 13.5) ** 2 + (xx - 17.5) ** 2 < 9.0 ** 2
    image = np.full((32, 32, 3), 128, np.uint8)
    image[disc] = (230, 30, 30)
    coarse = torch.nn.functional.avg_pool2d(torch.as_tensor(disc, dtype=torch.float32)[None, None], 4)[0, 0].numpy()

    def iou(m):
        return (m & disc).sum() / (m | disc).sum()

    from freeatm_hf.masks import resize_map

    plain = normalize(resize_map(coarse, (32, 32))) > 0.5
    (refined,) = refine_maps(image, [coarse])
    assert refined.shape == (32, 32)
    assert iou(normalize(refined) > 0.5) > max(0.95, iou(plain) + 0.05)
    # Linear in the map: scaling the attention probabilities does not move the mask.
    (scaled,) = refine_maps(image, [coarse * 0.01])
    np.testing.assert_allclose(normalize(scaled), normalize(refined), atol=1e-4)


def test_refine_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN or inf"):
        refine_maps(np.zeros((8, 8, 3), np.uint8), [np.full((4, 4), np.nan)])
    with pytest.raises(ValueError, match=r"\(H, W, C\) image"):
        refine_maps(np.zeros((8, 8), np.uint8), [np.zeros((4, 4))])
    assert refine_maps(np.zeros((8, 8, 3), np.uint8), []) == []

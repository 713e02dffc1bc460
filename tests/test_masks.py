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
    # and so is one of 1e-5, some 80 float32 steps: far above rounding (1e-7), well below any real map's contrast
    assert normalize(np.array([[1e-3, 1e-3 * (1 + 1e-5)]], np.float32)) is not None
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
    with pytest.raises(ValueError, match=r"\(H, W, C\) image"):  # channels first: not a 3-row image
        refine_maps(np.zeros((3, 8, 8), np.float32), [np.zeros((4, 4))])


def brute_force_otsu_mask(values):
    """Otsu by hand: try every cut between two consecutive distinct values, keep the one with the largest
    between-class variance (the lowest such cut on a tie), mark the values above it."""
    v = np.sort(np.unique(values))
    best, best_cut = -1.0, None
    for lo in v[:-1]:
        fg = values > lo
        w1, w0 = fg.mean(), 1 - fg.mean()
        between = w0 * w1 * (values[fg].mean() - values[~fg].mean()) ** 2
        if between > best * (1 + 1e-9):
            best, best_cut = between, lo
    return values > best_cut


def test_otsu_mask_equals_the_brute_force_cut():
    """On values at the centres of the 256 histogram bins the histogram loses nothing, so Otsu's mask is exactly
    the best cut between distinct values: each value of the bin at the cut on the background side."""
    rng = np.random.default_rng(3)
    centres = (np.arange(256) + 0.5) / 256
    for _ in range(20):
        low, high = rng.uniform(40, 110), rng.uniform(140, 220)
        levels = np.concatenate([rng.normal(low, 25, 300), rng.normal(high, 25, 200)])
        values = centres[levels.round().clip(0, 255).astype(int)].reshape(20, 25)
        np.testing.assert_array_equal(binarize(values, "otsu"), brute_force_otsu_mask(values))
    # A histogram symmetric about its middle: the cuts below and above the middle pair of levels score alike
    # (two separate plateaus of cuts); the lower one is taken.
    values = centres[np.repeat([0, 126, 128, 254], [12, 6, 6, 12])].reshape(6, 6)
    np.testing.assert_array_equal(binarize(values, "otsu"), brute_force_otsu_mask(values))
    assert binarize(values, "otsu").sum() == 24


def test_otsus_histogram_bins_each_value_as_numpy_does():
    """The histogram behind Otsu's cut (counted as floor(v·bins), not by np.histogram's edge search) puts every
    value where np.histogram puts it: on a bin edge, just below one, at 1.0, in float32 and float64; values off
    [0, 1], NaN, or a bin count that is no power of two take np.histogram itself."""
    from freeatm_hf.masks import _histogram01

    rng = np.random.default_rng(0)
    edges = np.arange(257) / 256
    cases = [edges, np.nextafter(edges, -1).clip(0), np.nextafter(edges.astype(np.float32), np.float32(2)).clip(0, 1),
             rng.random(20_000), rng.random(20_000).astype(np.float32), (rng.integers(0, 256, 999) / 255),
             np.array([1.0, 1.0, 0.0]), np.array([-0.5, 0.2, 1.5]), np.array([0.2, np.nan])]
    for values in cases:
        for bins in (256, 64, 100):
            expected = np.histogram(values, bins=bins, range=(0.0, 1.0))[0]
            np.testing.assert_array_equal(_histogram01(values, bins), expected, err_msg=f"{bins} bins, {values[:3]}")


def test_thresholds_outside_0_to_1_are_refused():
    for bad in (1.0, -0.1, "half", None):
        with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\) or 'otsu'"):
            binarize(np.zeros((2, 2)), bad)
    assert binarize(np.ones((2, 2)), 0.0).all()  # 0 is allowed


def test_bbox_scales_rows_by_height_and_columns_by_width():
    """The box of a mask equals the pixel extent of the mask upsampled to the image (each cell a block of pixels),
    for an image whose two sides scale the grid differently."""
    m = np.zeros((4, 8), bool)
    m[1:3, 2:7] = True
    up = np.kron(m, np.ones((5, 10), bool))  # image (20, 80): a cell is 5 rows × 10 columns
    ys, xs = np.nonzero(up)
    assert bbox(m, image_size=(20, 80)) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (20, 5, 70, 15)


def test_refined_maps_are_the_guided_filter_of_the_bilinear_map_over_two_map_cells():
    """`refine_maps` on a non-square image with non-square map cells: the map resized bilinearly (as `resize_map`),
    then filtered with the image as guide over a window of `REFINE_CELLS` cells of the longer cell side."""
    from freeatm_hf.masks import REFINE_CELLS, REFINE_EPS

    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (32, 64, 3)).astype(np.uint8)
    soft = rng.random((8, 4))  # cells of 4 rows × 16 columns
    guide = torch.as_tensor(image / 255.0, dtype=torch.float32).permute(2, 0, 1)
    up = torch.as_tensor(resize_map(soft, (32, 64)))[None]
    expected = guided_filter(guide, up, radius=REFINE_CELLS * 16, eps=REFINE_EPS)[0].numpy()
    (got,) = refine_maps(image, [soft])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # A float image in [0, 1] is the same guide as its 8-bit form.
    np.testing.assert_allclose(refine_maps(image / 255.0, [soft])[0], got, atol=1e-5)


@pytest.mark.parametrize("value", [0, 50, 200, 255])
def test_a_stored_map_of_one_value_is_the_mask_training_reads(value):
    """An 8-bit map is on the threshold's scale as stored: one value throughout is all mask above the threshold
    (training's masks take it so), not a map with no contrast in it."""
    from freeatm_hf.data.masks import maps_at

    stored = np.full((8, 8), value, np.uint8)
    r = full_resolution_mask(stored, image_size=(16, 16), threshold=0.4)
    training = (maps_at([{"attention": stored}], (16, 16))[0] > 0.4).numpy()  # `row_masks` before its fallback
    assert np.array_equal(r.mask, training) and training.all() == (value > 102)
    assert r.empty == (value <= 102)
    assert r.bbox == ((0.0, 0.0, 16.0, 16.0) if value > 102 else None)

"""Objects the generator likely did not draw (low `attention_peak`) are left out of every method's inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from freeatm_hf.data.masks import drawn_objects


def test_drawn_objects_keeps_peaks_at_or_above_the_cut_and_objects_without_one():
    objs = [{"name": "a", "attention_peak": 0.02}, {"name": "b", "attention_peak": 0.05},
            {"name": "c", "attention_peak": None}, {"name": "d"}]
    assert [o["name"] for o in drawn_objects(objs, 0.05)] == ["b", "c", "d"]
    assert [o["name"] for o in drawn_objects(objs, None)] == ["a", "b", "c", "d"]
    assert [o["name"] for o in drawn_objects(objs, 0)] == ["a", "b", "c", "d"]
    assert drawn_objects(None, 0.05) == []
    # A non-finite peak says nothing: kept, like a missing one.
    assert len(drawn_objects([{"attention_peak": float("nan")}, {"attention_peak": float("inf")}], 0.05)) == 2


def _row():
    """Two objects, one per half of the image; the left one's peak says it was not drawn."""
    left, right = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    left[:, :8], right[:, 8:] = 255, 255
    objs = [{"name": "cat", "attention": Image.fromarray(left), "bbox": [0, 0, 31, 31], "attention_peak": 0.01},
            {"name": "dog", "attention": Image.fromarray(right), "bbox": [32, 0, 63, 31], "attention_peak": 0.3}]
    return {"image": [Image.new("RGB", (64, 32), (90, 120, 30))], "prompt": ["a cat and a dog"], "objects": [objs]}


@pytest.mark.parametrize("min_peak, expect", [(0.1, 1), (0.0, 2)])
def test_contrastive_views_get_masks_of_drawn_objects_only(min_peak, expect):
    from freeatm_hf.train.contrastive import ContrastiveArguments, make_transform

    args = ContrastiveArguments(image_size=32, crop_scale_min=1.0, mask_threshold=0.5, min_attention_peak=min_peak)
    out = make_transform(args)(_row())
    assert out["masks_1"][0].shape[0] == expect


def test_mae_patch_scores_ignore_an_undrawn_object():
    from freeatm_hf.train.mae import MAEArguments, build_model, make_transform

    scores = {}
    for name, peak in (("all", 0.0), ("drawn", 0.1)):
        args = MAEArguments(model_size="tiny", image_size=32, patch_size=8, crop_scale_min=1.0,
                            min_attention_peak=peak)
        torch.manual_seed(0)  # the same crop and flip both times
        scores[name] = make_transform(args, build_model(args).config)(_row())["patch_scores"][0]
    # The undrawn object covered one half: with it, every patch scores; without it, only the other half.
    assert (scores["all"] > 0).all() and 0 < (scores["drawn"] > 0).float().mean() < 1


def test_blip_position_prompts_name_drawn_objects_only():
    from freeatm_hf.train.blip import BlipArguments, build_blip, make_transform

    args = BlipArguments(prompts="position", model_size="tiny", image_size=32, max_length=72, crop_scale_min=1.0,
                         min_attention_peak=0.1)
    _, tok = build_blip(args)
    text = tok.decode(make_transform(args, tok)(_row())["input_ids"][0], skip_special_tokens=True)
    assert "the dog is in block" in text and "the cat is in block" not in text


def test_training_takes_the_cut_the_dataset_card_recommends_unless_given(tmp_path):
    from freeatm_hf import cli
    from freeatm_hf.train.contrastive import ContrastiveArguments

    out = tmp_path / "ds"
    cli.main(["generate", "--output_dir", str(out), "--pipeline", "tiny", "--num_images", "1", "--batch_size", "1",
              "--num_inference_steps", "1", "--min_attention_peak", "0.07", "--device", "cpu"])
    card = (out / "README.md").read_text()
    assert "| min_attention_peak | `0.07` |" in card and 'o["attention_peak"] >= 0.07]' in card
    assert ContrastiveArguments(dataset=str(out)).resolve_min_attention_peak() == 0.07
    assert ContrastiveArguments(dataset=str(out), min_attention_peak=0.0).resolve_min_attention_peak() == 0.0
    assert ContrastiveArguments(dataset=str(out), data_mode="real").resolve_min_attention_peak() is None
    # Every row keeps every object: the cut is advice, applied when reading.
    from datasets import load_dataset

    row = load_dataset(str(out), split="train")[0]
    assert [o["name"] for o in row["objects"]] and all(o["attention_peak"] > 0 for o in row["objects"])


def _map_image(mode: str, size: int = 32):
    """A square object in the middle of a `size`² map, stored in PIL `mode`."""
    a = np.zeros((size, size), np.uint8)
    a[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    image = Image.fromarray(a)
    if mode == "I;16":
        return Image.fromarray(a.astype(np.uint16) * 257)
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["1", "I;16", "F"])
def test_maps_of_any_depth_give_the_masks_an_8_bit_map_gives(mode):
    """A binary map divided by 255 was below every threshold (each object dropped, a whole-image mask instead)."""
    from freeatm_hf.data.masks import row_masks

    reference = row_masks({"objects": [{"attention": _map_image("L")}]}, (64, 64), 0.4)
    masks = row_masks({"objects": [{"attention": _map_image(mode)}]}, (64, 64), 0.4)
    assert reference.shape == (1, 64, 64) and reference.mean() == 0.25
    assert torch.equal(masks, reference)


def test_a_colour_map_is_refused_and_maps_of_different_sizes_are_each_resized():
    from freeatm_hf.data.masks import row_masks

    with pytest.raises(ValueError, match="single-channel"):
        row_masks({"objects": [{"attention": _map_image("RGB")}]}, (64, 64))
    small, large = _map_image("L", 16), _map_image("L", 32)
    both = row_masks({"objects": [{"attention": small}, {"attention": large}]}, (64, 64), 0.4)
    assert torch.equal(both[0], row_masks({"objects": [{"attention": small}]}, (64, 64), 0.4)[0])
    assert torch.equal(both[1], row_masks({"objects": [{"attention": large}]}, (64, 64), 0.4)[0])


def test_a_flat_map_under_otsu_is_an_empty_mask_not_a_crash():
    """The generator stores an all-zero map for an object whose attention was flat."""
    from freeatm_hf.data.masks import row_masks

    flat = {"attention": Image.fromarray(np.zeros((16, 16), np.uint8))}
    drawn = {"attention": _map_image("L", 16)}
    masks = row_masks({"objects": [flat, drawn]}, (32, 32), "otsu")
    assert masks.shape == (1, 32, 32) and masks.mean() == 0.25  # the flat one is left out
    assert torch.equal(row_masks({"objects": [flat]}, (32, 32), "otsu"), torch.ones(1, 32, 32))


def test_mae_scores_a_row_whose_maps_differ_in_size():
    from freeatm_hf.train.mae import MAEArguments, build_model, make_transform

    row = _row()
    left = row["objects"][0][0]
    left["attention"] = left["attention"].resize((8, 8), Image.NEAREST)  # the other stays 16×16
    args = MAEArguments(model_size="tiny", image_size=32, patch_size=8, crop_scale_min=1.0, min_attention_peak=0.0)
    torch.manual_seed(0)
    scores = make_transform(args, build_model(args).config)(row)["patch_scores"][0]
    assert scores.shape == (16,) and (scores > 0).all()  # each half covered by one of the two maps


def _smooth_maps(rng, count, sizes):
    from scipy.ndimage import gaussian_filter

    maps = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        a = gaussian_filter(rng.random((h, w)), 2)
        maps.append({"attention": Image.fromarray(((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8))})
    return maps


@pytest.mark.parametrize("threshold,mode", [(0.4, "binary"), (0.6, "soft"), ("otsu", "binary")])
def test_map_masks_read_a_view_as_torchvision_crops_the_full_resolution_masks(threshold, mode):
    """The contrastive loader samples the stored maps only where a view falls; it must give the masks that
    resizing every map to the image (`row_masks`) and cropping it with torchvision (nearest-exact) give. Noise maps
    of odd sizes, boxes and output sides; images larger and smaller than the maps."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    from freeatm_hf.data.masks import MapMasks, row_masks

    rng = np.random.default_rng(0)
    differ = total = 0
    for _ in range(12):
        size = (int(rng.integers(20, 200)), int(rng.integers(20, 200)))
        objects = [{"attention": Image.fromarray(rng.integers(0, 256, (int(rng.integers(3, 40)),
                                                                        int(rng.integers(3, 40)))).astype(np.uint8))}
                   for _ in range(int(rng.integers(1, 4)))]
        full, lazy = row_masks({"objects": objects}, size, threshold, mode), MapMasks(objects, size, threshold, mode)
        assert len(lazy) == len(full)
        for _ in range(4):
            h, w = int(rng.integers(1, size[0] + 1)), int(rng.integers(1, size[1] + 1))
            box = (int(rng.integers(0, size[0] - h + 1)), int(rng.integers(0, size[1] - w + 1)), h, w)
            out = int(rng.integers(4, 80))
            expected = F.resize(F.crop(tv_tensors.Mask(full), *box), [out, out],
                                interpolation=F.InterpolationMode.NEAREST_EXACT)
            got = lazy.crop(*box, out)
            assert got.shape == expected.shape
            # Only a pixel landing exactly on the threshold may differ (float rounding of the same weights).
            differ += int(((got - expected).abs() > 1e-5).sum())
            total += got.numel()
    assert total > 50_000 and differ <= total * 1e-4


def test_map_masks_measure_each_mask_inside_a_box_on_a_grid():
    from freeatm_hf.data.masks import MapMasks, row_masks

    rng = np.random.default_rng(1)
    objects = _smooth_maps(rng, 3, [(32, 32), (16, 24)])
    size = (256, 200)
    full = row_masks({"objects": objects}, size, 0.4)
    gridded, exact = MapMasks(objects, size, 0.4), MapMasks(objects, size, 0.4, grid=None)
    assert len(gridded.grid_rows) == 64 and len(exact.grid_rows) == 256  # two samples per cell of the 32 map
    for _ in range(20):
        h, w = int(rng.integers(30, 257)), int(rng.integers(30, 201))
        top, left = int(rng.integers(0, 257 - h)), int(rng.integers(0, 201 - w))
        truth = full[:, top : top + h, left : left + w].flatten(1).sum(1) / full.flatten(1).sum(1)
        # Every pixel counted: off only by a pixel on the threshold, rounded the other way.
        torch.testing.assert_close(exact.share(top, left, h, w), truth, atol=1e-4, rtol=0)
        assert (gridded.share(top, left, h, w) - truth).abs().max() < 0.03
    # Small objects (a few map cells) under the crops training draws: a block's worth of error would be a large
    # share of them (a grid alone was off by up to 0.13 here, and changed whether the instance was kept).
    from torchvision.transforms import v2

    crop, worst = v2.RandomResizedCrop(224, scale=(0.2, 1.0)), 0.0
    torch.manual_seed(0)
    yy, xx = np.mgrid[:64, :64]
    for _ in range(12):
        blobs = []
        for _ in range(4):
            (cy, cx), r = rng.integers(0, 64, 2), rng.uniform(0.5, 10)
            a = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) + 0.05 * rng.random((64, 64))
            blobs.append({"attention": Image.fromarray((a / a.max() * 255).astype(np.uint8))})
        gridded, full = MapMasks(blobs, (512, 512), 0.4), row_masks({"objects": blobs}, (512, 512), 0.4)
        assert len(gridded) == len(full)
        for _ in range(10):
            p = crop.make_params([torch.zeros(3, 512, 512)])
            top, left, h, w = p["top"], p["left"], p["height"], p["width"]
            truth = full[:, top : top + h, left : left + w].flatten(1).sum(1) / full.flatten(1).sum(1)
            worst = max(worst, float((gridded.share(top, left, h, w) - truth).abs().max()))
    assert worst < 0.03


def test_map_masks_leave_empty_maps_out_and_read_a_row_without_masks_as_the_whole_image():
    from freeatm_hf.data.masks import MapMasks

    blob = np.zeros((8, 8), np.uint8)
    blob[2:5, 2:5] = 255
    masks = MapMasks([{"attention": Image.fromarray(blob)}, {"attention": Image.fromarray(blob * 0)}], (32, 32))
    assert len(masks) == 1 and masks.crop(0, 0, 32, 32, 32)[0, 12, 12] == 1
    for objects in ([], [{"attention": Image.fromarray(blob * 0)}]):
        whole = MapMasks(objects, (32, 48))
        assert len(whole) == 1 and torch.equal(whole.crop(4, 4, 16, 16, 8), torch.ones(1, 8, 8))
        torch.testing.assert_close(whole.share(0, 0, 16, 24), torch.tensor([1.0]))  # the image: entire in any crop


def test_two_views_from_map_masks_equal_those_from_full_resolution_masks():
    """Same seed, same views: `TwoViewTransform` draws its crops and flips alike whichever form the masks take."""
    from freeatm_hf.data.masks import MapMasks, row_masks
    from freeatm_hf.data.transforms import TwoViewTransform

    rng = np.random.default_rng(2)
    objects = _smooth_maps(rng, 3, [(16, 16)])
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    two = TwoViewTransform(size=48, photometric=False, normalize=False, min_visible=0.0)
    for seed in range(5):
        torch.manual_seed(seed)
        expected = two(image, row_masks({"objects": objects}, (96, 128), 0.4))
        torch.manual_seed(seed)
        got = two(image, MapMasks(objects, (96, 128), 0.4))
        assert expected.keys() == got.keys()
        for k in expected:
            assert torch.equal(got[k], expected[k]), k


def test_an_8_bit_map_reads_as_its_value_over_255():
    """The dataset card's formula: an 8-bit map is value / 255, so 255 is 1 and a threshold of 0.4 cuts between
    the stored values 102 and 103."""
    from freeatm_hf.data.masks import attention_map, row_masks

    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(attention_map(values), values.astype(np.float32) / np.float32(255))
    top = row_masks({"objects": [{"attention": Image.fromarray(np.full((4, 4), 255, np.uint8))}]}, (4, 4), 0.999)
    assert top.shape == (1, 4, 4) and bool(top.all())  # 255 / 255 = 1 clears any threshold below 1
    cut = row_masks({"objects": [{"attention": Image.fromarray(np.array([[102, 103]], np.uint8))}]}, (1, 2), 0.4)
    assert cut[0].tolist() == [[False, True]]


def test_map_masks_grid_samples_the_middle_of_each_block():
    """A mask symmetric about the image's middle has exactly half its mass in the left half; the grid's samples
    at the middle of equal blocks are symmetric too, so the gridded share is exact there (samples at the blocks'
    first pixels would be shifted half a block)."""
    from freeatm_hf.data.masks import MapMasks, row_masks

    a = np.zeros((16, 16), np.uint8)
    a[2:14, 2:14] = 255  # large: seen at far more grid samples than EXACT_BELOW, so the grid alone measures it
    objects = [{"attention": Image.fromarray(a)}]
    full = row_masks({"objects": objects}, (128, 128), 0.4)
    assert torch.equal(full, full.flip(-1)) and torch.equal(full, full.flip(-2))
    masks = MapMasks(objects, (128, 128), 0.4)
    assert not masks.exact  # the grid measures this mask
    for box in ((0, 0, 128, 64), (0, 64, 128, 64), (0, 0, 64, 128), (64, 0, 64, 128)):
        torch.testing.assert_close(masks.share(*box), torch.tensor([0.5]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["binary", "soft"])
def test_map_masks_sample_the_plain_formula_bit_for_bit(mode):
    """`_sample` gathers, blends and cuts in the passes fastest on a CPU; the products and sums are the plain
    formula's below (along each row, then between rows, then the cut), so every bit is the same: for any sizes,
    thresholds (-inf, the float64 ones Otsu gives), and through `MapMasks` with maps of one size or of two."""
    from freeatm_hf.data.masks import MapMasks, _sample, bilinear_taps

    def plain(maps, thresholds, rows, cols, size):
        c0, c1, cw = bilinear_taps(cols, size[1], maps.shape[2])
        r0, r1, rw = bilinear_taps(rows, size[0], maps.shape[1])
        across = maps.index_select(2, c0) * (1 - cw) + maps.index_select(2, c1) * cw
        v = across.index_select(1, r0) * (1 - rw)[:, None] + across.index_select(1, r1) * rw[:, None]
        above = v > thresholds.view(-1, 1, 1)
        return above.float() if mode == "binary" else v * above

    def same(got, expected):
        return got.dtype == expected.dtype and torch.equal(got.view(torch.int32), expected.view(torch.int32))

    rng = np.random.default_rng(3)
    for _ in range(20):
        k, h, w = (int(n) for n in rng.integers(1, 40, 3))
        size = (int(rng.integers(1, 300)), int(rng.integers(1, 300)))
        maps = torch.from_numpy(rng.integers(0, 256, (k, h, w)).astype(np.float32) / 255)
        thresholds = torch.tensor(rng.choice([0.0, 0.4, 0.5, -np.inf], k), dtype=rng.choice([torch.float32,
                                                                                             torch.float64]))
        rows, cols = (torch.from_numpy(np.sort(rng.integers(0, n, int(rng.integers(0, 240))))) for n in size)
        assert same(_sample(maps, thresholds, rows, cols, size, mode), plain(maps, thresholds, rows, cols, size))
    objects = _smooth_maps(rng, 4, [(16, 16), (12, 20)])
    for objs, threshold in ((objects[::2], 0.4), (objects, 0.4), (objects, "otsu"), (objects, float("-inf"))):
        masks = MapMasks(objs, (100, 90), threshold, mode)
        assert len(masks.groups) == (1 if objs is not objects else 2)
        rows, cols = 7 + torch.arange(60), torch.arange(3, 90, 2)
        expected = torch.cat([plain(m[None], torch.tensor([t]), rows, cols, (100, 90))
                              for m, t in zip(masks.maps, masks.thresholds)])
        assert same(masks.sample(rows, cols), expected)

import numpy as np
import pytest
import torch
from PIL import Image

from freeatm_hf.data.collate import collate_two_views
from freeatm_hf.data.masks import row_masks
from freeatm_hf.data.transforms import TwoViewTransform


def scene():
    img = torch.full((3, 96, 128), 128, dtype=torch.uint8)
    img[:, 20:50, 30:70] = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)  # red box
    masks = torch.zeros(2, 96, 128)
    masks[0, 20:50, 30:70] = 1.0
    masks[1, 60:90, 100:125] = 1.0
    return img, masks


def test_image_and_masks_stay_aligned_through_crop_and_flip():
    torch.manual_seed(0)
    t = TwoViewTransform(size=64, scale=(0.3, 1.0), photometric=False, normalize=False, min_visible=0.0)
    img, masks = scene()
    checked = 0
    for _ in range(30):
        out = t(img, masks)
        v, m = out["pixel_values_1"], out["masks_1"]
        # Masks are resampled nearest, the image with antialiasing: allow one pixel at the border.
        inside = -torch.nn.functional.max_pool2d(-(m[0:1] > 0.99).float(), 3, 1, 1)[0] > 0.5
        outside = torch.nn.functional.max_pool2d((m[0:1] > 0.01).float(), 3, 1, 1)[0] < 0.5
        if inside.sum() < 10:
            continue
        red = v[:, inside]
        assert (red[0] > 0.9).all() and (red[1] < 0.1).all()  # background is grey (0.5, 0.5, 0.5)
        assert not ((v[0] > 0.95) & (v[1] < 0.05))[outside].any()  # no red outside the mask
        checked += 1
    assert checked > 10


def test_an_instance_cropped_out_of_a_view_is_dropped_from_the_pair():
    t = TwoViewTransform(size=32, photometric=False, normalize=False, min_visible=0.1)
    img, masks = scene()
    boxes = iter([dict(top=0, left=0, height=56, width=80), dict(top=10, left=10, height=86, width=118)])
    t.crop.make_params = lambda flat: next(boxes)  # view 1 holds only the first object
    out = t(img, masks)
    assert out["kept"].tolist() == [True, False]
    assert out["masks_1"].shape == (1, 32, 32) and out["masks_2"].shape == (1, 32, 32)


def test_rows_without_objects_get_one_whole_image_mask():
    m = row_masks({"objects": []}, (10, 12))
    assert m.shape == (1, 10, 12) and bool((m == 1).all())
    att = np.zeros((4, 4), np.uint8)
    att[:2, :2] = 255
    m = row_masks({"objects": [{"attention": Image.fromarray(att)}, {"attention": Image.fromarray(att * 0)}]}, (8, 8))
    assert m.shape == (1, 8, 8)  # the empty map is left out
    assert m[0, :3, :3].all() and not m[0, 5:, 5:].any()
    soft = row_masks({"objects": [{"attention": Image.fromarray(att)}]}, (8, 8), mode="soft")
    assert 0 < soft.max() <= 1


def test_collate_pads_instances_and_marks_them():
    a = {"pixel_values_1": torch.zeros(3, 8, 8), "pixel_values_2": torch.zeros(3, 8, 8),
         "masks_1": torch.ones(2, 8, 8), "masks_2": torch.ones(2, 8, 8)}
    b = {**a, "masks_1": torch.ones(1, 8, 8), "masks_2": torch.ones(1, 8, 8)}
    batch = collate_two_views([a, b])
    assert batch["masks_1"].shape == (2, 2, 8, 8)
    assert batch["instance_valid"].tolist() == [[True, True], [True, False]]
    assert batch["masks_1"][1, 1].sum() == 0


def test_compact_views_reach_the_model_as_the_float_ones_do():
    """With photometrics on the device the loader sends uint8 views and bool masks (a quarter and an eighth of
    the bytes); on the device they must become exactly the float views and masks the loader used to send."""
    from freeatm_hf.data.gpu_augment import augment_views
    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=g)
    masks = torch.zeros(3, 48, 64)
    masks[0, :30, :40], masks[1, 20:, 30:], masks[2, 5:25, 10:60] = 1, 1, 1
    batches = {}
    for compact in (False, True):
        two = TwoViewTransform(size=32, scale=(0.3, 1.0), min_visible=0.0, photometric=False, normalize=False,
                               uint8_views=compact, bool_masks=compact)
        torch.manual_seed(1)  # the same crops and flips
        samples = [two(image, masks) for _ in range(3)]
        batch = collate_two_views(samples)
        batches[compact] = augment_views(batch, None, IMAGENET_MEAN, IMAGENET_STD)
        if compact:
            assert batch["pixel_values_1"].dtype == torch.uint8 and batch["masks_1"].dtype == torch.bool
    for key in ("pixel_values_1", "pixel_values_2", "masks_1", "masks_2", "instance_valid"):
        assert batches[True][key].dtype == batches[False][key].dtype
        assert torch.equal(batches[True][key], batches[False][key]), key
    assert batches[True]["masks_1"].sum() > 0
    with pytest.raises(ValueError, match="normalize=False"):
        TwoViewTransform(uint8_views=True)


def test_the_two_views_are_drawn_independently():
    """Each view has its own crop and flip: two identical views would teach nothing."""
    torch.manual_seed(0)
    t = TwoViewTransform(size=32, photometric=False, normalize=False, min_visible=0.0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    masks = torch.ones(1, 64, 64)
    outs = [t(image, masks) for _ in range(4)]
    assert all(not torch.equal(o["pixel_values_1"], o["pixel_values_2"]) for o in outs)


def test_crop_scale_and_imagenet_normalization_are_the_configured_ones():
    """With scale (1, 1) a square image is cropped whole: each view is the image or its mirror, normalized by the
    ImageNet mean and std as (x / 255 - mean) / std; a flip comes about half the time."""
    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(1, 48, 48)
    masks[0, :, :12] = 1.0  # the left quarter
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    plain = (image.float() / 255 - mean) / std
    t = TwoViewTransform(size=48, scale=(1.0, 1.0), photometric=False, min_visible=0.0)
    flips = 0
    for _ in range(20):
        out = t(image, masks)
        for v, m in ((out["pixel_values_1"], out["masks_1"]), (out["pixel_values_2"], out["masks_2"])):
            flipped = torch.allclose(v, plain.flip(-1), atol=1e-5)
            assert flipped or torch.allclose(v, plain, atol=1e-5)
            assert torch.equal(m, masks.flip(-1) if flipped else masks)  # the mask follows its image
            flips += flipped
    assert 10 <= flips <= 30  # of 40 views


def test_each_masks_share_inside_a_non_square_crop_and_the_min_visible_cut():
    """The share is the mask's mass inside the crop box (rows top..top+height, columns left..left+width) over its
    total; an instance is kept at a share of exactly min_visible ("at least this share")."""
    img, _ = scene()
    masks = torch.zeros(2, 96, 128)
    masks[0, :80, :40] = 1.0  # tall: half of it lies in the wide box below
    masks[1, :40, :80] = 1.0  # wide: all of it inside
    box = dict(top=0, left=0, height=40, width=80)
    t = TwoViewTransform(size=32, photometric=False, normalize=False, min_visible=0.5)
    t.crop.make_params = lambda flat: box
    _, _, share = t.view(img, masks)
    expected = masks[:, :40, :80].flatten(1).sum(1) / masks.flatten(1).sum(1)
    assert expected.tolist() == [0.5, 1.0]
    torch.testing.assert_close(share, expected)
    assert t(img, masks)["kept"].tolist() == [True, True]


def test_masks_of_another_size_than_the_image_are_refused():
    img, masks = scene()
    with pytest.raises(ValueError, match="differ in size"):
        TwoViewTransform(size=32, photometric=False)(img, masks[:, :, :100])


def test_photometric_augmentations_have_simclrs_probabilities():
    """SimCLR (Chen et al. 2020, appendix A): colour jitter at p 0.8, grayscale at p 0.2, Gaussian blur with sigma in
    [0.1, 2] at p 0.5 (left out with blur=False)."""
    from torchvision.transforms import v2

    from freeatm_hf.data.transforms import simclr_photometric

    jitter, gray, blur = simclr_photometric(1.0, size=64).transforms
    assert isinstance(jitter.transforms[0], v2.ColorJitter) and jitter.p == 0.8
    assert isinstance(gray, v2.RandomGrayscale) and gray.p == 0.2
    (gauss,) = blur.transforms
    assert isinstance(gauss, v2.GaussianBlur) and blur.p == 0.5 and list(gauss.sigma) == [0.1, 2.0]
    assert len(simclr_photometric(1.0, blur=False).transforms) == 2


def test_collate_keeps_each_views_images_and_masks_and_pads_a_sample_without_instances():
    """Each sample's view-1 and view-2 tensors land at its index, real instances first, zeros after; a sample with
    no instance (real data) has no valid slot, and a batch of such samples still has one (padding) slot."""
    g = torch.Generator().manual_seed(0)

    def sample(n):
        return {"pixel_values_1": torch.rand(3, 8, 8, generator=g), "pixel_values_2": torch.rand(3, 8, 8, generator=g),
                "masks_1": torch.rand(n, 8, 8, generator=g) > 0.5, "masks_2": torch.rand(n, 8, 8, generator=g) > 0.5}

    samples = [sample(2), sample(0), sample(3)]
    batch = collate_two_views(samples)
    assert batch["masks_1"].shape == batch["masks_2"].shape == (3, 3, 8, 8) and batch["masks_1"].dtype == torch.bool
    assert batch["instance_valid"].tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    for i, s in enumerate(samples):
        n = len(s["masks_1"])
        for view in ("1", "2"):
            assert torch.equal(batch[f"pixel_values_{view}"][i], s[f"pixel_values_{view}"])
            assert torch.equal(batch[f"masks_{view}"][i, :n], s[f"masks_{view}"])
            assert not batch[f"masks_{view}"][i, n:].any()
    empty = collate_two_views([sample(0), sample(0)])
    assert empty["masks_1"].shape == (2, 1, 8, 8) and not empty["instance_valid"].any() and not empty["masks_1"].any()


def test_a_whole_image_mask_is_kept_in_a_crop_smaller_than_min_visible():
    """Real data (and a row left with no mask) has one whole-image mask: the image itself, which every crop shows
    entire. Measured as a share of its mass it was the crop's area, so a crop under `min_visible` of the image (SimCLR's
    scale 0.08 against the default 0.1) dropped the pair's only instance, while the mask-free baseline kept it."""
    from freeatm_hf.data.masks import MapMasks

    img, _ = scene()
    box = dict(top=0, left=0, height=18, width=53)  # 954 of 96·128 pixels: 7.8 % of the image
    for masks in (MapMasks([], (96, 128)), row_masks({"objects": []}, (96, 128))):
        t = TwoViewTransform(size=16, photometric=False, normalize=False, min_visible=0.1)
        t.crop.make_params = lambda flat: box
        out = t(img, masks)
        assert out["kept"].tolist() == [True], type(masks)
        assert torch.equal(out["masks_1"], torch.ones(1, 16, 16)) and torch.equal(out["masks_2"], torch.ones(1, 16, 16))
    # An object's mask is still measured by its mass: neither of `scene`'s is in this crop.
    t.crop.make_params = lambda flat: box
    assert t(img, scene()[1])["kept"].tolist() == [False, False]


def test_a_views_masks_lie_on_its_pixels_not_half_a_pixel_down_and_right():
    """A white box on black and its mask, through the same crops: the view's pixels past half white are its mask,
    whichever form the masks take. Resized by plain nearest (torchvision's for a `Mask`, index ⌊i·in/out⌋), each
    mask lay half an output pixel below and right of the box the view shows."""
    from freeatm_hf.data.masks import MapMasks

    img = torch.zeros(3, 96, 128, dtype=torch.uint8)
    img[:, 21:50, 33:70] = 255
    mask = (img[:1] > 0).float()
    for masks in (mask, MapMasks([{"attention": (mask[0] * 255).byte().numpy()}], (96, 128))):
        t = TwoViewTransform(size=40, scale=(0.3, 1.0), photometric=False, normalize=False, min_visible=0.0)
        torch.manual_seed(0)
        offsets, differ, seen = [], 0, 0
        for _ in range(40):
            out = t(img, masks)
            v, m = out["pixel_values_1"][0], out["masks_1"][0] if len(out["masks_1"]) else None
            if m is None or m.sum() < 4:
                continue
            rows = torch.arange(40.0)[:, None]
            offsets.append(float((m * rows).sum() / m.sum() - (v * rows).sum() / v.sum()))  # down (a flip keeps it)
            differ += int(((v > 0.5) != (m > 0.5)).sum())
            seen += int(m.sum())
        assert len(offsets) > 20, type(masks)
        assert abs(sum(offsets) / len(offsets)) < 0.1, type(masks)
        assert differ < 0.02 * seen, type(masks)

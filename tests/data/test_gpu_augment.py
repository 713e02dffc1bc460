"""Batched per-sample photometric ops against torchvision's own functional ops, sample by sample."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from freeatm_hf.data.gpu_augment import (
    BatchPhotometric,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    grayscale,
)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.rand(4, 3, 20, 24)


@pytest.mark.parametrize("ours,theirs,factors", [
    (adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.3, 1.4]),
    (adjust_contrast, TF.adjust_contrast, [0.6, 1.0, 1.3, 1.4]),
    (adjust_saturation, TF.adjust_saturation, [0.6, 0.0, 1.3, 1.4]),
    (adjust_hue, TF.adjust_hue, [-0.1, 0.0, 0.05, 0.1]),
])
def test_each_jitter_op_matches_torchvision_with_a_factor_per_sample(batch, ours, theirs, factors):
    got = ours(batch, torch.tensor(factors))
    for i, f in enumerate(factors):
        torch.testing.assert_close(got[i], theirs(batch[i], f), atol=1e-5, rtol=1e-5)


def test_grayscale_and_blur_match_torchvision(batch):
    torch.testing.assert_close(grayscale(batch)[1], TF.rgb_to_grayscale(batch[1]), atol=1e-6, rtol=1e-6)
    sigmas = torch.tensor([0.3, 1.0, 1.7, 2.0])
    got = gaussian_blur(batch, sigmas, 7)
    for i, s in enumerate(sigmas.tolist()):
        torch.testing.assert_close(got[i], TF.gaussian_blur(batch[i], [7, 7], [s, s]), atol=1e-5, rtol=1e-5)


def test_random_parameters_differ_per_sample_and_probabilities_hold():
    torch.manual_seed(0)
    aug = BatchPhotometric()
    p = aug.sample(4000, "cpu")
    assert p["brightness"].unique().numel() > 3000
    assert abs(p["jitter"].float().mean() - 0.8) < 0.03 and abs(p["gray"].float().mean() - 0.2) < 0.03
    x = torch.rand(8, 3, 16, 16)
    y = aug(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    untouched = BatchPhotometric(p_jitter=0, p_gray=0, p_blur=0)(x)
    assert torch.equal(untouched, x)


def test_a_batch_is_augmented_as_torchvisions_ops_would_each_sample():
    """`apply`: each sample through the drawn jitter (in the drawn order, where drawn), then grayscale, then blur,
    composed here from torchvision's functional ops sample by sample."""
    torch.manual_seed(0)
    x = torch.rand(8, 3, 20, 24)
    aug = BatchPhotometric(kernel_size=7)
    p = aug.sample(8, "cpu")
    p["order"] = [3, 1, 0, 2]  # hue, contrast, brightness, saturation
    p["jitter"] = torch.tensor([1, 1, 1, 1, 0, 0, 0, 1], dtype=torch.bool)
    p["gray"] = torch.tensor([0, 1, 0, 1, 0, 1, 0, 0], dtype=torch.bool)
    p["blur"] = torch.tensor([0, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    got = aug.apply(x, p)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    names = ["brightness", "contrast", "saturation", "hue"]
    for i in range(8):
        y = x[i]
        if p["jitter"][i]:
            for k in p["order"]:
                y = ops[k](y, p[names[k]][i].item())
        if p["gray"][i]:
            y = TF.rgb_to_grayscale(y, num_output_channels=3)
        if p["blur"][i]:
            s = p["sigma"][i].item()
            y = TF.gaussian_blur(y, [7, 7], [s, s])
        torch.testing.assert_close(got[i], y, atol=1e-5, rtol=1e-5)


def test_the_random_parameters_span_their_ranges_with_their_probabilities():
    """SimCLR's draws: factors uniform in [1 - s, 1 + s], hue in [-h, h], blur sigma in its range, each op with
    its own probability, the jitter order itself random."""
    torch.manual_seed(0)
    aug = BatchPhotometric(brightness=0.5, contrast=0.6, saturation=0.7, hue=0.1, p_jitter=0.7, p_gray=0.1,
                           p_blur=0.3, sigma=(0.2, 1.5))
    p = aug.sample(20000, "cpu")
    for name, lo, hi in [("brightness", 0.5, 1.5), ("contrast", 0.4, 1.6), ("saturation", 0.3, 1.7),
                         ("hue", -0.1, 0.1), ("sigma", 0.2, 1.5)]:
        v = p[name]
        assert lo <= v.min() < lo + 0.01 * (hi - lo) and hi - 0.01 * (hi - lo) < v.max() <= hi, name
        assert abs(v.mean().item() - (lo + hi) / 2) < 0.02 * (hi - lo), name
    for name, prob in [("jitter", 0.7), ("gray", 0.1), ("blur", 0.3)]:
        assert abs(p[name].float().mean().item() - prob) < 0.015, name
    assert len({tuple(aug.sample(1, "cpu")["order"]) for _ in range(200)}) > 12  # of the 24 orders


def test_simclr_and_moco_jitter_strengths_and_the_blur_kernel():
    """SimCLR (Chen et al. 2020, appendix A): jitter (0.8, 0.8, 0.8, 0.2)·s, a blur kernel 10 % of the image
    side, odd; MoCo-v2's (0.4, 0.4, 0.4, 0.1) is s = 0.5."""
    from freeatm_hf.data.gpu_augment import blur_kernel_for, color_jitter

    assert color_jitter(1.0) == pytest.approx({"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2})
    assert color_jitter(0.5) == pytest.approx({"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1})
    assert blur_kernel_for(224) == 23
    for size in range(30, 600):
        k = blur_kernel_for(size)
        assert k % 2 == 1 and abs(k - 0.1 * size) <= 1, size
    assert blur_kernel_for(8) == 3


def test_views_are_normalized_as_torchvision_normalizes():
    from torchvision.transforms.v2 import Normalize

    from freeatm_hf.data.gpu_augment import augment_views
    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    views = {k: torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8) for k in ("pixel_values_1", "pixel_values_2")}
    out = augment_views(views, None, IMAGENET_MEAN, IMAGENET_STD)
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    for k, v in views.items():
        torch.testing.assert_close(out[k], norm(v.float() / 255), atol=1e-6, rtol=1e-6)

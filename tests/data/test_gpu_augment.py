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

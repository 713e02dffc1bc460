import random

import numpy as np
import pytest
from PIL import Image

from freeatm_hf.data.rows import one_caption, rgb


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped_white(mode):
    values = np.linspace(0, 65535, 32 * 32).reshape(32, 32)
    image = Image.fromarray(values.astype(np.uint16)).convert(mode) if mode == "I" else Image.fromarray(
        values.astype(np.uint16))
    assert image.mode == mode
    out = np.asarray(rgb(image))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    expect = np.round(values / 257.0)  # torchvision's 16-bit decoding, divided by 65535, times 255
    assert np.abs(out[..., 0].astype(float) - expect).max() <= 1
    # Of the stored 16-bit values, exactly the nearest 8-bit level (v / 257 is never halfway: 257 is odd).
    assert np.array_equal(out[..., 0], np.round(values.astype(np.uint16) / 257.0))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    assert abs(out.mean() / 255 - 0.5) < 0.01  # convert("RGB") made it 0.998


def test_images_without_a_known_range_are_refused_and_8_bit_ones_pass_as_pillow_converts_them():
    with pytest.raises(ValueError, match="floating-point image"):
        rgb(Image.fromarray(np.ones((4, 4), np.float32)))
    with pytest.raises(ValueError, match="outside the 16-bit range"):
        rgb(Image.fromarray(np.full((4, 4), 70000, np.int32)))
    rgba = Image.fromarray(np.arange(4 * 4 * 4, dtype=np.uint8).reshape(4, 4, 4), "RGBA")
    palette = rgba.convert("P")
    for image in (rgba, palette, rgba.convert("L")):
        assert np.array_equal(np.asarray(rgb(image)), np.asarray(image.convert("RGB")))


def test_one_caption_draws_one_of_several_and_refuses_none():
    assert one_caption("a dog") == "a dog"
    caps = ["a dog", "a puppy", "a hound"]
    assert {one_caption(caps, random.Random(s)) for s in range(40)} == set(caps)  # each can come up
    rng = random.Random(0)
    assert [one_caption(caps, rng) for _ in range(8)] != [caps[0]] * 8  # the caller's generator draws
    for bad in (None, [], [None]):
        with pytest.raises(ValueError, match="needs a caption"):
            one_caption(bad)


def test_a_32_bit_image_of_8_bit_values_stays_as_it_is():
    """`datasets` stores an integer array of 0..255 as mode "I": read as 16-bit it went near black."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    values = np.round(np.linspace(0, 255, 64)).reshape(8, 8).astype(np.int64)  # 255 included: still 8-bit
    image = Dataset.from_dict({"image": [values]}, features=Features({"image": ImageFeature()}))[0]["image"]
    assert image.mode == "I"
    assert np.array_equal(np.asarray(rgb(image))[..., 0], values)

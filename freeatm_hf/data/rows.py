"""A row's raw values as training and evaluation read them: the image as 8-bit RGB, one caption of several."""

import random

import numpy as np

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def rgb(image):
    """A PIL image as 8-bit RGB.

    Pillow's `convert("RGB")` clips a 16-bit image at 255 instead of scaling it (a 16-bit PNG of mid-grey turns
    white), so one is scaled from its 16-bit range first, as torchvision's decoder does. A 32-bit image ("I") is
    ambiguous: Pillow opens some 16-bit files so, and `datasets` stores an integer array of 8-bit values so; one
    whose values pass 255 is read as 16-bit, else as 8-bit. Values outside 0..65535, or a floating-point image
    ("F"), have no known range and are refused."""
    if image.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(image)
        if image.mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"a 32-bit integer image (mode I) with values {a.min()}..{a.max()}, outside the 16-bit "
                             "range: convert the dataset's images to 8 or 16 bits")
        if image.mode == "I" and (not a.size or a.max() <= 255):
            return image.convert("RGB")  # 8-bit values: Pillow clips nothing
        from PIL import Image

        return Image.fromarray(np.round(a.astype(np.float32) / 257.0).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        raise ValueError("a floating-point image (mode F) has no fixed range of values to map to colours: convert "
                         "the dataset's images to 8 or 16 bits")
    return image if image.mode == "RGB" else image.convert("RGB")


def one_caption(value, rng=random) -> str:
    """A row's caption: a string as it is, or one drawn with `rng` from a list of them (COCO's five per image).
    A row without one (null, an empty list) is refused: a caption-trained model would learn from nothing."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(c, str) for c in value):
        return rng.choice(value)
    raise ValueError(f"a row's caption is {value!r}: each row needs a caption (a string, or a list of strings); "
                     "leave rows without one out of the dataset")

"""Position prompts for vision-language pretraining (Free-ATM §3.3.3): the image is split into an N×N grid of
blocks numbered row-major from 1 (top-left) to N² (bottom-right); each object with a box adds
"The [O] is in block [P]." to the caption, P being the block that holds its box centre.

Prompts must describe the *augmented* image, so boxes go through the same crop/flip as the image
(`torchvision.transforms.v2` with `tv_tensors.BoundingBoxes`) and blocks are computed afterwards; PTP's
loader computed them before augmentation, which teaches wrong positions.
"""

import math
import random

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .rows import rgb

TEMPLATE = "The {name} is in block {block}."


def check_grid(grid: int):
    """Else every prompt would say "block 0" (or a negative grid's number), without a word."""
    if grid < 1:
        raise ValueError(f"the position grid has at least one block per side, got grid={grid}")


def block_index(box, image_size: tuple[int, int], grid: int = 3) -> int:
    """Block (1..grid²) of the centre of `box=(x0, y0, x1, y1)` in an image of `image_size=(height, width)`.
    A centre exactly on an inner border belongs to the block to its right / below."""
    check_grid(grid)
    h, w = image_size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col = min(max(int(cx / w * grid), 0), grid - 1)
    row = min(max(int(cy / h * grid), 0), grid - 1)
    return row * grid + col + 1


def position_prompts(names: list[str], boxes: list, image_size, grid: int = 3) -> list[str]:
    """One prompt per object that has a box (objects with `None` get none), in the given order."""
    return [TEMPLATE.format(name=n, block=block_index(b, image_size, grid)) for n, b in zip(names, boxes)
            if b is not None]


def caption_with_positions(caption: str, prompts: list[str], tokenizer=None, max_length: int | None = None,
                           shuffle: bool = True, seed: int | None = None) -> str:
    """Append prompts (shuffled with `seed`, or in order) while the text fits the tokenizer's limit: whole
    prompts are dropped, never cut mid-word. The caption itself is kept as is."""
    prompts = list(prompts)
    if shuffle:
        # Without a seed: the process-wide generator, which Trainer's set_seed and the DataLoader's worker
        # seeding make reproducible (a fresh Random() would draw from the OS).
        (random if seed is None else random.Random(seed)).shuffle(prompts)
    text = caption.rstrip()
    if text and not text.endswith((".", "!", "?")):
        text += "."
    limit = max_length or (tokenizer.model_max_length if tokenizer is not None else None)
    for p in prompts:
        candidate = f"{text} {p}"
        if tokenizer is not None and len(tokenizer(candidate).input_ids) > limit:
            break
        text = candidate
    return text


def check_tokenizer_writes_blocks(tokenizer, grid: int):
    """Refuse a tokenizer that cannot tell block numbers apart (digits outside its vocabulary become one
    unknown token): its prompts would say "is in block" and nothing about where."""
    seen = {}
    for block in range(1, grid * grid + 1):
        ids = tuple(tokenizer(f"block {block}", add_special_tokens=False).input_ids)
        if ids in seen:
            raise ValueError(f"the tokenizer writes block {block} and block {seen[ids]} alike ({list(ids)}): its "
                             "vocabulary lacks the digits, so position prompts would carry no position")
        seen[ids] = block


def check_box(name: str, box):
    """Refuse a box that is not `(x0, y0, x1, y1)`: stacked four to a row, two 2-number boxes became one box of
    the first object; an inverted one (say `(x, y, width, height)`) was clamped to nothing, its prompt lost."""
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise ValueError(f"the box of {name!r}, {list(box)}, is not 4 finite numbers (x0, y0, x1, y1 in image pixels)")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"the box of {name!r}, {list(box)}, does not have x0 ≤ x1 and y0 ≤ y1: a box is (x0, y0, x1, "
                         "y1) in image pixels, not (x, y, width, height)")


class PositionPromptTransform:
    """`(image, caption, names, boxes) → (image tensor (3, S, S) uint8, caption with position prompts)`.

    Geometry: random resized crop + horizontal flip, applied to the image and the boxes together; a box
    that leaves the crop (clamped to nothing) loses its prompt.
    """

    def __init__(self, size: int = 224, scale=(0.5, 1.0), grid: int = 3, tokenizer=None, max_length=None,
                 shuffle: bool = True, flip: bool = True):
        check_grid(grid)  # at construction, not at the first object with a box
        ops = [v2.RandomResizedCrop(size, scale=scale, antialias=True)] + ([v2.RandomHorizontalFlip()] if flip else [])
        self.geometry = v2.Compose(ops + [v2.ClampBoundingBoxes()])
        self.size, self.grid, self.tokenizer, self.max_length, self.shuffle = size, grid, tokenizer, max_length, shuffle
        if tokenizer is not None:
            check_tokenizer_writes_blocks(tokenizer, grid)

    def __call__(self, image, caption: str, names: list[str], boxes: list, seed: int | None = None):
        if not isinstance(image, torch.Tensor):
            image = v2.functional.pil_to_tensor(rgb(image))
        h, w = image.shape[-2:]
        have = [i for i, b in enumerate(boxes) if b is not None]
        for i in have:
            check_box(names[i], boxes[i])
        bb = tv_tensors.BoundingBoxes(torch.tensor([boxes[i] for i in have], dtype=torch.float32).view(-1, 4),
                                      format="XYXY", canvas_size=(h, w))
        img, bb = self.geometry(tv_tensors.Image(image), bb)
        kept_names, kept_boxes = [], []
        for i, b in zip(have, bb.tolist()):
            if b[2] - b[0] >= 1 and b[3] - b[1] >= 1:  # still visible after the crop
                kept_names.append(names[i])
                kept_boxes.append(b)
        prompts = position_prompts(kept_names, kept_boxes, (self.size, self.size), self.grid)
        text = caption_with_positions(caption, prompts, self.tokenizer, self.max_length, self.shuffle, seed)
        return img.as_subclass(torch.Tensor), text

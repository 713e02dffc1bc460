import pytest
import torch

from freeatm_hf.data.position_prompts import (
    PositionPromptTransform,
    block_index,
    caption_with_positions,
    position_prompts,
)


@pytest.mark.parametrize("box,size,expected", [
    ((0, 0, 10, 10), (90, 90), 1),            # top-left corner
    ((80, 0, 90, 10), (90, 90), 3),           # top-right
    ((0, 80, 10, 90), (90, 90), 7),           # bottom-left
    ((80, 80, 90, 90), (90, 90), 9),          # bottom-right
    ((40, 40, 50, 50), (90, 90), 5),          # centre
    ((25, 0, 35, 10), (90, 90), 2),           # centre x = 30: exactly on the border → the right block
    ((0, 0, 90, 90), (90, 90), 5),            # the whole image
    ((150, 10, 170, 30), (60, 180), 6),       # non-square (height 60, width 180): x 160 → col 2, y 20 → row 1
    ((10, 40, 30, 59), (60, 180), 7),         # non-square, bottom-left
])
def test_block_of_the_box_centre(box, size, expected):
    assert block_index(box, size) == expected


def test_grid_size_is_configurable_and_objects_without_box_get_no_prompt():
    assert block_index((70, 70, 80, 80), (80, 80), grid=4) == 16
    assert block_index((0, 0, 10, 10), (80, 80), grid=2) == 1
    prompts = position_prompts(["dog", "ball", "cat"], [(0, 0, 10, 10), None, (80, 80, 90, 90)], (90, 90))
    assert prompts == ["The dog is in block 1.", "The cat is in block 9."]


def test_shuffle_is_seeded_and_fixed_order_is_kept():
    prompts = [f"The o{i} is in block {i}." for i in range(1, 7)]
    a = caption_with_positions("a scene", prompts, seed=3)
    assert a == caption_with_positions("a scene", prompts, seed=3) and a != caption_with_positions("a scene", prompts, seed=4)
    assert caption_with_positions("a scene", prompts, shuffle=False) == "a scene. " + " ".join(prompts)
    # Unseeded (as in training): follows the process-wide generator that set_seed seeds, so runs repeat.
    import random

    random.seed(0)
    first = [caption_with_positions("a scene", prompts) for _ in range(3)]
    random.seed(0)
    assert [caption_with_positions("a scene", prompts) for _ in range(3)] == first and len(set(first)) > 1


def test_truncation_drops_whole_prompts_never_words(tokenizer):
    prompts = [f"The golden retriever number {i} is in block {i % 9 + 1}." for i in range(20)]
    text = caption_with_positions("a park with many dogs", prompts, tokenizer, shuffle=False)
    assert len(tokenizer(text).input_ids) <= 77
    body = text[len("a park with many dogs. "):]
    kept = [p for p in prompts if p in body]
    assert body == " ".join(kept) and 0 < len(kept) < len(prompts)
    longer = f"{text} {prompts[len(kept)]}"
    assert len(tokenizer(longer).input_ids) > 77  # the next whole prompt would not fit


def test_horizontal_flip_names_the_mirrored_block():
    img = torch.zeros(3, 90, 90, dtype=torch.uint8)
    t = PositionPromptTransform(size=90, scale=(1.0, 1.0), shuffle=False)
    t.geometry.transforms[1].p = 1.0  # always flip; the crop keeps the whole (square) image
    _, text = t(img, "a scene", ["dog", "cat"], [(0, 0, 10, 10), (40, 80, 50, 90)])
    assert text == "a scene. The dog is in block 3. The cat is in block 8."
    t.geometry.transforms[1].p = 0.0
    _, text = t(img, "a scene", ["dog", "cat"], [(0, 0, 10, 10), (40, 80, 50, 90)])
    assert text == "a scene. The dog is in block 1. The cat is in block 8."


def text_after_crop(side: int) -> str:
    """The caption of a dog at (5, 5, 20, 20) and a cat at (70, 70, 90, 90) in a 100² image, after the top-left
    `side`² crop resized to 50² (no flip, no shuffle)."""
    img = torch.zeros(3, 100, 100, dtype=torch.uint8)
    t = PositionPromptTransform(size=50, shuffle=False, flip=False)
    t.geometry.transforms[0].make_params = lambda flat: dict(top=0, left=0, height=side, width=side)
    return t(img, "a scene", ["dog", "cat"], [(5, 5, 20, 20), (70, 70, 90, 90)])[1]


def test_a_box_cropped_away_loses_its_prompt():
    assert text_after_crop(50) == "a scene. The dog is in block 1."


def test_the_offline_tokenizer_writes_every_block_number(tokenizer):
    # Digits missing from the vocabulary made every block number the unknown token: "is in block" with no
    # position in it.
    from freeatm_hf.data.position_prompts import check_tokenizer_writes_blocks

    check_tokenizer_writes_blocks(tokenizer, grid=9)
    ids = tokenizer("The red circle is in block 47.").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "the red circle is in block 4 7 ."


def test_a_tokenizer_without_digits_is_refused(tokenizer):
    from transformers import CLIPTokenizer

    from freeatm_hf.generate.clip_vocab import ASSET_DIR

    vocab = {t: i for t, i in tokenizer.get_vocab().items() if not t.endswith("</w>") or not t[0].isdigit()}
    merges = [tuple(m.split(" ")) for m in (ASSET_DIR / "merges.txt").read_text().splitlines() if m]
    no_digits = CLIPTokenizer(vocab=vocab, merges=merges)  # the vocabulary this project shipped before
    with pytest.raises(ValueError, match="block 2 and block 1 alike"):
        PositionPromptTransform(size=32, tokenizer=no_digits)


def test_a_centre_on_the_right_or_bottom_edge_is_in_the_last_block():
    assert block_index((80, 0, 100, 10), (90, 90)) == 3  # centre x = 90, the right edge
    assert block_index((0, 80, 10, 100), (90, 90)) == 7  # centre y = 90, the bottom edge
    assert block_index((90, 90, 90, 90), (90, 90)) == 9


def test_blocks_are_of_the_output_view_not_the_source_image():
    """The crop is resized to `size`: the boxes are then in the view's pixels, and so is the grid."""
    assert text_after_crop(100) == "a scene. The dog is in block 1. The cat is in block 9."


def test_without_flip_the_view_is_never_mirrored():
    img = torch.zeros(3, 90, 90, dtype=torch.uint8)
    t = PositionPromptTransform(size=90, scale=(1.0, 1.0), shuffle=False, flip=False)
    torch.manual_seed(0)
    assert {t(img, "a scene", ["dog"], [(0, 0, 10, 10)])[1] for _ in range(20)} == {"a scene. The dog is in block 1."}


def test_caption_endings_and_whitespace():
    prompts = ["The dog is in block 1."]
    for caption in ("what a dog!", "a dog?", "a dog."):
        assert caption_with_positions(caption, prompts, shuffle=False) == f"{caption} The dog is in block 1."
    assert caption_with_positions("a dog \n", prompts, shuffle=False) == "a dog. The dog is in block 1."


def test_a_prompt_that_fits_the_limit_exactly_is_kept_and_max_length_overrides_the_tokenizers(tokenizer):
    prompts = [f"The dog number {i} is in block {i}." for i in range(1, 10)]
    first = f"a park. {prompts[0]}"
    exact = len(tokenizer(first).input_ids)
    assert caption_with_positions("a park", prompts, tokenizer, max_length=exact, shuffle=False) == first
    assert caption_with_positions("a park", prompts, tokenizer, max_length=exact - 1, shuffle=False) == "a park."
    assert exact < tokenizer.model_max_length  # the default limit would have let more in


def test_a_tokenizer_missing_only_the_last_blocks_digit_is_refused(tokenizer):
    from transformers import CLIPTokenizer

    from freeatm_hf.generate.clip_vocab import ASSET_DIR

    vocab = {t: i for t, i in tokenizer.get_vocab().items() if t not in ("8</w>", "9</w>")}
    merges = [tuple(m.split(" ")) for m in (ASSET_DIR / "merges.txt").read_text().splitlines() if m]
    no_89 = CLIPTokenizer(vocab=vocab, merges=merges)
    with pytest.raises(ValueError, match="block 9 and block 8 alike"):
        PositionPromptTransform(size=32, tokenizer=no_89)


@pytest.mark.parametrize("grid", [0, -2])
def test_a_grid_without_blocks_is_refused(grid):
    """Else every prompt says "block 0" (or a negative grid's number) and the card states another grid."""
    from freeatm_hf.data.position_prompts import PositionPromptTransform, block_index

    with pytest.raises(ValueError, match="at least one block"):
        block_index((0, 0, 10, 10), (100, 100), grid)
    with pytest.raises(ValueError, match="at least one block"):
        PositionPromptTransform(size=32, grid=grid)
    from freeatm_hf.train.blip import BlipArguments

    with pytest.raises(ValueError, match="--grid is the number of blocks per side"):
        BlipArguments(dataset="unused", grid=grid)


@pytest.mark.parametrize("boxes, says", [
    ([[0, 0], [60, 60]], r"box of 'cat', \[0, 0\], is not 4 finite numbers"),  # two halves were one box, the cat's
    ([[10, 0, 50, 40], []], r"box of 'dog', \[\], is not 4 finite numbers"),
    ([[40, 10, 20, 30], None], r"box of 'cat', \[40, 10, 20, 30\], does not have x0 ≤ x1 and y0 ≤ y1"),  # x, y, w, h
    ([[float("nan"), 0, 10, 10], None], r"box of 'cat', \[nan, 0, 10, 10\], is not 4 finite"),
])
def test_a_box_that_is_not_x0_y0_x1_y1_is_refused_by_object(boxes, says):
    """Boxes were stacked and reshaped to rows of 4: two 2-number boxes became one box of the first object, and an
    inverted one was clamped to nothing and lost its prompt, both without a word."""
    from PIL import Image

    t = PositionPromptTransform(size=32, shuffle=False)
    with pytest.raises(ValueError, match=says):
        t(Image.new("RGB", (64, 64)), "a cat", ["cat", "dog"], boxes)

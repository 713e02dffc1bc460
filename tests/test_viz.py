"""The drawing the dataset card's examples and the Space share: colours, blend, boxes, heat maps, grids."""

import numpy as np
from PIL import Image

from freeatm_hf.masks import full_resolution_mask
from freeatm_hf.viz import PALETTE, color, grid, heatmap, label_positions, overlay

ATT = Image.fromarray(np.array([[0, 40, 90, 0], [30, 255, 200, 10], [0, 120, 160, 0], [0, 0, 20, 0]], np.uint8))


def test_colours_cycle_through_the_whole_palette():
    assert [color(i) for i in range(2 * len(PALETTE))] == PALETTE * 2


def test_the_overlay_blends_each_mask_in_its_colour_at_alpha_with_its_box_inside_the_mask_box():
    image = Image.new("RGB", (8, 8), (128, 128, 128))
    objects = [{"name": "x", "attention": ATT}, {"name": "y", "attention": ATT.transpose(Image.FLIP_LEFT_RIGHT)}]
    view = np.asarray(overlay(image, objects, 0.7, alpha=0.3, boxes=False, labels=False)).astype(float)
    expected = np.full((8, 8, 3), 128.0)
    for i, o in enumerate(objects):  # in order: a later mask is blended over an earlier one
        m = full_resolution_mask(np.asarray(o["attention"]), (8, 8), 0.7).mask
        expected[m] = 0.7 * expected[m] + 0.3 * np.array(color(i))
    assert np.array_equal(view, np.round(expected))
    # Boxes: drawn inside the mask's box (its end exclusive), `scale // 2` pixels wide.
    plain = np.asarray(overlay(image, objects[:1], 0.4, labels=False, boxes=False, scale=6))
    boxed = np.asarray(overlay(image, objects[:1], 0.4, labels=False, scale=6))
    x0, y0, x1, y1 = (int(v * 6) for v in full_resolution_mask(np.asarray(ATT), (8, 8), 0.4).bbox)
    outline = (boxed != plain).any(-1)
    assert not outline[y1:].any() and not outline[:, x1:].any() and not outline[:y0].any()
    assert outline[y0 + 2, x0 + 3:x1 - 3].all() and not outline[y0 + 3, x0 + 3:x1 - 3].any()
    assert (boxed[outline] == color(0)).all()


def test_labels_sit_above_their_box_inside_the_image_and_never_on_one_another():
    size = (100, 80)
    tags = [((30, 10), (20, 40, 60, 70)),   # room above: the tag ends where the box begins
            ((30, 10), (20, 40, 50, 60)),   # the same corner: moved down past the first
            ((30, 10), (25, 3, 90, 50)),    # no room above: inside the box's top
            ((40, 10), (90, 30, 100, 40))]  # at the right edge: shifted left into the image
    corners = label_positions(tags, size)
    assert corners == [(20, 30), (20, 40), (25, 3), (60, 20)]
    rects = [(x, y, x + w, y + h) for (x, y), ((w, h), _) in zip(corners, tags)]
    for i, (a0, b0, a1, b1) in enumerate(rects):
        assert 0 <= a0 and a1 <= size[0] and 0 <= b0 and b1 <= size[1]
        for c0, d0, c1, d1 in rects[:i]:
            assert a1 <= c0 or c1 <= a0 or b1 <= d0 or d1 <= b0, (i, rects)
    # Moved down to the bottom, a tag stops there (covering another rather than leaving the picture).
    assert label_positions([((30, 10), (0, 75, 10, 80))] * 3, size) == [(0, 65), (0, 70), (0, 70)]


def test_two_objects_with_one_box_get_two_readable_name_tags_in_their_colours():
    image = Image.new("RGB", (8, 8), (128, 128, 128))
    objects = [{"name": "x", "attention": ATT}, {"name": "y", "attention": ATT}]
    plain = np.asarray(overlay(image, objects, 0.4, labels=False, scale=32))
    named = np.asarray(overlay(image, objects, 0.4, scale=32))
    changed = (named != plain).any(-1)
    rows = np.flatnonzero(changed.any(1))
    # Two tags, one under the other: the rows each colour fills do not meet.
    filled = [np.flatnonzero((named == color(i)).all(-1).any(1) & changed.any(1)) for i in range(2)]
    assert len(filled[0]) and len(filled[1]) and filled[0].max() < filled[1].min()
    assert rows.min() == filled[0].min() and rows.max() == filled[1].max()
    # Each tag holds its name in an ink that is neither the tag's colour nor the picture's.
    for i in range(2):
        tag = named[filled[i].min():filled[i].max() + 1][changed[filled[i].min():filled[i].max() + 1]]
        assert ((tag != color(i)).any(-1) & (tag != 128).any(-1)).sum() > 5


def test_a_heatmap_reads_uint8_maps_as_probabilities_and_rescales_float_ones():
    def ramp(a):  # dark blue → yellow
        return np.round(np.stack([a, a ** 0.5 * 0.9, 0.5 * (1 - a)], -1) * 255)

    u8 = np.array([[51, 102, 204]], np.uint8)  # not stretched to 0…1
    assert np.array_equal(np.asarray(heatmap(u8)), ramp(u8 / 255.0))
    f = np.array([[2.0, 3.0, 6.0]])
    assert np.array_equal(np.asarray(heatmap(f)), ramp((f - 2) / 4))
    assert heatmap(u8, (5, 7)).size == (7, 5)  # size is (height, width)


def test_a_grid_lays_images_out_row_by_row():
    images = [Image.new("RGB", (3, 2), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    canvas = np.asarray(grid(images, columns=2, pad=1))
    assert canvas.shape == (2 * (2 + 1) + 1, 2 * (3 + 1) + 1, 3)  # two rows for three images
    for k, im in enumerate(images):
        x, y = 1 + (k % 2) * 4, 1 + (k // 2) * 3
        assert (canvas[y:y + 2, x:x + 3] == im.getpixel((0, 0))).all()
    assert (canvas[4:6, 5:8] == 255).all()  # the empty cell keeps the background

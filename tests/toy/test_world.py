import re

import numpy as np
import pytest
import torch

from freeatm_hf.toy.world import COLORS, SHAPES, ShapesWorld, _disc_overlap, render


@pytest.fixture(scope="module")
def rendered():
    world = ShapesWorld(seed=3)
    specs = world.scenes(48)
    images, masks = world.render(specs)
    return specs, images, masks


def test_scene_i_depends_only_on_seed_and_index():
    a, b = ShapesWorld(seed=1), ShapesWorld(seed=1)
    assert a.scenes(5, start=40) == [b.scene(i) for i in range(40, 45)]
    assert a.scenes(5) != ShapesWorld(seed=2).scenes(5)
    ia, _ = a.render(a.scenes(4))
    ib, _ = b.render(b.scenes(4))
    assert torch.equal(ia, ib)


def test_scenes_follow_the_rules(rendered):
    specs, _, _ = rendered
    counts = set()
    for s in specs:
        counts.add(len(s.objects))
        colours = [o.color for o in s.objects]
        assert len(set(colours)) == len(colours)  # distinct colours per scene
        for o in s.objects:
            assert o.shape in SHAPES and o.color in COLORS
            assert o.phrase in s.caption and s.caption.index(o.name) >= 0
        for i, o in enumerate(s.objects):
            for p in s.objects[:i]:
                assert _disc_overlap((o.cx, o.cy, o.radius), (p.cx, p.cy, p.radius)) <= 0.15 + 1e-9
    assert counts == {1, 2, 3, 4}


def test_no_placement_breaks_the_overlap_limit_even_when_the_scene_is_crowded():
    # No overlap at all with four objects: some scenes find no room for every object within the draws.
    world = ShapesWorld(min_objects=4, max_objects=4, max_overlap=0.0, seed=3)
    counts = []
    for s in world.scenes(400):
        counts.append(len(s.objects))
        for i, o in enumerate(s.objects):
            for p in s.objects[:i]:
                assert _disc_overlap((o.cx, o.cy, o.radius), (p.cx, p.cy, p.radius)) == 0
        # The caption names the objects placed, and no other (each colour is one object's).
        assert {c for c in COLORS if re.search(rf"\b{c}\b", s.caption)} == {o.color for o in s.objects}
    assert min(counts) >= 1 and 0 < counts.count(3) + counts.count(2) < 400 and counts.count(4) > 300


def test_caption_names_every_object_in_order():
    spec = ShapesWorld(seed=0).scene(0)
    assert spec.caption == ("a small blue hexagon, a purple cross, a large orange circle and a small green triangle"
                            " on a striped background")


def test_visible_masks_are_disjoint_and_show_their_colour(rendered):
    specs, images, masks = rendered
    for s, img, m in zip(specs, images, masks):
        assert m.shape == (len(s.objects), 64, 64)
        assert int(m.sum(0).max()) <= 1
        for k, o in enumerate(s.objects):
            if m[k].sum() == 0:
                continue
            pix = img[m[k]].float()
            exact = (pix == torch.tensor(COLORS[o.color], dtype=torch.float32)).all(-1).float().mean()
            assert exact > 0.6  # the rest are anti-aliased edge pixels
        background = ~m.any(0)
        assert background.any()


def test_later_objects_occlude_earlier_ones():
    from freeatm_hf.toy.world import ObjectSpec, SceneSpec

    big = ObjectSpec("square", "red", "large", 0.5, 0.5, 0.28, 0.0)
    small = ObjectSpec("circle", "blue", "small", 0.5, 0.5, 0.1, 0.0)
    spec = SceneSpec((big, small), "plain", ((200, 200, 200), (120, 120, 120)), 0.0)
    img, (m,) = render([spec])
    assert tuple(img[0, 32, 32].tolist()) == COLORS["blue"]
    assert not m[0, 32, 32] and m[1, 32, 32]
    # A circle of radius 0.1·64 covers about π·6.4² ≈ 129 pixels.
    assert 110 < int(m[1].sum()) < 150


def test_batched_render_equals_one_at_a_time(rendered):
    specs, images, masks = rendered
    for i in (0, 7, 20):
        img, (m,) = render([specs[i]])
        assert torch.equal(img[0], images[i]) and torch.equal(m, masks[i])


def test_rendered_dataset_round_trips_through_parquet(tmp_path):
    from datasets import load_dataset

    from freeatm_hf.toy.dataset import shapes_dataset

    ds = shapes_dataset(6, seed=3)
    (tmp_path / "data").mkdir()
    ds.to_parquet(str(tmp_path / "data" / "train-0.parquet"))
    back = load_dataset(str(tmp_path), split="train")
    world = ShapesWorld(seed=3)
    _, masks = world.render(world.scenes(6))
    for row, spec, m in zip(back, world.scenes(6), masks):
        assert row["caption"] == spec.caption and [o["name"] for o in row["objects"]] == [o.name for o in spec.objects]
        for o, mk in zip(row["objects"], m):
            assert np.array_equal(np.asarray(o["mask"]) > 0, mk.numpy())


def test_a_lone_circle_renders_as_its_supersampled_disc():
    """The documented rendering, computed here with numpy: each pixel's four sub-samples at the centres of a 2×
    grid, the image their average (rounded), the mask where at least two of the four fall in the disc."""
    from freeatm_hf.toy.world import ObjectSpec, SceneSpec

    size, tone, red = 32, np.array([200, 200, 200]), np.array(COLORS["red"])
    circle = ObjectSpec("circle", "red", "medium", 0.43, 0.57, 0.19, 1.0)
    img, (m,) = render([SceneSpec((circle,), "plain", ((200, 200, 200), (120, 120, 120)), 0.0)], size=size)
    sub = (np.arange(2 * size) + 0.5) / (2 * size)
    inside = ((sub[None, :] - 0.43) ** 2 + (sub[:, None] - 0.57) ** 2 <= 0.19**2)
    count = inside.reshape(size, 2, size, 2).sum((1, 3))
    np.testing.assert_array_equal(m[0].numpy(), count >= 2)
    colour = tone + (red - tone) * count[..., None] / 4
    np.testing.assert_array_equal(img[0].numpy(), np.round(colour).astype(np.uint8))


def test_objects_lie_inside_the_image_and_their_boxes_bound_their_masks(rendered):
    from freeatm_hf.toy.world import boxes

    specs, _, masks = rendered
    for s, m in zip(specs, masks):
        for o, mk in zip(s.objects, m):
            assert o.radius <= o.cx <= 1 - o.radius and o.radius <= o.cy <= 1 - o.radius
            if mk.any():
                ys, xs = np.nonzero(mk.numpy())
                assert boxes(mk) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert boxes(torch.zeros(4, 4, dtype=torch.bool)) is None


def test_a_pixel_split_evenly_between_two_objects_is_the_front_ones():
    """Two squares meeting in the middle of pixel column 16 (sub-samples 32 | 33 of 64): two of its four
    sub-samples each, a tie, which the front (later) object wins."""
    from freeatm_hf.toy.world import ObjectSpec, SceneSpec

    edge, half = 33 / 64, 0.7 * 0.2  # a square's half side is 0.7 of its radius
    back = ObjectSpec("square", "red", "medium", edge - half, 0.5, 0.2, 0.0)
    front = ObjectSpec("square", "blue", "medium", edge + half, 0.5, 0.2, 0.0)
    img, (m,) = render([SceneSpec((back, front), "plain", ((200, 200, 200), (120, 120, 120)), 0.0)], size=32)
    rows = slice(12, 20)
    assert m[1, rows, 16].all() and not m[0, rows, 16].any()
    assert m[0, rows, 15].all() and m[1, rows, 17].all()
    mixed = (np.array(COLORS["red"]) + np.array(COLORS["blue"])) / 2
    assert (img[0, rows, 16].numpy() == np.round(mixed)).all()


def test_a_square_has_its_corners_on_the_circumcircle_and_captions_take_an_before_vowels():
    """A square of radius r has its corners at about 0.99·r: side about 2·0.99·r/√2. And "an orange square", "a small
    orange circle"."""
    from freeatm_hf.toy.world import ObjectSpec, SceneSpec

    square = ObjectSpec("square", "orange", "medium", 0.5, 0.5, 0.25, 0.0)
    spec = SceneSpec((square,), "plain", ((200, 200, 200), (120, 120, 120)), 0.0)
    _, (m,) = render([spec], size=64)
    side = 2 * 0.99 / np.sqrt(2) * 0.25 * 64
    assert abs(int(m[0].sum()) - side**2) < 0.05 * side**2
    # An equilateral triangle of circumradius r: area 3·√3/4·r².
    triangle = SceneSpec((ObjectSpec("triangle", "red", "medium", 0.5, 0.5, 0.25, 0.0),), "plain", spec.bg_colors, 0.0)
    _, (m,) = render([triangle], size=64)
    area = 3 * np.sqrt(3) / 4 * (0.25 * 64) ** 2
    assert abs(int(m[0].sum()) - area) < 0.05 * area
    assert spec.caption == "an orange square on a plain background"
    small = SceneSpec((ObjectSpec("circle", "orange", "small", 0.5, 0.5, 0.1, 0.0),), "plain", spec.bg_colors, 0.0)
    assert small.caption == "a small orange circle on a plain background"


def test_an_empty_batch_renders_to_no_image():
    images, masks = render([], size=16)
    assert images.shape == (0, 16, 16, 3) and images.dtype == torch.uint8 and masks == []


@pytest.mark.parametrize("kwargs, says", [({"size": 0}, "size 0"), ({"seed": -1}, "seed -1")])
def test_a_world_that_cannot_render_is_refused_by_name(kwargs, says):
    with pytest.raises(ValueError, match=says):
        ShapesWorld(**kwargs)

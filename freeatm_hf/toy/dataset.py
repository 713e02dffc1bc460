"""The rendered shapes world as a `datasets` dataset: the "real data" of the toy world, with exact masks."""

from datasets import Dataset, Features, Image, List, Value

from .world import ShapesWorld, boxes

FEATURES = Features({
    "image": Image(),
    "caption": Value("string"),
    "objects": List({
        "name": Value("string"),
        "shape": Value("string"),
        "color": Value("string"),
        "size": Value("string"),
        "mask": Image(),
        "bbox": List(Value("float32")),
    }),
    "seed": Value("int64"),
})


def rendered_rows(world: ShapesWorld, n: int, start: int = 0, batch: int = 64):
    from PIL import Image as PILImage

    for b in range(start, start + n, batch):
        specs = world.scenes(min(batch, start + n - b), start=b)
        images, masks = world.render(specs)
        for j, (spec, img, m) in enumerate(zip(specs, images, masks)):
            yield {
                "image": PILImage.fromarray(img.numpy()),
                "caption": spec.caption,
                "objects": [{"name": o.name, "shape": o.shape, "color": o.color, "size": o.size,
                             "mask": PILImage.fromarray(m[k].numpy().astype("uint8") * 255, mode="L"),
                             "bbox": boxes(m[k])} for k, o in enumerate(spec.objects)],
                "seed": b + j,
            }


def shapes_dataset(n: int, start: int = 0, seed: int = 0, size: int = 64, **world_kwargs) -> Dataset:
    """`n` rendered scenes (scene ids `start..start+n-1` of the world with `seed`) with exact visible masks."""
    world = ShapesWorld(size=size, seed=seed, **world_kwargs)
    return Dataset.from_list(list(rendered_rows(world, n, start)), features=FEATURES)

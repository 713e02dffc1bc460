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


def write_labelled_shapes(folder, num_train: int = 300, num_test: int = 150, size: int = 64, seed: int = 0):
    """Rendered single-object scenes labelled by shape, as a Hub-layout folder with train and test splits: the
    toy world's downstream classification task (chance = 1/6)."""
    from pathlib import Path

    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    from .world import SHAPES

    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", num_train, seed), ("test", num_test, seed + 1)):
        world = ShapesWorld(size=size, seed=s, min_objects=1, max_objects=1)
        rows = [{"image": r["image"], "label": SHAPES.index(r["objects"][0]["shape"])}
                for r in rendered_rows(world, n)]
        ds = Dataset.from_list(rows).cast_column("label", ClassLabel(names=list(SHAPES))).cast_column("image", ImageFeature())
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Write the labelled shapes classification set (train/test).")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_train", type=int, default=300)
    p.add_argument("--num_test", type=int, default=150)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    print(write_labelled_shapes(a.output_dir, a.num_train, a.num_test, a.size))

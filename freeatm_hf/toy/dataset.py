"""The rendered shapes world as a `datasets` dataset: the "real data" of the toy world, with exact masks, and
its downstream tasks (classification, semantic segmentation, COCO-style instance segmentation) as folders."""

import json

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
                             "mask": PILImage.fromarray(m[k].numpy().astype("uint8") * 255),
                             "bbox": boxes(m[k])} for k, o in enumerate(spec.objects)],
                "seed": b + j,
            }


def shapes_dataset(n: int, start: int = 0, seed: int = 0, size: int = 64, **world_kwargs) -> Dataset:
    """`n` rendered scenes (scene ids `start..start+n-1` of the world with `seed`) with exact visible masks."""
    if n < 0:
        raise ValueError(f"n {n}: a number of scenes, 0 or more")
    world = ShapesWorld(size=size, seed=seed, **world_kwargs)
    rows = list(rendered_rows(world, n, start))
    # `from_list` infers its columns from the rows, and with none it has none to match FEATURES against.
    return Dataset.from_list(rows, features=FEATURES) if rows else Dataset.from_dict({k: [] for k in FEATURES},
                                                                                      features=FEATURES)


PERFECT_SCENES = "none: rendered scenes with exact masks"


def write_perfect_scenes(folder, n: int, seed: int = 0, size: int = 64, rows_per_shard: int = 512):
    """Rendered scenes in the *generator's* dataset schema, each object's `attention` its exact visible mask:
    what a perfect generator with perfect masks would write. Pretraining on it bounds what better generated
    data could give (`python -m freeatm_hf.toy.table1 --perfect_scenes`). Hidden objects are left out, as
    a generator's drawn-object filter would; `attention_peak` is null (no attention was captured).

    Written by the generator's own `DatasetWriter`: same shard layout and `.freeatm/settings.json`, and a
    re-run skips finished shards."""
    import numpy as np

    from ..generate.schema import dataset_features
    from ..generate.writer import DatasetWriter
    from .world import SHAPES

    world = ShapesWorld(size=size, seed=seed)
    writer = DatasetWriter(folder, dataset_features(list(SHAPES)),
                           {"pipeline": PERFECT_SCENES, "num_images": n, "seed": seed, "size": size,
                            "rows_per_shard": rows_per_shard}, n, rows_per_shard)
    writer.clean_tmp()
    for shard in writer.pending():
        rows = []
        for r in rendered_rows(world, shard.stop - shard.start, start=shard.start):
            objects = [{"name": o["name"], "token_indices": [], "attention": o["mask"], "bbox": o["bbox"],
                        "area": float(np.asarray(o["mask"]).mean() / 255), "attention_peak": None}
                       for o in r["objects"] if o["bbox"] is not None]
            rows.append({"image": r["image"], "prompt": r["caption"], "label": SHAPES.index(r["objects"][0]["shape"]),
                         "objects": objects, "truncated_objects": [], "seed": r["seed"]})
        writer.write(shard, rows)
    return writer.root


def write_labelled_shapes(folder, num_train: int = 300, num_test: int = 150, size: int = 64, seed: int = 0):
    """Rendered single-object scenes labelled by shape, as a Hub-layout folder with train and test splits: the
    toy world's downstream classification task (chance = 1/6)."""
    from pathlib import Path

    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    from .world import SHAPES

    _check_splits(num_train=num_train, num_test=num_test)
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", num_train, seed), ("test", num_test, seed + 1)):
        world = ShapesWorld(size=size, seed=s, min_objects=1, max_objects=1)
        rows = [{"image": r["image"], "label": SHAPES.index(r["objects"][0]["shape"])}
                for r in rendered_rows(world, n)]
        ds = Dataset.from_list(rows).cast_column("label", ClassLabel(names=list(SHAPES))).cast_column("image", ImageFeature())
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def _label_maps(masks, specs) -> list:
    """Per-scene semantic label maps: 0 = background, 1 + shape index where an object is visible."""
    import numpy as np

    from .world import SHAPES

    maps = []
    for m, spec in zip(masks, specs, strict=True):
        lab = np.zeros(m.shape[1:], dtype=np.uint8)
        for k, o in enumerate(spec.objects):
            lab[m[k].numpy()] = 1 + SHAPES.index(o.shape)
        maps.append(lab)
    return maps


def _check_splits(**sizes):
    """A downstream task needs rows in both splits: an empty one failed deep in `datasets` or the renderer, with a
    message that named neither split nor argument."""
    for name, n in sizes.items():
        if n < 1:
            raise ValueError(f"{name} {n}: each split needs at least one scene")


def write_shapes_segmentation(folder, num_train: int = 200, num_test: int = 100, size: int = 64, seed: int = 0):
    """Rendered scenes with semantic label maps (`annotation`: 0 background, 1–6 the shapes) as a Hub-layout
    folder with train and test splits, in the column layout of scene_parse_150 / ADE20K: the toy world's
    semantic segmentation task for `freeatm eval segment`."""
    from pathlib import Path

    from PIL import Image as PILImage

    from .world import SHAPES

    _check_splits(num_train=num_train, num_test=num_test)
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    features = Features({"image": Image(), "annotation": Image()})
    for split, n, s in (("train", num_train, seed), ("test", num_test, seed + 1)):
        world = ShapesWorld(size=size, seed=s)
        specs = world.scenes(n)
        images, masks = world.render(specs)
        rows = [{"image": PILImage.fromarray(img.numpy()), "annotation": PILImage.fromarray(lab)}
                for img, lab in zip(images, _label_maps(masks, specs), strict=True)]
        Dataset.from_list(rows, features=features).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    (folder / "id2label.json").write_text(json.dumps({0: "background", **{i + 1: n for i, n in enumerate(SHAPES)}}))
    return folder


def write_shapes_coco(folder, num_train: int = 200, num_test: int = 100, size: int = 64, seed: int = 0):
    """Rendered scenes as a COCO-style instance-segmentation set: `images/<split>/*.png` and
    `annotations/<split>.json` (boxes in xywh, masks as RLE, categories = the shapes), for `freeatm eval detect`
    and anything else that reads COCO."""
    from pathlib import Path

    import numpy as np
    from PIL import Image as PILImage
    from pycocotools import mask as mask_utils

    from .world import SHAPES

    _check_splits(num_train=num_train, num_test=num_test)
    folder = Path(folder)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPES)]
    for split, n, s in (("train", num_train, seed), ("test", num_test, seed + 1)):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        world = ShapesWorld(size=size, seed=s)
        specs = world.scenes(n)
        images, masks = world.render(specs)
        coco = {"images": [], "annotations": [], "categories": categories}
        for i, (img, m, spec) in enumerate(zip(images, masks, specs, strict=True)):
            name = f"{i:06d}.png"
            PILImage.fromarray(img.numpy()).save(folder / "images" / split / name)
            coco["images"].append({"id": i, "file_name": name, "height": size, "width": size})
            for k, o in enumerate(spec.objects):
                binary = np.asfortranarray(m[k].numpy().astype(np.uint8))
                if not binary.any():
                    continue  # fully hidden
                rle = mask_utils.encode(binary)
                x0, y0, x1, y1 = boxes(m[k])
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": i, "category_id": 1 + SHAPES.index(o.shape),
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(mask_utils.area(rle)), "iscrowd": 0,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
        (folder / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return folder


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m freeatm_hf.toy.dataset",
                                description="Write the labelled shapes classification set (train/test splits of "
                                            "single-object scenes labelled by shape, six classes): an offline "
                                            "dataset for `freeatm eval knn` and `eval finetune`.")
    p.add_argument("--output_dir", required=True, help="the dataset folder to write")
    p.add_argument("--num_train", type=int, default=300, help="training rows (default: 300)")
    p.add_argument("--num_test", type=int, default=150, help="test rows (default: 150)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    a = p.parse_args()
    print(write_labelled_shapes(a.output_dir, a.num_train, a.num_test, a.size))

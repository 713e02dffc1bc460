"""Column names and `datasets` Features of a generated dataset (one place for both writer and readers)."""

from datasets import ClassLabel, Features, Image, List, Value

IMAGE, PROMPT, LABEL, OBJECTS, TRUNCATED, SEED = "image", "prompt", "label", "objects", "truncated_objects", "seed"


def dataset_features(label_names: list[str] | None = None) -> Features:
    return Features({
        IMAGE: Image(),
        PROMPT: Value("string"),
        LABEL: ClassLabel(names=label_names) if label_names else Value("int32"),
        OBJECTS: List({
            "name": Value("string"),
            "token_indices": List(Value("int32")),
            "attention": Image(),
            "bbox": List(Value("float32")),
            "area": Value("float32"),
            "attention_peak": Value("float32"),
        }),
        TRUNCATED: List(Value("string")),
        SEED: Value("int64"),
    })


def output_to_rows(out) -> list[dict]:
    """Rows of a `GenerationOutput`, in the schema above."""
    from PIL import Image as PILImage

    rows = []
    for image, prompt, seed, objects, cut in zip(out.images, out.prompts, out.seeds, out.objects, out.truncated):
        rows.append({
            IMAGE: image if isinstance(image, PILImage.Image) else PILImage.fromarray(image),
            PROMPT: prompt.text,
            LABEL: prompt.label,
            OBJECTS: [{
                "name": o.name,
                "token_indices": list(o.token_indices),
                "attention": PILImage.fromarray(o.attention_uint8, mode="L"),
                "bbox": list(o.mask.bbox) if o.mask.bbox is not None else None,
                "area": o.mask.area,
                "attention_peak": o.attention_peak,
            } for o in objects],
            TRUNCATED: list(cut),
            SEED: seed,
        })
    return rows


def encode_images(rows: list[dict]) -> list[dict]:
    """The rows with their image and maps encoded as `datasets.Image` stores them (`{"bytes", "path"}`, by its
    own encoder: the bytes a shard of PIL rows would hold), in place. A shard in the making then holds
    compressed bytes, not pixels, and the encoding runs beside generation instead of in the one writer."""
    encode = Image().encode_example
    for row in rows:
        row[IMAGE] = encode(row[IMAGE])
        for o in row[OBJECTS]:
            o["attention"] = encode(o["attention"])
    return rows

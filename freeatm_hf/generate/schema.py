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
            IMAGE: as_pil(image),
            PROMPT: prompt.text,
            LABEL: prompt.label,
            OBJECTS: [{
                "name": o.name,
                "token_indices": list(o.token_indices),
                "attention": PILImage.fromarray(o.attention_uint8),
                "bbox": list(o.mask.bbox) if o.mask.bbox is not None else None,
                "area": o.mask.area,
                "attention_peak": o.attention_peak,
            } for o in objects],
            TRUNCATED: list(cut),
            SEED: seed,
        })
    return rows


def as_pil(image):
    """An image of a pipeline's output as PIL: `output_type` "pil", "np" (float HWC in [0, 1]) or "pt" (float CHW),
    made 8-bit as diffusers' own `numpy_to_pil` does; latents are refused (a dataset stores pictures)."""
    import numpy as np
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image as PILImage

    if isinstance(image, PILImage.Image):
        return image
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor of shape {tuple(image.shape)} is no picture (channels first, 1 or 3 "
                             "channels): latents can't be stored, generate with output_type 'pil', 'np' or 'pt'")
        image = VaeImageProcessor.pt_to_numpy(image[None].float().cpu())[0]
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"an image array of shape {image.shape} is no picture (height, width, 1 or 3 channels)")
    if image.dtype == np.uint8:
        return PILImage.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"an image array of {image.dtype} is neither 8-bit nor float in [0, 1]")
    if not np.isfinite(image).all():  # diffusers' own PIL output turns these black, unnoticed
        raise ValueError("an image holds NaN or infinite values (a VAE that overflowed in float16?)")
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f"an image array in [{image.min()}, {image.max()}] is neither 8-bit nor float in [0, 1]")
    return VaeImageProcessor.numpy_to_pil(image[None])[0]


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

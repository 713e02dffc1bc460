"""A picture of what the generator gives away: held-out scenes from a pipeline, each row the generated image,
its masks and one attention heat map per named object, under the prompt. Objects below the model's recommended
`attention_peak` cut are labelled "not drawn?" in grey.

    python -m freeatm_hf.toy.showcase --output freeatm_hf/toy/assets/shapes-t2i/grid.png
"""

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

CELL = 160  # pixels per panel
TEXT_H = 16
MAX_OBJECTS = 4


def showcase(pipe, num_scenes: int = 6, seed: int = 777, num_inference_steps: int = 25,
             guidance_scale: float | None = None) -> Image.Image:
    import numpy as np

    from ..data.masks import likely_drawn
    from ..generate import FreeATMGenerator
    from ..generate.pipelines import pipeline_recommendation
    from ..viz import color, heatmap, overlay
    from .world import ShapesWorld

    gen = FreeATMGenerator(pipe, guidance_scale=guidance_scale)  # None: the model's recommendation
    rec = pipeline_recommendation(pipe) or {}
    min_peak = rec.get("min_attention_peak")
    specs = ShapesWorld(seed=seed).scenes(num_scenes)  # the mask evaluation's held-out test scenes
    out = gen([s.prompt() for s in specs], seeds=list(range(num_scenes)),
              num_inference_steps=num_inference_steps)
    width = CELL * (2 + MAX_OBJECTS)
    canvas = Image.new("RGB", (width, num_scenes * (CELL + TEXT_H)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (image, objs, spec) in enumerate(zip(out.images, out.objects, specs, strict=True)):
        y = r * (CELL + TEXT_H)
        draw.text((4, y + 2), spec.caption, fill=(0, 0, 0))
        y += TEXT_H
        scale = max(1, CELL // image.width)
        rows = [{"name": o.name, "attention": Image.fromarray(o.attention_uint8)} for o in objs]
        canvas.paste(image.resize((CELL, CELL), Image.NEAREST), (0, y))
        canvas.paste(overlay(image, rows, threshold=gen.threshold, scale=scale, labels=False).resize((CELL, CELL)),
                     (CELL, y))
        for k, o in enumerate(objs[:MAX_OBJECTS]):
            x = CELL * (2 + k)
            canvas.paste(heatmap(np.asarray(rows[k]["attention"]), (CELL, CELL)), (x, y))
            # An object whose attention peak says it was likely not drawn gets a grey label.
            drawn = likely_drawn(o.attention_peak, min_peak)
            draw.rectangle([x, y, x + CELL - 1, y + 11], fill=color(k) if drawn else (128, 128, 128))
            draw.text((x + 3, y), o.name if drawn else f"{o.name}: not drawn?", fill=(255, 255, 255))
    return canvas


def main(argv=None):
    import torch

    from ..generate.pipelines import load_pipeline

    p = argparse.ArgumentParser(prog="python -m freeatm_hf.toy.showcase", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True)
    p.add_argument("--pipeline", default="shapes")
    p.add_argument("--num_scenes", type=int, default=6)
    p.add_argument("--num_inference_steps", type=int, default=25)
    args = p.parse_args(argv)
    pipe = load_pipeline(args.pipeline, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    img = showcase(pipe, args.num_scenes, num_inference_steps=args.num_inference_steps)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    img.save(args.output)
    folder = Path(args.pipeline)
    if Path(args.output).resolve() == (folder / "grid.png").resolve() and (folder / "model_index.json").is_file():
        from .model import update_model_folder

        update_model_folder(folder)  # the card shows the grid once it exists (it is drawn after the evaluation)
    print(args.output)


if __name__ == "__main__":
    main()

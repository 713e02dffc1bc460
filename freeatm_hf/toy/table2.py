"""The paper's Table 2 at toy scale: do position prompts ("The red circle is in block 1.") taught in BLIP
pretraining help image-text retrieval where *where* matters? Same model, scenes and budget; only the
prompts differ.

    python -m freeatm_hf.toy.table2 --output_dir outputs/table2          # shapes model, tiny BLIP, CPU ok

1. generate scenes with free attention masks (or reuse `--scenes`, e.g. Table 1's);
2. pretrain a small BLIP twice from scratch: `--prompts position` (Free-ATM) and `--prompts none` (baseline);
3. fine-tune each for retrieval (ITC + ITM) on rendered scenes whose captions say where things are
   ("a red circle at the top left and a small blue star at the bottom"), as the paper fine-tunes on COCO;
4. test on held-out rendered scenes *and their mirror images* with mirrored captions: an image and its
   mirror hold the same objects, so only position grounding tells "left" from "right". TR@1 / IR@1.

Writes `table2.json` and `table2.md` into `output_dir`.
"""

import argparse
import json
import logging
from pathlib import Path

import torch

from .tables import (
    ablation_cut,
    add_filter_arguments,
    cell,
    keep_recipe,
    pretrain_once,
    pretraining_recipe,
    reusable,
    summarize,
)

logger = logging.getLogger(__name__)

ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")


def where(cx: float, cy: float) -> str:
    """'at the top left', 'on the right', 'in the center', 'at the bottom' … for a centre in [0, 1]²."""
    row, col = ROWS[min(int(cy * 3), 2)], COLS[min(int(cx * 3), 2)]
    if row == "middle":
        return "in the center" if col == "center" else f"on the {col}"
    return f"at the {row}" if col == "center" else f"at the {row} {col}"


def spatial_caption(spec, mirror: bool = False) -> str:
    from .world import enumerate_phrases, with_article

    return enumerate_phrases([f"{with_article(o.phrase)} {where(1 - o.cx if mirror else o.cx, o.cy)}"
                              for o in spec.objects])


def rendered_retrieval_set(folder: Path, split: str, seed: int, n: int, mirrors: bool) -> Path:
    """Rendered scenes with spatial captions as a Hub-layout folder (`image`, `caption`); with `mirrors`, each
    scene whose mirrored caption differs is followed by its mirror image and mirrored caption."""
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    from .world import ShapesWorld

    world = ShapesWorld(seed=seed)
    specs = world.scenes(n)
    images, _ = world.render(specs)
    rows = []
    for spec, img in zip(specs, images, strict=True):
        rows.append({"image": PILImage.fromarray(img.numpy()), "caption": spatial_caption(spec)})
        if mirrors and spatial_caption(spec, mirror=True) != rows[-1]["caption"]:
            rows.append({"image": PILImage.fromarray(img.flip(1).numpy()),
                         "caption": spatial_caption(spec, mirror=True)})
    (folder / "data").mkdir(parents=True, exist_ok=True)
    ds = Dataset.from_list(rows, features=Features({"image": Image(), "caption": Value("string")}))
    ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def make_parser():
    p = argparse.ArgumentParser(prog="python -m freeatm_hf.toy.table2", description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--scenes", default=None, help="a generated dataset to reuse (default: generate one)")
    p.add_argument("--pipeline", default=None, help="generator (default: the shapes model when shipped)")
    p.add_argument("--num_images", type=int, default=None, help="scenes to generate (default 1024)")
    p.add_argument("--num_inference_steps", type=int, default=None, help="generation steps (default 25)")
    p.add_argument("--model_size", default="tiny", help="tiny or base (BLIP ViT-B)")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_steps", type=int, default=300, help="pretraining steps")
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--num_finetune", type=int, default=500, help="rendered scenes for retrieval fine-tuning")
    p.add_argument("--finetune_steps", type=int, default=150)
    p.add_argument("--finetune_lr", type=float, default=1e-4)
    p.add_argument("--num_test", type=int, default=100, help="rendered test scenes (plus their mirrors)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="default: cuda when available (pick a GPU with CUDA_VISIBLE_DEVICES: training uses every visible one)")
    p.add_argument("--seed", type=int, default=None, help="generation seed (default 0)")
    p.add_argument("--pretrain_seeds", type=int, nargs="+", default=[0],
                   help="one pretraining + fine-tuning run per seed and prompt setting; the table shows mean ± std")
    add_filter_arguments(p)
    return p


METRICS = ("tr@1", "ir@1", "tr@5", "ir@5", "tr@10", "ir@10")


def main(argv=None) -> dict:
    from ..generate import GenerateConfig
    from ..generate.run import generate_dataset

    args = make_parser().parse_args(argv)
    from ..cli import setup_logging

    setup_logging()
    out = Path(args.output_dir)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    scenes = Path(args.scenes) if args.scenes else out / "scenes"
    generation = {"pipeline": "default", "num_images": 1024, "num_inference_steps": 25, "seed": 0}
    if args.scenes:
        given = [f"--{k}" for k in generation if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: for scenes this run generates; --scenes reuses scenes already made")
    else:
        generate_dataset(GenerateConfig(output_dir=str(scenes), device=args.device, batch_size=32,
                                        min_attention_peak=args.min_attention_peak,
                                        **{k: v if getattr(args, k) is None else getattr(args, k)
                                           for k, v in generation.items()}))
    pipeline = json.loads((scenes / ".freeatm" / "settings.json").read_text())["pipeline"]
    finetune_set = rendered_retrieval_set(out / "finetune_set", "train", seed=41_000, n=args.num_finetune,
                                          mirrors=True)
    test_set = rendered_retrieval_set(out / "test_set", "test", seed=42_000, n=args.num_test, mirrors=True)
    # With --scenes, a cut given here is applied in training (the scenes' card holds the one they were made with).
    train_cut = args.min_attention_peak if args.scenes else None
    cut = ablation_cut(scenes, args.ablate_drawn_filter) if train_cut is None else train_cut
    if args.ablate_drawn_filter and not cut:
        raise ValueError("--ablate_drawn_filter with --min_attention_peak 0: there is no filter to ablate")
    runs = {"none": [], "position": [], **({"position-all": []} if args.ablate_drawn_filter else {})}
    for seed in args.pretrain_seeds:
        for arm in runs:
            runs[arm].append(pretrain_and_test(args, scenes, out, arm, seed, device, finetune_set, test_set,
                                               train_cut))
    filtered = f", objects with attention_peak >= {cut:.4g}" if cut else ""
    names = {"none": "BLIP, plain captions (baseline)", "position": f"BLIP + position prompts (Free-ATM{filtered})",
             "position-all": "BLIP + position prompts for every named object (no drawn filter)"}
    rows = [summarize(names[k], v, METRICS) for k, v in runs.items()]
    result = {"generator": pipeline, "pretraining_scenes": str(scenes), "model_size": args.model_size,
              "image_size": args.image_size, "batch_size": args.batch_size, "pretraining_steps": args.max_steps,
              "pretrain_seeds": args.pretrain_seeds, "min_attention_peak": cut,
              "finetune": f"{args.finetune_steps} steps on {args.num_finetune} rendered scenes + mirrors",
              "test": f"{args.num_test} rendered scenes + their mirrors (mirrored captions)", "rows": rows}
    (out / "table2.json").write_text(json.dumps(result, indent=2))
    lines = ["| pretraining | " + " | ".join(k.upper() for k in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {r['pretraining']} | " + " | ".join(cell(r, k) for k in METRICS) + " |" for r in rows]
    (out / "table2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def pretrain_and_test(args, scenes: Path, out: Path, arm: str, seed: int, device: str, finetune_set: Path,
                      test_set: Path, train_cut: float | None = None) -> dict:
    """Pretrain BLIP for this arm ("none", "position", or "position-all": position prompts without the drawn
    filter), fine-tune it for retrieval, test it; a re-run skips what is already done with the same recipe."""
    from ..eval.cli import main as eval_main
    from ..train.cli import main as train_main

    suffix = f"-seed{seed}" if seed else ""
    prompts = arm.split("-")[0]
    cut = 0 if arm == "position-all" else train_cut
    pretraining = (["--prompts", prompts, "--model_size", args.model_size, "--image_size", str(args.image_size),
                    "--max_length", "72", "--per_device_train_batch_size", str(args.batch_size),
                    "--max_steps", str(args.max_steps), "--learning_rate", str(args.learning_rate),
                    "--weight_decay", "0.0", "--lr_scheduler_type", "cosine", "--warmup_steps", "0.05", "--logging_steps", "25",
                    "--save_strategy", "no", "--report_to", "none", "--dataloader_drop_last", "true",
                    "--seed", str(seed)]
                   # The baseline writes no position prompts: the cut is not its to read.
                   + (["--min_attention_peak", str(cut)] if cut is not None and prompts == "position" else []))
    retrieval = ["--k_test", "16", "--max_length", "48", "--batch_size", str(args.batch_size),
                 "--finetune_max_steps", str(args.finetune_steps), "--finetune_lr", str(args.finetune_lr)]
    recipe = pretraining_recipe(pretraining, scenes)
    # The scores also depend on the rendered fine-tuning and test sets, which each run writes anew.
    scoring = {**recipe, "retrieval": [*retrieval, "--num_finetune", str(args.num_finetune),
                                       "--num_test", str(args.num_test)]}
    run = out / f"blip-{arm}{suffix}"
    done = out / f"retrieval-{arm}{suffix}.json"
    scored = done.with_suffix(".recipe.json")
    if reusable(scored, scoring, done=done.is_file()):
        return {k: json.loads(done.read_text())[k] for k in METRICS}
    pretrain_once(train_main, "blip", scenes, run, recipe, cpu=device == "cpu")
    r = eval_main(["retrieval", "--model", str(run), "--dataset", str(test_set), "--split", "test", *retrieval,
                   "--finetune_split", "train", "--finetune_dir", str(out / f"blip-{arm}{suffix}-retrieval"),
                   "--finetune_dataset", str(finetune_set), "--output", str(done)]
                  + (["--device", "cpu"] if device == "cpu" else []))
    keep_recipe(scored, scoring)
    return {k: r[k] for k in METRICS}


if __name__ == "__main__":
    main()

"""The paper's Table 1 at toy scale: does attention pooling beat image-level contrastive learning on generated
multi-object scenes? Same backbone, data and budget; only `pooling` differs.

    python -m freeatm_hf.toy.table1 --output_dir outputs/table1                     # shapes model, CPU ok
    python -m freeatm_hf.toy.table1 --output_dir outputs/table1 --num_images 20000 --max_steps 3000   # GPU

1. generate `num_images` scenes with free attention masks (`freeatm generate`, resumable);
2. pretrain SimCLR twice on them, `--pooling image` (baseline) and `--pooling attention` (Free-ATM), plus
   a row for the untrained backbone (the floor);
3. evaluate each frozen backbone on rendered "real" scenes of the shapes world (exact pictures, never
   generated): multi-label linear probes for which shapes and which colours are present (macro mAP), and
   exact shape-set accuracy.

Writes `table1.json` and `table1.md` (the README table) into `output_dir`.
"""

import argparse
import json
import logging
from pathlib import Path

import torch

from .tables import ablation_cut, add_filter_arguments, cell, pretrain_once, pretraining_recipe, summarize

logger = logging.getLogger(__name__)


def make_parser():
    p = argparse.ArgumentParser(prog="python -m freeatm_hf.toy.table1", description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--pipeline", default=None, help="generator (default: the shapes model when shipped)")
    p.add_argument("--num_images", type=int, default=1024)
    p.add_argument("--num_inference_steps", type=int, default=None, help="generation steps (default 25)")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_steps", type=int, default=300)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--num_probe_train", type=int, default=1000, help="rendered scenes to fit the probe on")
    p.add_argument("--num_probe_test", type=int, default=500)
    p.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="default: cuda when available (pick a GPU with CUDA_VISIBLE_DEVICES: training uses every visible one)")
    p.add_argument("--seed", type=int, default=0, help="generation seed")
    p.add_argument("--color_strength", type=float, default=None,
                   help="SimCLR's colour jitter strength (default: SimCLR's own, 1.0)")
    p.add_argument("--pretrain_seeds", type=int, nargs="+", default=[0],
                   help="one pretraining run per seed and pooling; the table shows mean ± std over them")
    add_filter_arguments(p)
    p.add_argument("--perfect_scenes", action="store_true",
                   help="pretrain on rendered scenes with exact masks instead of generated ones: what a perfect "
                        "generator would give (the bound on what better generated data can change)")
    return p


def presence_targets(specs, attribute: str = "shape") -> torch.Tensor:
    """(scenes, classes) 0/1: which shapes (or colours) each scene holds."""
    from .world import COLORS, SHAPES

    names = list(SHAPES if attribute == "shape" else COLORS)
    t = torch.zeros(len(specs), len(names), dtype=torch.long)
    for i, s in enumerate(specs):
        for o in s.objects:
            t[i, names.index(getattr(o, attribute))] = 1
    return t


@torch.no_grad()
def rendered_features(backbone, specs, world, image_size: int, batch_size: int = 128, device="cpu") -> torch.Tensor:
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    backbone = backbone.to(device).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    feats = []
    for start in range(0, len(specs), batch_size):
        images, _ = world.render(specs[start : start + batch_size], device=device)
        x = images.permute(0, 3, 1, 2).float().div(255)
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
        f = backbone.forward_features((x - mean) / std)
        feats.append(f.mean((2, 3)).float().cpu())
    return torch.cat(feats)


def probe(backbone, args, device) -> dict:
    from ..eval.knn import multilabel_linear_probe, multilabel_scores
    from .world import ShapesWorld

    train_world, test_world = ShapesWorld(seed=31_000), ShapesWorld(seed=32_000)  # never used for generation
    tr, te = train_world.scenes(args.num_probe_train), test_world.scenes(args.num_probe_test)
    xtr = rendered_features(backbone, tr, train_world, args.image_size, device=device)
    xte = rendered_features(backbone, te, test_world, args.image_size, device=device)
    shapes = multilabel_scores(multilabel_linear_probe(xtr, presence_targets(tr), xte), presence_targets(te))
    colours = multilabel_scores(multilabel_linear_probe(xtr, presence_targets(tr, "color"), xte),
                                presence_targets(te, "color"))
    return {**shapes, "colour_map": colours["map"]}


COLUMNS = (("map", "shapes-present mAP"), ("colour_map", "colours-present mAP"),
           ("exact_set_accuracy", "exact shape-set accuracy"))


def main(argv=None) -> dict:
    from .. import models  # noqa: F401  (registers the Auto classes)
    from ..generate import GenerateConfig
    from ..generate.run import generate_dataset
    from ..models import SimCLRConfig, SimCLRModel
    from ..train.cli import main as train_main
    from ..train.contrastive import COLOR_STRENGTH
    from .dataset import write_perfect_scenes

    args = make_parser().parse_args(argv)
    from ..cli import setup_logging

    setup_logging()
    out = Path(args.output_dir)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.perfect_scenes:
        given = [f"--{k}" for k in ("pipeline", "num_inference_steps", "min_attention_peak") if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: for generated scenes; --perfect_scenes renders them (exact masks, "
                             "no attention peak to cut)")
        scenes = write_perfect_scenes(out / "perfect_scenes", args.num_images, seed=args.seed)  # resumes
    else:
        scenes = out / "scenes"
        generate_dataset(GenerateConfig(output_dir=str(scenes), pipeline=args.pipeline or "default",
                                        num_images=args.num_images, batch_size=32,
                                        num_inference_steps=25 if args.num_inference_steps is None else args.num_inference_steps,
                                        seed=args.seed, device=args.device,
                                        min_attention_peak=args.min_attention_peak))
    pipeline = json.loads((scenes / ".freeatm" / "settings.json").read_text())["pipeline"]
    cut = ablation_cut(scenes, args.ablate_drawn_filter)
    arms = ["image", "attention"] + (["attention-all"] if args.ablate_drawn_filter else [])
    runs = {"none": [], **{arm: [] for arm in arms}}
    for seed in args.pretrain_seeds:
        torch.manual_seed(seed)
        untrained = SimCLRModel(SimCLRConfig(backbone=args.backbone, proj_hidden_dim=512, proj_dim=128))
        runs["none"].append(probe(untrained.backbone, args, device))
        for arm in arms:
            runs[arm].append(pretrain_and_probe(args, scenes, out, arm, seed, device, train_main))
    filtered = f", objects with attention_peak >= {cut:.4g}" if cut else ""
    names = {"none": "none (random init)", "image": "SimCLR, image-level (baseline)",
             "attention": f"SimCLR, attention-pooled (Free-ATM{filtered})",
             "attention-all": "SimCLR, attention-pooled, every named object (no drawn filter)"}
    rows = [summarize(names[k], v, [key for key, _ in COLUMNS]) for k, v in runs.items()]
    result = {"generator": pipeline, "num_images": args.num_images, "backbone": args.backbone,
              "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.max_steps,
              "pretrain_seeds": args.pretrain_seeds, "min_attention_peak": cut,
              "color_strength": COLOR_STRENGTH["simclr"] if args.color_strength is None else args.color_strength,
              "probe": f"multi-label linear probes, {args.num_probe_train} / {args.num_probe_test} rendered scenes",
              "rows": rows}
    (out / "table1.json").write_text(json.dumps(result, indent=2))
    lines = ["| pretraining | " + " | ".join(title for _, title in COLUMNS) + " |", "|---|---|---|---|"]
    lines += [f"| {r['pretraining']} | " + " | ".join(cell(r, k, scale=100) for k, _ in COLUMNS) + " |" for r in rows]
    (out / "table1.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def pretrain_and_probe(args, scenes: Path, out: Path, arm: str, seed: int, device: str, train_main) -> dict:
    """Pretrain SimCLR for this arm ("image", "attention", or "attention-all": attention pooling without the
    drawn filter) and seed (skipped when its folder is complete), then probe it."""
    from transformers import AutoModel

    pooling = arm.split("-")[0]
    run = out / (f"simclr-{arm}" + (f"-seed{seed}" if seed else ""))
    flags = (["--backbone", args.backbone,
              "--pooling", pooling, "--image_size", str(args.image_size), "--proj_hidden_dim", "512",
              "--proj_dim", "128", "--optimizer", "adamw", "--learning_rate", str(args.learning_rate),
              "--weight_decay", "1e-4", "--per_device_train_batch_size", str(args.batch_size),
              "--max_steps", str(args.max_steps), "--lr_scheduler_type", "cosine", "--warmup_steps", "0.05",
              "--logging_steps", "25", "--save_strategy", "no", "--report_to", "none",
              "--dataloader_drop_last", "true", "--seed", str(seed), "--dataloader_num_workers", "0"]
             + (["--min_attention_peak", "0"] if arm == "attention-all" else [])
             + (["--color_strength", str(args.color_strength)] if args.color_strength is not None else []))
    pretrain_once(train_main, "simclr", scenes, run, pretraining_recipe(flags, scenes), cpu=device == "cpu")
    return probe(AutoModel.from_pretrained(run).backbone, args, device)


if __name__ == "__main__":
    main()

"""freeatm eval: score things.

    freeatm eval masks --pipeline shapes --num_scenes 200 --output outputs/mask_eval.json [--sweep]
    freeatm eval knn --model outputs/simclr-atm --dataset <id or folder> --train_split train --test_split test
    freeatm eval finetune --model outputs/mae-atm --dataset <id or folder> --output_dir outputs/ft
    freeatm eval segment --model outputs/simclr-atm --dataset <image + label-map id or folder> --output_dir outputs/seg
    freeatm eval detect --model outputs/moco-atm --dataset <COCO-style folder> --output_dir outputs/det
    freeatm eval retrieval --model outputs/blip-atm --dataset <image-caption id or folder> --split test
"""

import argparse
import json
import logging
from pathlib import Path

from ..data.rows import rgb

logger = logging.getLogger(__name__)

EVALUATIONS = ("masks", "knn", "finetune", "segment", "detect", "retrieval")


def make_parser():
    from ..cli import HelpFormatter

    p = argparse.ArgumentParser(prog="freeatm eval", description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="what", required=True, metavar="{" + ",".join(EVALUATIONS) + "}")

    def add(name: str, help: str):  # the help line is also the evaluation's --help description; defaults shown
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    m = add("masks", help="attention-mask quality on generated shapes-world scenes")
    m.add_argument("--pipeline", default="shapes", help="'shapes' (the embedded model), 'tiny', or an id/folder")
    m.add_argument("--num_scenes", type=int, default=200, help="held-out test scenes")
    m.add_argument("--num_val", type=int, default=50, help="scenes for choosing the threshold")
    m.add_argument("--num_inference_steps", type=int, default=25)
    m.add_argument("--guidance_scale", type=float, default=None,
                   help="default: the model folder's recommended guidance (freeatm.json), else 4.0")
    m.add_argument("--guidance_sweep", type=float, nargs="+", default=(),
                   help="guidance scales to compare on the validation scenes (with the chosen capture); the best "
                        "by mIoU with undrawn objects as 0 is used on the test scenes and recommended")
    m.add_argument("--batch_size", type=int, default=16, help="images per pipeline call")
    m.add_argument("--seed", type=int, default=777, help="shapes-world seed of the test scenes (validation: seed + 1; the training scenes' seed, 10000 + the training --seed, is refused)")
    m.add_argument("--sweep", action="store_true",
                   help="compare capture settings on the validation scenes; the best is scored on the test scenes")
    m.add_argument("--save_recommendation", action="store_true",
                   help="write the chosen capture/threshold and the scores into the model folder's freeatm.json "
                        "and model card (a local folder; not the shipped model)")
    m.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    m.add_argument("--output", default=None, help="write the results JSON here")

    k = add("knn", help="kNN (k=20, cosine, weighted votes) and linear probe on frozen features")
    k.add_argument("--model", required=True, help="a freeatm checkpoint folder (SimCLR/MoCo/MAE)")
    k.add_argument("--dataset", required=True, help="load_dataset id or folder with image + label columns")
    k.add_argument("--train_split", default="train")
    k.add_argument("--test_split", default="test")
    k.add_argument("--revision", default=None)
    k.add_argument("--image_column", default="image")
    k.add_argument("--label_column", default="label")
    k.add_argument("--image_size", type=int, default=None,
                   help="default: a ViT checkpoint's own size (position embeddings are fixed), else the size the "
                        "checkpoint was trained at (its card facts), else 224")
    k.add_argument("--k", type=int, default=20, help="neighbours that vote")
    k.add_argument("--temperature", type=float, default=0.07, help="votes are weighted by exp(similarity / T)")
    k.add_argument("--batch_size", type=int, default=256)
    k.add_argument("--no_linear_probe", action="store_true", help="kNN only")
    k.add_argument("--device", default=None)

    f = add("finetune", help="end-to-end classification fine-tuning (Trainer), top-1 into the card")
    f.add_argument("--model", required=True, help="a freeatm checkpoint folder (SimCLR/MoCo/MAE)")
    f.add_argument("--dataset", required=True, help="load_dataset id or folder with image + label columns")
    f.add_argument("--output_dir", required=True, help="where the fine-tuning run writes")
    f.add_argument("--train_split", default="train")
    f.add_argument("--test_split", default="test")
    f.add_argument("--revision", default=None, help="the dataset's revision (a Hub id's commit, tag or branch)")
    f.add_argument("--image_column", default="image")
    f.add_argument("--label_column", default="label")
    f.add_argument("--image_size", type=int, default=None,
                   help="default: a ViT checkpoint's own size (position embeddings are fixed), else the size the "
                        "checkpoint was trained at (its card facts), else 224")
    f.add_argument("--epochs", type=float, default=10)
    f.add_argument("--learning_rate", type=float, default=1e-3)
    f.add_argument("--batch_size", type=int, default=64)
    f.add_argument("--max_steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
    f.add_argument("--device", default=None, help="'cpu' forces the CPU; default: the GPU when there is one")

    s = add("segment", help="semantic segmentation fine-tuning (UperNet on the backbone), mIoU")
    s.add_argument("--model", required=True, help="a freeatm CNN checkpoint folder (SimCLR/MoCo)")
    s.add_argument("--dataset", required=True, help="load_dataset id or folder with image + label-map columns")
    s.add_argument("--output_dir", required=True, help="where the fine-tuned UperNet is saved")
    s.add_argument("--train_split", default="train")
    s.add_argument("--test_split", default="test")
    s.add_argument("--revision", default=None)
    s.add_argument("--image_column", default="image")
    s.add_argument("--label_column", default="annotation")
    s.add_argument("--num_labels", type=int, default=None,
                   help="default: read off the label maps (the train split's, and a test class past them)")
    s.add_argument("--reduce_labels", action="store_true", help="0 = 'other' → ignored, rest shifted (ADE20K)")
    s.add_argument("--image_size", type=int, default=512)
    s.add_argument("--epochs", type=float, default=10)
    s.add_argument("--max_steps", type=int, default=-1)
    s.add_argument("--learning_rate", type=float, default=1e-4)
    s.add_argument("--batch_size", type=int, default=16)
    s.add_argument("--device", default=None, help="'cpu' forces the CPU; default: the GPU when there is one")

    d = add("detect", help="Mask R-CNN R50-FPN fine-tuning (torchvision) from the backbone, COCO AP")
    d.add_argument("--model", required=True, help="a freeatm ResNet checkpoint folder (SimCLR/MoCo)")
    d.add_argument("--dataset", required=True, help="COCO-style folder: images/<split>/, annotations/<split>.json")
    d.add_argument("--output_dir", required=True, help="where the detector's weights and AP JSON are saved")
    d.add_argument("--train_split", default="train")
    d.add_argument("--test_split", default="test")
    d.add_argument("--epochs", type=float, default=12)
    d.add_argument("--max_steps", type=int, default=-1)
    d.add_argument("--learning_rate", type=float, default=0.02)
    d.add_argument("--batch_size", type=int, default=16)
    d.add_argument("--min_size", type=int, default=800, help="shorter image side inside Mask R-CNN")
    d.add_argument("--max_size", type=int, default=1333)
    d.add_argument("--trainable_layers", type=int, default=3)
    d.add_argument("--device", default=None, help="'cpu' forces the CPU; default: the GPU when there is one")

    r = add("retrieval", help="image-text retrieval TR/IR@1/5/10 in percent (BLIP protocol: ITC rank, ITM re-rank)")
    r.add_argument("--model", required=True, help="a freeatm BLIP checkpoint folder (with its tokenizer)")
    r.add_argument("--dataset", required=True, help="load_dataset id or folder with an image and a caption column")
    r.add_argument("--split", default="test")
    r.add_argument("--revision", default=None, help="the dataset's revision (a Hub id's commit, tag or branch)")
    r.add_argument("--image_column", default="image")
    r.add_argument("--caption_column", default="caption", help="a string, or a list of strings per image")
    r.add_argument("--k_test", type=int, default=128, help="ITC top-k re-ranked by ITM (BLIP: 256 COCO, 128 Flickr)")
    r.add_argument("--image_size", type=int, default=None, help="default: the model's")
    r.add_argument("--max_length", type=int, default=None,
                   help="text tokens (default: 35, as BLIP, or the model's shorter text position table)")
    r.add_argument("--batch_size", type=int, default=64)
    r.add_argument("--device", default=None)
    r.add_argument("--output", default=None, help="write the results JSON here")
    r.add_argument("--finetune_split", default=None,
                   help="first fine-tune for retrieval (ITC + ITM, BLIP's protocol) on this split")
    r.add_argument("--finetune_dataset", default=None, help="dataset for fine-tuning (default: --dataset)")
    r.add_argument("--finetune_dir", default=None, help="where the fine-tuned model goes (with --finetune_split)")
    # Unset (None) rather than defaulted, so that one given without --finetune_split is found and refused; unset,
    # `finetune_retrieval`'s own defaults apply (BLIP's retrieval fine-tuning).
    r.add_argument("--finetune_epochs", type=float, default=None, help="default: 6")
    r.add_argument("--finetune_max_steps", type=int, default=None,
                   help="stop after this many steps (overrides --finetune_epochs)")
    r.add_argument("--finetune_lr", type=float, default=None, help="default: 1e-05")
    return p


def trainer_use_cpu(args, command: str) -> bool | None:
    """Trainer's `use_cpu` from `--device`. Trainer places the model itself, on every visible GPU, so a device
    index is refused rather than dropped."""
    if args.device in (None, "cuda"):
        return None
    if args.device == "cpu":
        return True
    raise ValueError(f"--device {args.device}: {command} trains with Trainer, which uses every visible GPU; choose "
                     f"them with CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=1 freeatm eval ...), or give cpu")


def main(argv=None):
    from ..cli import setup_logging

    setup_logging()
    args = make_parser().parse_args(argv)
    check_numbers(args)  # before any model, pipeline or data is loaded
    if getattr(args, "model", None):  # a mistyped checkpoint is named now, not after the data has loaded
        from ..hub.sources import check_model_source

        check_model_source(args.model)
    if args.device is not None:  # a device this machine lacks is named now, not after the model has loaded
        from ..devices import resolve_device

        resolve_device(args.device)
    if getattr(args, "dataset", None) and hasattr(args, "revision"):
        from ..data.reading import pinned_revision

        # Read and recorded at one commit: a Hub dataset's branch may move while the evaluation runs.
        args.revision = pinned_revision(args.dataset, args.revision)
    return {"masks": main_masks, "knn": main_knn, "retrieval": main_retrieval, "finetune": main_finetune,
            "segment": main_segment, "detect": main_detect}[args.what](args)


# Flags that count something (scenes, steps, pixels, rows, tokens): at least 1 when given. A 0 image size was
# replaced by the checkpoint's own (`or`), a 0 batch evaluated no scene at all (and --save_recommendation then
# wrote a threshold chosen on nothing into the model folder).
POSITIVE_INTS = ("num_scenes", "num_val", "num_inference_steps", "batch_size", "image_size", "k_test", "max_length",
                 "num_labels", "min_size", "max_size", "finetune_max_steps")
# Flags that set how long and how fast a fine-tune trains: 0 trained no step (or at a rate of 0), and the result
# still went into the card as the fine-tuned model's.
POSITIVE_FLOATS = ("epochs", "learning_rate", "finetune_epochs", "finetune_lr")


def check_numbers(args):
    """Refuse a count, length, rate or size that cannot mean what it says, naming the flag (not as a traceback or a
    silent default once the model is loaded)."""
    import math

    for name in POSITIVE_INTS:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    for name in POSITIVE_FLOATS:
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a finite number > 0, got {value}")
    if getattr(args, "max_steps", -1) != -1 and args.max_steps < 1:  # -1: unset, --epochs bounds the run
        raise ValueError(f"--max_steps must be at least 1 (or -1 for --epochs), got {args.max_steps}")
    if not 0 <= getattr(args, "trainable_layers", 3) <= 5:  # torchvision's range, else refused after the data loaded
        raise ValueError(f"--trainable_layers is how many of ResNet's 5 stages train, 0 to 5; got "
                         f"{args.trainable_layers}")
    if getattr(args, "seed", 0) < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    # The generator refused them too, but after the pipeline had loaded (and a sweep's value after the validation
    # scenes of the ones before it), and named as its own argument, not the flag.
    for name in ("guidance_scale", "guidance_sweep"):
        value = getattr(args, name, None)
        for v in [] if value is None else value if isinstance(value, (list, tuple)) else [value]:
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"--{name}: {v} is not a guidance scale (a finite number >= 0)")


def main_segment(args):
    from .segmentation import finetune_segmentation

    results = finetune_segmentation(
        args.model, args.dataset, args.output_dir, train_split=args.train_split, test_split=args.test_split,
        image_column=args.image_column, label_column=args.label_column, num_labels=args.num_labels,
        reduce_labels=args.reduce_labels, image_size=args.image_size, epochs=args.epochs, max_steps=args.max_steps,
        learning_rate=args.learning_rate, batch_size=args.batch_size, revision=args.revision,
        use_cpu=trainer_use_cpu(args, "eval segment"))
    if results:  # the main process's; the others return []
        print(json.dumps(results, indent=1))
    return results


def main_detect(args):
    from .detection import finetune_detection

    results = finetune_detection(
        args.model, args.dataset, args.output_dir, train_split=args.train_split, test_split=args.test_split,
        epochs=args.epochs, max_steps=args.max_steps, learning_rate=args.learning_rate, batch_size=args.batch_size,
        min_size=args.min_size, max_size=args.max_size, trainable_layers=args.trainable_layers,
        use_cpu=trainer_use_cpu(args, "eval detect"))
    if results:  # the main process's; the others return []
        print(json.dumps(results, indent=1))
    return results


def main_finetune(args):
    from .finetune import finetune_classification

    use_cpu = trainer_use_cpu(args, "eval finetune")
    # Without --image_size, the checkpoint's own (resolved there, once the data has passed its checks).
    results = finetune_classification(args.model, args.dataset, args.output_dir, args.train_split, args.test_split,
                                      args.image_column, args.label_column, args.image_size, args.epochs,
                                      args.learning_rate, args.batch_size, revision=args.revision,
                                      max_steps=args.max_steps, use_cpu=use_cpu)
    if results:  # the main process's; the others return []
        print(json.dumps(results, indent=1))
    return results


def blip_text_length(model: str, max_length: int | None) -> int:
    """The caption length for a BLIP checkpoint: `max_length`, or BLIP's 35 cut to the model's text position table;
    one longer than the table is refused here rather than failing as a shape error in the text embeddings."""
    from transformers import AutoConfig

    from .. import models  # noqa: F401  (registers the Auto classes)

    config = AutoConfig.from_pretrained(model)
    if getattr(config, "model_type", None) != "freeatm_blip":
        raise ValueError(f"{model} is a {config.model_type} checkpoint; retrieval takes a freeatm BLIP checkpoint "
                         "(`freeatm train blip`)")
    limit = config.text_config.max_position_embeddings
    if max_length is None:
        return min(35, limit)
    if max_length > limit:
        raise ValueError(f"--max_length {max_length} is longer than {model}'s text position table ({limit} tokens): "
                         f"give --max_length {limit} or less")
    return max_length


def main_retrieval(args):
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from .. import models  # noqa: F401  (registers the Auto classes)
    from ..data.reading import as_images, load
    from ..devices import resolve_device
    from ..hub.model_card import record_results
    from .frozen import load_model
    from .retrieval import distinct_images, recall_at_k, retrieval_scores, retrieval_transform

    finetune_flags = [f"--{k}" for k in ("finetune_dataset", "finetune_dir", "finetune_epochs", "finetune_max_steps",
                                         "finetune_lr") if getattr(args, k) is not None]
    if finetune_flags and not args.finetune_split:  # else the model would be scored as it is, without a word
        raise ValueError(f"{', '.join(finetune_flags)} set how to fine-tune, which only --finetune_split asks for: "
                         "give the split to fine-tune on, or leave them out to score the model as it is")
    device = resolve_device(args.device)
    if args.finetune_split:
        from .retrieval import finetune_retrieval

        if not args.finetune_dir:
            raise ValueError("--finetune_split needs --finetune_dir (where the fine-tuned model is saved)")
        if args.finetune_split == args.split and (args.finetune_dataset or args.dataset) == args.dataset:
            raise ValueError(f"--finetune_split and --split are both {args.split!r} of {args.dataset}: the recall would "
                             "be measured on the pairs the model was fine-tuned on")
        use_cpu = trainer_use_cpu(args, "eval retrieval --finetune_split")
        args.max_length = blip_text_length(args.model, args.max_length)
        args.model = finetune_retrieval(
            args.model, args.finetune_dataset or args.dataset, args.finetune_dir, split=args.finetune_split,
            image_column=args.image_column,
            caption_column=args.caption_column, image_size=args.image_size, max_length=args.max_length,
            **{k: v for k, v in (("epochs", args.finetune_epochs), ("max_steps", args.finetune_max_steps),
                                 ("learning_rate", args.finetune_lr)) if v is not None},
            batch_size=args.batch_size, use_cpu=use_cpu,
            revision=None if args.finetune_dataset else args.revision)  # the evaluated dataset's pinned revision
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under accelerate launch one process scores and writes the results
        return None
    args.max_length = blip_text_length(args.model, args.max_length)  # the fine-tuned model's, when fine-tuned
    model = load_model(args.model).to(device).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    size = args.image_size or model.config.vision_config.image_size
    model.set_image_size(size)  # positions interpolated to another size, not cut off
    ds = load(args.dataset, split=args.split, revision=args.revision)
    for col in (args.image_column, args.caption_column):
        if col not in ds.column_names:
            raise ValueError(f"{args.dataset} [{args.split}] has no column {col!r} (columns: {ds.column_names})")
    ds = as_images(ds, args.image_column, f"{args.dataset} [{args.split}]")
    tf = retrieval_transform(size)
    texts, text_to_image = [], []
    # One image per distinct picture, every caption of it its texts (rows that repeat an image, one per caption, are
    # grouped), as in BLIP's protocol.
    first = distinct_images(ds, args.image_column)
    image_rows = sorted(set(first))
    index = {row: k for k, row in enumerate(image_rows)}
    if len(image_rows) < len(ds):
        logger.info("%d rows hold %d distinct images: each image is scored once, with the captions of all its rows",
                    len(ds), len(image_rows))
    # Captions first, from their column alone: a row without one is named before any image is decoded.
    for i, caps in enumerate(ds.with_format("arrow")[args.caption_column].to_pylist()):
        if not isinstance(caps, str) and not caps:  # found now, not after the whole ITM re-ranking
            raise ValueError(f"image {i} of {args.dataset} [{args.split}] has no caption: text retrieval needs at "
                             "least one per image; leave such images out of the test set")
        for c in [caps] if isinstance(caps, str) else caps:
            texts.append(c)
            text_to_image.append(index[first[i]])
    ds = ds.select(image_rows) if len(image_rows) < len(ds) else ds
    # Images in batches, decoded by the loader: only their embeddings are kept (a test set of float pixels at
    # 384² is gigabytes).
    images = torch.utils.data.DataLoader(
        ds.select_columns([args.image_column]), batch_size=args.batch_size,
        collate_fn=lambda rows: torch.stack([tf(rgb(r[args.image_column])) for r in rows]))
    enc = tok(texts, padding="max_length", truncation=True, max_length=args.max_length, return_tensors="pt")
    i2t, t2i = retrieval_scores(model, images, enc.input_ids, enc.attention_mask, args.k_test, args.batch_size)
    recall = recall_at_k(i2t, t2i, text_to_image)
    result = {"dataset": args.dataset, "split": args.split, "revision": args.revision,
              "finetuned_on": args.finetune_split, "images": len(ds), "texts": len(texts), "k_test": args.k_test,
              **recall}
    if args.output:  # first: a card that cannot be written loses nothing
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))
    # Into the evaluated model's results and card, as `eval knn` does (the fine-tuned folder when fine-tuned). The
    # checkpoint's own config: `set_image_size` changed the loaded one to the evaluation's size.
    record_results(args.model, [{"task": "image-text-retrieval", "dataset": args.dataset, "split": args.split,
                                 "revision": args.revision, "metric": k, "value": v} for k, v in recall.items()],
                   AutoConfig.from_pretrained(args.model))
    return result


def main_knn(args):
    from .frozen import evaluate_frozen

    results = evaluate_frozen(args.model, args.dataset, train_split=args.train_split, test_split=args.test_split,
                              revision=args.revision, image_column=args.image_column, label_column=args.label_column,
                              image_size=args.image_size, k=args.k,  # None: the checkpoint's own
                              temperature=args.temperature,
                              batch_size=args.batch_size, linear=not args.no_linear_probe, device=args.device)
    print(json.dumps(results, indent=1))
    return results


def main_masks(args):
    from ..devices import resolve_device
    from ..generate.pipelines import load_pipeline
    from ..toy.mask_eval import MaskEvalConfig, evaluate_masks, to_json
    from ..toy.model import MODEL_DIR, update_model_folder

    folder = None
    if args.save_recommendation:  # checked first: the evaluation takes minutes
        from ..generate.pipelines import default_pipeline

        spec = default_pipeline() if args.pipeline == "default" else args.pipeline
        folder = MODEL_DIR if spec == "shapes" else Path(spec)
        if folder.resolve() == MODEL_DIR.resolve():
            raise ValueError("--save_recommendation would rewrite the shipped shapes model (what every later "
                             "`freeatm generate` uses): copy its folder and pass the copy as --pipeline")
        if not (folder / "model_index.json").is_file():
            raise ValueError(f"--save_recommendation needs a local pipeline folder, got {args.pipeline!r}")
    device = resolve_device(args.device)
    pipe = load_pipeline(args.pipeline, device)
    cfg = MaskEvalConfig(args.num_scenes, args.num_val, args.num_inference_steps, args.guidance_scale,
                         args.batch_size, args.seed, tuple(args.guidance_sweep))
    # A folder is named, not pathed: the results travel with the folder (into its freeatm.json and card).
    name = Path(args.pipeline).name if Path(args.pipeline).is_dir() else args.pipeline
    result = {"pipeline": name, **evaluate_masks(pipe, cfg, sweep=args.sweep)}
    text = to_json(result)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    if folder is not None:
        (folder / "mask_eval.json").write_text(text)
        update_model_folder(folder, mask_eval=result)
    print(json.dumps({"capture": result["capture"], **{k: v for k, v in result["test"].items()
                                                      if not isinstance(v, dict)},
                      "drawn_filter": result["drawn_filter"]}, indent=1))
    return result

"""Rows of the toy tables: the mean of each score over pretraining seeds, with its spread."""

import torch

from ..files import write_text_atomic


def summarize(name: str, runs: list[dict], keys) -> dict:
    """A table row: mean and (over several seeds) sample standard deviation of each score in `keys`."""
    row = {"pretraining": name, "seeds": len(runs), "runs": runs}
    for key in keys:
        v = torch.tensor([r[key] for r in runs], dtype=torch.float64)
        row[key] = float(v.mean())
        row[f"{key}_std"] = float(v.std()) if len(v) > 1 else None
    return row


def cell(row: dict, key: str, scale: float = 1.0) -> str:
    """'mean ± std' (one decimal) for a table cell; just the mean for a single run."""
    std = row[f"{key}_std"]
    return f"{scale * row[key]:.1f}" + (f" ± {scale * std:.1f}" if std is not None else "")


def ablation_cut(scenes, ablate: bool) -> float | None:
    """The attention_peak cut the scenes' card records (what training applies by default); with `ablate`, fail
    when there is none, since a "no drawn filter" row would then repeat the filtered one."""
    from ..data.reading import generation_settings

    cut = generation_settings(str(scenes)).get("min_attention_peak")
    if ablate and not cut:
        raise ValueError(f"--ablate_drawn_filter: the dataset card of {scenes} records no min_attention_peak, so "
                         "there is no filter to ablate (generate with --min_attention_peak, or drop the flag)")
    return cut


def add_filter_arguments(p) -> None:
    p.add_argument("--min_attention_peak", type=float, default=None,
                   help="the cut recorded in the generated scenes' card (default: the generator's recommendation)")
    p.add_argument("--ablate_drawn_filter", action="store_true",
                   help="add a row pretrained on every named object, including those below the scenes' "
                        "attention_peak cut (--min_attention_peak 0)")


RECIPE_FILE = "table_recipe.json"  # beside a pretrained model: the recipe that made it


def reusable(record, recipe: dict, done: bool) -> bool:
    """Whether a finished part of a table (`done`: its model or scores exist) can stand for this run: only if the
    recipe in `record` (a JSON file) is this one. Another one is refused by name; reusing it would put the old
    run's scores under the new run's settings."""
    import json
    import logging
    from pathlib import Path

    record = Path(record)
    if not done:
        return False
    if not record.is_file():
        logging.getLogger(__name__).warning("no recipe recorded in %s (made before recipes were kept): %s reused as "
                                            "it is", record, record.parent)
        return True
    old, new = json.loads(record.read_text()), json.loads(json.dumps(recipe))
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"{record} records other settings ({'; '.join(f'{k}: {old.get(k)} → {new.get(k)}' for k in diff)}"
                         "): use another --output_dir, or remove what it recorded to redo it")
    return True


def keep_recipe(record, recipe: dict) -> None:
    import json
    from pathlib import Path

    Path(record).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record, json.dumps(recipe, indent=2, sort_keys=True))


def pretraining_recipe(flags: list[str], scenes) -> dict:
    """What a pretrained model of a table depends on: its training flags and its scenes."""
    return {"pretraining": flags, "scenes": scenes_settings(scenes)}


def pretrain_once(train_main, method: str, scenes, run, recipe: dict, cpu: bool) -> None:
    """`freeatm train <method>` on `scenes` into `run` with the recipe's flags, unless `run` holds a model made by
    this recipe (another is refused, see `reusable`)."""
    from pathlib import Path

    record = Path(run) / RECIPE_FILE
    if not reusable(record, recipe, done=(Path(run) / "model.safetensors").is_file()):
        train_main([method, "--dataset", str(scenes), "--output_dir", str(run), *recipe["pretraining"]]
                   + (["--use_cpu", "true"] if cpu else []))
        keep_recipe(record, recipe)


def scenes_settings(scenes) -> dict:
    """What the pretraining scenes were made with (their resume settings): a recipe names its data by this, not
    by a path that moves with the output folder. The attention-peak cut is the card's, which training reads (the
    resume settings keep the first run's: it changes no row)."""
    import json
    from pathlib import Path

    from ..data.reading import generation_settings

    settings = json.loads((Path(scenes) / ".freeatm" / "settings.json").read_text())
    return {**settings, "min_attention_peak": generation_settings(str(scenes)).get("min_attention_peak")}

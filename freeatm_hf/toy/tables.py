"""Rows of the toy tables: the mean of each score over pretraining seeds, with its spread."""

import torch


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

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

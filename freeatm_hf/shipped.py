"""Folders of the repository that the wheel carries too (pyproject's force-include as `_<folder>`): the card
templates, the Space and the recipes."""

from importlib import resources
from pathlib import Path

SHIPPED_FOLDERS = ("model_cards", "spaces", "recipes")  # pyproject's force-include


def shipped_dir(folder: str) -> Path | None:
    """The repository's `folder`, from the installed package or, in a source checkout, the repository root; None
    where neither has it."""
    packaged = resources.files("freeatm_hf") / f"_{folder}"
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(__file__).resolve().parents[1] / folder
    return source if source.is_dir() else None


def shipped_path(folder: str, name: str) -> Path | None:
    """`<folder>/<name>` as `shipped_dir` finds it; None where it is not there."""
    root = shipped_dir(folder)
    return root / name if root is not None and (root / name).is_file() else None

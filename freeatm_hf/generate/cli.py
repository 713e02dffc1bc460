"""freeatm generate: prompts → images + per-object attention masks → Hub-layout dataset folder.

    freeatm generate --output_dir outputs/scenes --num_images 64 --num_inference_steps 10
    freeatm generate recipes/generate_sd15.yaml                 # every key is an argument below
    accelerate launch -m freeatm_hf.generate recipes/generate_sd15.yaml
"""

import logging

logger = logging.getLogger(__name__)


def make_parser():
    from transformers import HfArgumentParser

    from ..cli import HelpFormatter
    from .config import GenerateConfig

    parser = HfArgumentParser(GenerateConfig, prog="freeatm generate", description=__doc__,
                              formatter_class=HelpFormatter)
    # `include_mid` defaults to None (the model folder's choice); HfArgumentParser then wants a value, but a bare
    # `--include_mid` must still mean true, as it does for a plain bool.
    for action in parser._actions:
        if action.dest == "include_mid":
            action.nargs, action.const = "?", True
    return parser


def parse(argv: list[str]):
    from ..cli import parse_dataclasses

    parser = make_parser()
    if argv and argv[0].endswith((".yaml", ".yml")):
        # A recipe, optionally followed by overrides: `freeatm generate recipe.yaml --num_images 8`.
        argv = recipe_flags(read_recipe(argv[0])) + argv[1:]
    (cfg,) = parse_dataclasses(parser, argv)
    return cfg


def read_recipe(path: str) -> dict:
    """A YAML recipe's keys. A file that is not here, named `recipes/NAME.yaml` or `NAME.yaml`, is the project's
    own recipe of that name (the wheel carries them): `freeatm train simclr_atm.yaml` runs from any directory, and
    the paths it names into the project's own folders (the CPU smoke recipes' `spaces/mask_viewer/example_dataset`)
    are the shipped ones where the working directory has no such path. Its output_dir stays where it is run."""
    import os

    if os.path.isfile(path):
        with open(path) as f:
            return _recipe_keys(path, f.read())
    from ..shipped import SHIPPED_FOLDERS, shipped_dir, shipped_path

    name = path.replace("\\", "/").removeprefix("recipes/")
    shipped = shipped_path("recipes", name) if "/" not in name else None
    if shipped is None:
        raise FileNotFoundError(f"recipe {path} not found (the project's own: {', '.join(shipped_recipes())})")
    logger.info("recipe %s: the project's own, %s", path, shipped)
    recipe = _recipe_keys(path, shipped.read_text())
    for key, value in recipe.items():
        folder, _, rest = value.partition("/") if isinstance(value, str) else ("", "", "")
        if folder in SHIPPED_FOLDERS and rest and not os.path.exists(value):
            root = shipped_dir(folder)
            if root is not None and (root / rest).exists():
                recipe[key] = str(root / rest)
    return recipe


def _recipe_keys(path: str, text: str) -> dict:
    """A recipe's mapping, or a ValueError naming the file: a YAML mistake or a list at the top was a traceback
    from deep in the YAML parser or from the code reading the keys."""
    import yaml

    try:
        recipe = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        what = ", ".join(filter(None, (getattr(e, "context", None), getattr(e, "problem", None)))) or str(e)
        raise ValueError(f"recipe {path} is not valid YAML: {where}{what}") from e
    if recipe is None:  # empty, or only comments: every argument from the command line or its default
        return {}
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path} holds a {type(recipe).__name__}, not `key: value` lines (one per argument)")
    return recipe


def shipped_recipes() -> list[str]:
    """The names of the project's YAML recipes, from the package or the checkout."""
    from ..shipped import shipped_dir

    root = shipped_dir("recipes")
    return sorted(p.name for p in root.glob("*.yaml")) if root is not None else []


def recipe_flags(recipe: dict) -> list[str]:
    """A YAML recipe's keys as command-line flags: lists as several values, mappings as JSON (what the
    dict-valued arguments parse: `layer_weights`, `lr_scheduler_kwargs`), null left out (the default)."""
    import json

    flags = []
    for key, value in recipe.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            if not value:  # argparse takes no empty list: "[]" would be refused far from the recipe
                raise ValueError(f"recipe key {key!r} is an empty list: leave the key out for its default")
            flags += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            flags += [f"--{key}", json.dumps(value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def main(argv: list[str] | None = None):
    import sys

    from transformers.utils import logging as hf_logging

    from ..cli import setup_logging
    from .run import generate_dataset

    setup_logging()
    hf_logging.set_verbosity_warning()
    cfg = parse(list(sys.argv[1:] if argv is None else argv))
    out = generate_dataset(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:  # once, not once per process of `accelerate launch`
        print(f"dataset written to {out}")
    return out


if __name__ == "__main__":
    main()

"""Pretraining with transformers' Trainer: `freeatm train` on the command line, `pretrain` from Python."""

import os


def pretrain(method: str | None = None, recipe: str | os.PathLike | None = None, **arguments):
    """Train as `freeatm train METHOD [RECIPE] --key value ...` does, and return its `Trainer`.

        trainer = pretrain("simclr", "contrastive_cpu_smoke.yaml", output_dir="outputs/simclr-py", max_steps=2)

    Keywords are the command's flags by their names (the method's arguments and `TrainingArguments`), overriding the
    recipe's; lists are several values, dicts JSON, None the default. The method may be left to the recipe's
    `method:` key. The same checks and method defaults apply: an unknown keyword is refused by name."""
    from ..generate.cli import recipe_flags
    from .cli import main

    if method is None and recipe is None:
        raise ValueError("name a method (simclr, moco, mae, blip) or a recipe whose `method:` key names one")
    argv = [method] if method is not None else []
    return main(argv + ([os.fspath(recipe)] if recipe is not None else []) + recipe_flags(arguments))

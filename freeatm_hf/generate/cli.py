"""freeatm generate: prompts → images + per-object attention masks → Hub-layout dataset folder.

    freeatm generate --output_dir outputs/scenes --num_images 64 --num_inference_steps 10
    freeatm generate recipes/generate_sd15.yaml                 # every key is an argument below
    accelerate launch -m freeatm_hf.generate recipes/generate_sd15.yaml
"""

import logging


def make_parser():
    from transformers import HfArgumentParser

    from ..cli import HelpFormatter
    from .config import GenerateConfig

    return HfArgumentParser(GenerateConfig, prog="freeatm generate", description=__doc__,
                            formatter_class=HelpFormatter)


def parse(argv: list[str]):
    parser = make_parser()
    if argv and argv[0].endswith((".yaml", ".yml")):
        # A recipe, optionally followed by overrides: `freeatm generate recipe.yaml --num_images 8`.
        import yaml

        with open(argv[0]) as f:
            recipe = yaml.safe_load(f) or {}
        argv = [tok for k, v in recipe.items() for tok in _to_args(k, v)] + argv[1:]
    (cfg,) = parser.parse_args_into_dataclasses(args=argv)
    return cfg


def _to_args(key, value) -> list[str]:
    if isinstance(value, bool):
        return [f"--{key}", str(value)]
    if isinstance(value, (list, tuple)):
        return [f"--{key}", *map(str, value)]
    return [] if value is None else [f"--{key}", str(value)]


def main(argv: list[str] | None = None):
    import sys

    from transformers.utils import logging as hf_logging

    from .run import generate_dataset

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hf_logging.set_verbosity_warning()
    cfg = parse(list(sys.argv[1:] if argv is None else argv))
    out = generate_dataset(cfg)
    print(f"dataset written to {out}")
    return out


if __name__ == "__main__":
    main()

"""freeatm: diffusion-generated images with free per-object attention masks, and pretraining on them.

    freeatm generate --output_dir outputs/scenes --num_images 64      # offline: the shipped shapes model
    freeatm train simclr --dataset outputs/scenes --output_dir outputs/simclr-atm
    freeatm push outputs/scenes user/scenes
    freeatm COMMAND --help                                            # each command's arguments
"""
# One subcommand per job, each a module with `make_parser()` and `main(argv)`, imported only when it runs.

import argparse
import importlib
import sys

COMMANDS = {
    "generate": ("freeatm_hf.generate.cli", "Generate images with per-object attention masks into a dataset folder."),
    "push": ("freeatm_hf.hub.cli", "Upload a finished dataset or model folder to the Hub."),
    "push-model": ("freeatm_hf.hub.cli:push_model_main", "Upload a checkpoint folder (with its card) as a model repo."),
    "export": ("freeatm_hf.hub.cli:export_main", "Export a checkpoint for timm, torchvision or transformers."),
    "train": ("freeatm_hf.train.cli", "Pretrain: simclr, moco, mae or blip (Free-ATM or the mask-free baseline)."),
    "eval": ("freeatm_hf.eval.cli", "Evaluate: masks, knn/linear probe, finetune, segment, detect, retrieval."),
    "space": ("freeatm_hf.spaces_cli", "Launch the mask viewer (Gradio) locally."),
    "push-space": ("freeatm_hf.spaces_cli:push_main", "Create or update the mask viewer Space on the Hub."),
}


def setup_logging():
    """INFO from freeatm and the libraries it drives, one line each, but not a line per HTTP request: httpx logs
    every request at INFO (a push's every Hub call, an LLM augmenter's every prompt). Under a launcher (RANK set)
    the other processes say only warnings: the same lines eight times over said nothing more."""
    import logging
    import os

    # A launcher sets both; a RANK alone (a cluster's node rank, a stray variable) does not make this a replica.
    rank, world = os.environ.get("RANK", "0").strip(), os.environ.get("WORLD_SIZE", "1").strip()
    main_process = not (rank.isdigit() and int(rank) > 0 and world.isdigit() and int(world) > 1)
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):  # httpx2: huggingface_hub 2.x's client
        logging.getLogger(name).setLevel(logging.WARNING)


def parse_dataclasses(parser, argv: list[str]) -> tuple:
    """`HfArgumentParser.parse_args_into_dataclasses`, with a mistyped flag named along with the flags it may have
    meant (HfArgumentParser says only that some arguments were not used)."""
    import difflib

    known = {o for action in parser._actions for o in action.option_strings}
    typed = [a.split("=", 1)[0] for a in argv if a.startswith("--") and len(a) > 2]
    unknown = [a for a in typed if a not in known]
    if unknown:
        # Suggested as the help lists them: underscored (not the dashed aliases), hidden flags left out.
        offered = sorted({o for action in parser._actions if action.help != argparse.SUPPRESS
                          for o in action.option_strings if o.startswith("--") and "-" not in o[2:]})

        def hint(flag):
            close = difflib.get_close_matches("--" + flag[2:].replace("-", "_"), offered, n=3, cutoff=0.75)
            return f"{flag} (did you mean {' or '.join(close)}?)" if close else flag

        raise ValueError(f"unknown flag{'s' if len(unknown) > 1 else ''}: {', '.join(map(hint, unknown))}; "
                         f"{parser.prog} --help lists them")
    return parser.parse_args_into_dataclasses(args=argv)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples in a description keep their lines; defaults are shown, but not "(default: None)", which says
    nothing the help text does not (it names what an unset option falls back to)."""

    def _get_help_string(self, action):
        if getattr(action, "shown_default", None) is not None:  # a default set after parsing (train's per method)
            return f"{action.help} (default: {action.shown_default})"
        if action.default is None:
            return action.help
        return super()._get_help_string(action)

    def _format_action(self, action):
        # argparse writes defaults into help texts only: an option without one would not show its default.
        if not action.help and action.option_strings and action.default not in (None, argparse.SUPPRESS):
            import copy

            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        from . import __version__

        parser = argparse.ArgumentParser(prog="freeatm", description=__doc__, formatter_class=HelpFormatter)
        parser.add_argument("--version", action="version", version=f"freeatm_hf {__version__}")
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        for name, (_, help_) in COMMANDS.items():
            sub.add_parser(name, help=help_)
        parser.parse_args(argv[:1] or ["--help"])
        return
    module_name, _, func = COMMANDS[argv[0]][0].partition(":")
    getattr(importlib.import_module(module_name), func or "main")(argv[1:])  # the console script's exit code is 0 unless this raises


def run(argv: list[str] | None = None):
    """The console script (and `python -m freeatm_hf[.generate|.train]`, `argv` then naming the command). A mistake
    in the command (the code raises ValueError or FileNotFoundError naming it: a resume with other settings, a
    folder that is not a checkpoint, a missing flag) prints that message and exits 2, as argparse does; a push that
    cannot reach the Hub (`HubUnreachable`) says so and exits 1. FREEATM_TRACEBACK=1 shows the traceback too."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        main(argv)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        from .hub.push import HubUnreachable  # imported here: huggingface_hub is not loaded for every command

        other_connection_error = isinstance(e, ConnectionError) and not isinstance(e, HubUnreachable)
        if os.environ.get("FREEATM_TRACEBACK") or other_connection_error:
            raise
        command = " ".join(argv[0:2] if argv[0:1] in (["train"], ["eval"]) else argv[0:1])
        print(f"freeatm {command}: error: {e}\n(FREEATM_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        sys.exit(1 if isinstance(e, HubUnreachable) else 2)  # the network's failure, not the command's


if __name__ == "__main__":
    run()

"""freeatm train [METHOD] [recipe.yaml] [--flags]: pretraining with Trainer.

    freeatm train simclr --dataset outputs/scenes --output_dir outputs/simclr-atm --per_device_train_batch_size 256
    freeatm train moco recipes/moco_atm.yaml --num_train_epochs 1
    freeatm train recipes/mae_atm.yaml                     # the recipe's `method:` names the method
    accelerate launch -m freeatm_hf.train recipes/simclr_atm.yaml
"""

import os
import sys

METHODS = ("simclr", "moco", "mae", "blip")


def _is_recipe(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml"))


def resolve_method(argv: list[str]) -> tuple[str, list[str]]:
    """The method, and the arguments with the recipe's keys spelled out as flags before the command line's own
    (so that flags after a recipe override it). The method is named first, or by the recipe's `method:` key;
    both must agree."""
    from ..generate.cli import read_recipe, recipe_flags

    named = None if _is_recipe(argv[0]) else argv.pop(0)
    recipe = {}
    if argv and _is_recipe(argv[0]):
        path = argv.pop(0)
        recipe = read_recipe(path)
        recipe_method = recipe.pop("method", None)
        if named and recipe_method and named != recipe_method:
            raise ValueError(f"{path} is a {recipe_method!r} recipe, but {named!r} was asked for")
        if not (named or recipe_method):
            raise ValueError(f"{path} has no `method:` key: name the method first, e.g. freeatm train simclr {path}")
        named = named or recipe_method
    return named, recipe_flags(recipe) + argv


def parse(method: str, argv: list[str]):
    """TrainingArguments and the method's own arguments from flags (a recipe already spelled out by resolve_method)."""
    from transformers import HfArgumentParser, TrainingArguments

    from ..cli import HelpFormatter, parse_dataclasses

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "mae":
        from .mae import MAEArguments as Arguments
    elif method == "blip":
        from .blip import BlipArguments as Arguments
    else:
        from .contrastive import ContrastiveArguments as Arguments
    # No abbreviated flags: `--learning_r 0.1` would be parsed, yet not be seen as given (`given_flags`), and the
    # method's own rate would replace it.
    parser = HfArgumentParser(
        (Arguments, TrainingArguments), prog=f"freeatm train {method}", formatter_class=HelpFormatter, allow_abbrev=False,
        description=f"{method}'s own arguments first, then transformers' TrainingArguments. Recipes: recipes/*.yaml.")
    import argparse

    hidden = set(OTHER_METHODS_FLAGS.get(method, {})) | set(REFUSED_TRAINER_FLAGS.get(method, ()))
    shown = method_help_defaults(method)
    for action in parser._actions:
        # SimCLR and MoCo share one dataclass: the other method's flags, and Trainer's that are refused, stay out
        # of the help; Trainer's defaults that the method replaces are shown as the method's.
        if action.dest in hidden:
            action.help = argparse.SUPPRESS
        elif action.dest in TRAINER_HELP:
            action.help = TRAINER_HELP[action.dest]
        if action.dest in shown:
            action.shown_default = shown[action.dest]
    return parse_dataclasses(parser, argv)


# Trainer's flags whose own help says what freeatm does not do.
TRAINER_HELP = {
    "push_to_hub": "Upload the finished output folder (weights, card, exports) to the Hub once, at the end.",
    "resume_from_checkpoint": "Continue from this checkpoint folder, or `true` for the output directory's last "
                              "complete one (the settings must be the checkpoint's).",
}
REFUSED_TRAINER_FLAGS = {  # refused by check_applicable or the method: not offered in its help
    "simclr": ("optim", "hub_strategy", "hub_always_push"), "moco": ("optim", "hub_strategy", "hub_always_push"),
    "mae": ("hub_strategy", "hub_always_push"), "blip": ("hub_strategy", "hub_always_push"),
}


def method_help_defaults(method: str) -> dict[str, str]:
    """What `--help` shows as the default of the Trainer settings `method_defaults` replaces."""
    from .contrastive import OPTIMIZER

    shown = {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in METHOD_SETTINGS[method].items()}
    if method == "blip":
        shown["learning_rate"] = f"{BLIP_LR['scratch']:g}, {BLIP_LR['init_from']:g} with --init_from"
    else:
        shown["learning_rate"] = f"{BASE_LR[method]:g} × global batch / 256" + (
            f" with {OPTIMIZER[method]}; give one for another --optimizer" if method in OPTIMIZER else "")
    return shown


# Flags of the shared dataclass that the method does not read, and why.
_CAPTIONS = {"real_text_column": "captions are BLIP's to learn from; this method reads the images"}
OTHER_METHODS_FLAGS = {"simclr": {"queue_size": "MoCo's queue", "momentum": "MoCo's key-encoder EMA", **_CAPTIONS},
                       "moco": _CAPTIONS, "mae": _CAPTIONS}


def check_applicable(method: str, args, training_args, given: set[str]):
    """Refuse flags the run would not read: typed, they would be ignored without a word (and the card would state
    values never trained with). `given`: the command line's own flags; a recipe's keys that a flag makes moot
    (mae_atm.yaml's `beta_max` under `--guided false`, the documented baseline) are not refused."""
    from .contrastive import OPTIMIZER

    unread = {}

    def refuse(flags, why):
        unread.update({f"--{k}": why for k in flags if k in given})

    for flag, why in OTHER_METHODS_FLAGS.get(method, {}).items():
        refuse([flag], why)
    if args.data_mode == "real":
        refuse(["min_attention_peak", "mask_threshold"], "--data_mode real reads no masks")
    if args.data_mode != "mix":
        refuse(["mix_ratio"], "read with --data_mode mix only")
    if args.data_mode == "synthetic":
        refuse(["real_image_column", "real_text_column"], "read with --data_mode real or mix only")
    if method in OPTIMIZER:
        if args.pooling == "image":
            refuse(["mask_mode", "mask_threshold", "min_visible", "min_attention_peak"],
                   "--pooling image pools no masks (the baseline)")
        optimizer = args.optimizer or OPTIMIZER[method]
        if optimizer != "adamw":
            refuse(["adam_beta1", "adam_beta2", "adam_epsilon"], f"AdamW's, and the optimizer is {optimizer}")
    else:  # Trainer's own optimizer: those without Adam's moments read no betas
        optim = str(getattr(training_args.optim, "value", training_args.optim))
        if any(name in optim for name in ("sgd", "adagrad", "adafactor", "rmsprop", "lomo")):
            refuse(["adam_beta1", "adam_beta2", "adam_epsilon"], f"Adam's, and --optim is {optim}")
    if method == "blip":
        if args.init_from:
            refuse(["model_size"], f"the size of --init_from {args.init_from}'s checkpoint is used")
        if not args.momentum_distill:
            refuse(["momentum", "queue_size", "distill_alpha"], "read with --momentum_distill true only")
        if args.prompts == "none":
            refuse(["grid", "shuffle_prompts", "min_attention_peak"], "--prompts none writes no position prompts")
    if method == "mae" and not args.guided:
        refuse(["beta_max", "min_attention_peak"], "--guided false masks at random (the baseline)")
    if not training_args.push_to_hub:
        refuse(["hub_model_id", "hub_private_repo", "hub_revision"], "read with --push_to_hub only")
    else:
        refuse(["hub_strategy", "hub_always_push"], "freeatm pushes the finished folder once, at the end")
    if unread:
        raise ValueError(f"freeatm train {method} would not read " + "; ".join(f"{k} ({why})" for k, why in
                                                                          unread.items()))


def check_training_numbers(training_args):
    """Refuse Trainer settings that cannot train, naming the flag, before any data or model is loaded: Trainer takes
    them as given, and they failed late (a batch of 0 in torch's DataLoader, an accumulation of 0 as a
    ZeroDivisionError, a negative rate in the optimizer) or trained no step and saved the model with its card."""
    import math

    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(training_args, name)}")
    epochs = training_args.num_train_epochs
    if training_args.max_steps <= 0 and not (math.isfinite(epochs) and epochs > 0):  # max_steps > 0 overrides epochs
        raise ValueError(f"--num_train_epochs must be a finite number > 0 (or give --max_steps), got {epochs}")
    if not (math.isfinite(training_args.learning_rate) and training_args.learning_rate >= 0):
        raise ValueError(f"--learning_rate must be a finite number >= 0, got {training_args.learning_rate}")


# What torch's DataParallel (Trainer's way with several GPUs in one process) gets wrong per method: each GPU's
# replica computes its loss on its share of the batch, writes to a replica's buffers are dropped after the step, and
# the learning rate's batch scaling (`method_defaults`) and the card count processes, not GPUs.
DATA_PARALLEL_LOSS = {"simclr": "each GPU's loss sees only its share of the batch as negatives",
                      "moco": "the queue keeps only the first GPU's keys", "blip": "the momentum queues keep only the "
                      "first GPU's features, and each GPU's ITC sees only its share of the batch",
                      "mae": "the learning rate, scaled by the global batch, and the card's batch count one GPU"}


def check_one_process_per_gpu(method: str, training_args):
    """Refuse a run that Trainer would spread over several GPUs of one process with `nn.DataParallel` (started
    with `python`/`freeatm train` on a machine with more than one visible GPU): it trains without a word, but not
    the method the card states."""
    n = training_args.n_gpu
    if n > 1:
        raise ValueError(f"{n} GPUs are visible to this one process, which Trainer would drive with torch "
                         f"DataParallel, where {DATA_PARALLEL_LOSS[method]}: start one process per GPU with "
                         f"`accelerate launch --num_processes {n} -m freeatm_hf.train {method} ...`, or choose one "
                         "GPU with CUDA_VISIBLE_DEVICES")


# Each method's own optimisation settings where the command line and recipe give none (Trainer's defaults, AdamW at
# 5e-5 without decay on a linear schedule, are a fine-tuning setting: SimCLR's LARS at 5e-5 barely moves). The
# learning rate follows each paper's linear scaling rule on the global batch (BLIP's does not scale).
BASE_LR = {"simclr": 0.3, "moco": 0.03, "mae": 1.5e-4}  # × global batch / 256 (SimCLR with LARS, MoCo-v2, MAE)
METHOD_SETTINGS = {
    "simclr": {"weight_decay": 1e-6, "lr_scheduler_type": "cosine", "warmup_steps": 0.05},
    "moco": {"weight_decay": 1e-4, "lr_scheduler_type": "cosine"},
    "mae": {"weight_decay": 0.05, "adam_beta2": 0.95, "lr_scheduler_type": "cosine", "warmup_steps": 0.025},
    "blip": {"weight_decay": 0.05, "lr_scheduler_type": "cosine"},
}
BLIP_LR = {"scratch": 3e-4, "init_from": 2e-5}  # BLIP's pretraining rate; continued from a BLIP checkpoint


def given_flags(argv: list[str]) -> set[str]:
    """The argument names a command line (with its recipe spelled out) sets, as dataclass field names."""
    names = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    # `--no_shuffle_prompts` (HfArgumentParser's negation of a field that defaults to true) sets shuffle_prompts.
    return names | {n[3:] for n in names if n.startswith("no_")}


def method_defaults(method: str, args, training_args, given: set[str]) -> dict:
    """Set the method's own learning rate, weight decay, schedule and betas where none is given; returns and logs
    what it set (the card records the values trained with)."""
    import logging

    from transformers.trainer_utils import SchedulerType

    from .contrastive import OPTIMIZER

    custom_optimizer = method in OPTIMIZER and args.optimizer not in (None, OPTIMIZER[method])
    settings = dict(METHOD_SETTINGS[method])
    if method == "blip":
        settings["learning_rate"] = BLIP_LR["init_from" if args.init_from else "scratch"]
    elif not custom_optimizer:  # another optimizer's rate is its user's to give
        batch = (training_args.per_device_train_batch_size * training_args.world_size
                 * training_args.gradient_accumulation_steps)
        settings["learning_rate"] = BASE_LR[method] * batch / 256
    applied = {k: v for k, v in settings.items() if k not in given}
    for key, value in applied.items():
        setattr(training_args, key, SchedulerType(value) if key == "lr_scheduler_type" else value)
    if applied:
        logging.getLogger(__name__).info("%s's own settings where none were given: %s", method,
                                         ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in applied.items()))
    return applied


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        usage = f"{__doc__}\nmethods: {', '.join(METHODS)}; `freeatm train METHOD --help` lists the arguments"
        if argv:
            print(usage)
            return None
        # As `freeatm eval` without an evaluation: the usage, and the exit status of a command missing an argument.
        print(f"{usage}\nfreeatm train: error: name a method ({', '.join(METHODS)}) or a recipe", file=sys.stderr)
        raise SystemExit(2)
    from ..cli import setup_logging

    setup_logging()
    typed = given_flags(argv)
    method, argv = resolve_method(argv)
    args, training_args = parse(method, argv)
    check_training_numbers(training_args)
    check_applicable(method, args, training_args, typed)
    check_one_process_per_gpu(method, training_args)
    method_defaults(method, args, training_args, given_flags(argv))
    from ..devices import unpinned_on_cpu

    unpinned_on_cpu(training_args)
    # `--push_to_hub` is honoured by uploading the finished folder (weights, freeatm card, exports) once,
    # instead of Trainer's own pushes, which would replace the card with Trainer's.
    push = training_args.push_to_hub
    training_args.push_to_hub = False
    # Trainer pickles its arguments into every checkpoint (training_args.bin): a token given on the command
    # line must not ride along.
    token, training_args.hub_token = training_args.hub_token, None
    private_flag = "--hub_private_repo true"
    repo_id = training_args.hub_model_id or os.path.basename(os.path.normpath(training_args.output_dir))
    if push and training_args.process_index == 0:  # found before training, not after it
        from ..hub.push import check_private_possible

        check_private_possible(repo_id, "model", training_args.hub_private_repo, token=token, flag=private_flag)
    if method in ("mae", "blip"):
        from importlib import import_module

        trainer = import_module(f".{method}", __package__).train(args, training_args)
    else:
        from .contrastive import train

        trainer = train(method, args, training_args)
    if push and trainer.is_world_process_zero():
        from ..hub.push import push_folder

        # An unset privacy is the Hub's default for the namespace (an organisation's may be private), not public.
        push_folder(training_args.output_dir, repo_id, repo_type="model", private=training_args.hub_private_repo,
                    token=token, revision=training_args.hub_revision, private_flag=private_flag)
    return trainer


if __name__ == "__main__":
    main()

"""Arguments every pretraining method shares: where the data comes from."""

import logging
import os
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class DataArguments:
    dataset: str | None = field(default=None, metadata={"help": "freeatm dataset (folder or Hub id): synthetic data."})
    real_dataset: str | None = field(default=None, metadata={"help": "Image dataset without masks (real data)."})
    data_mode: str = field(default="synthetic", metadata={"help": "synthetic, real or mix."})
    mix_ratio: float = field(default=0.5, metadata={"help": "Share of real rows in 'mix'."})
    real_image_column: str = field(default="image", metadata={"help": "Image column of the real dataset."})
    real_text_column: str = field(default="caption", metadata={"help": "Caption column of the real dataset (BLIP)."})
    streaming: bool = field(default=False, metadata={"help": "Stream the datasets (needs --max_steps)."})
    min_attention_peak: float | None = field(default=None, metadata={
        "help": "Objects whose attention_peak is below this count as not drawn: no mask, no position prompt "
                "(default: the value the dataset's card recommends, if any; 0 keeps every object)."})
    # Not a flag: the mix's generated and real rows, counted by `load` for the card.
    _source_rows: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        from ..data.reading import DATA_MODES

        if self.data_mode not in DATA_MODES:
            raise ValueError(f"--data_mode must be one of {', '.join(DATA_MODES)}, got {self.data_mode!r}")
        if self.real_dataset and self.data_mode == "synthetic":
            # Otherwise it trains on the generated data alone, and the card would name the real one as used.
            raise ValueError(f"--real_dataset is read with --data_mode real or mix, not {self.data_mode!r}: add "
                             "--data_mode mix (with --mix_ratio) or --data_mode real")
        if not 0.0 <= self.mix_ratio <= 1.0:
            raise ValueError(f"--mix_ratio is the share of real rows, in [0, 1]; got {self.mix_ratio}")
        # A peak is an attention probability: a cut above 1 would leave every object out, without a word.
        if self.min_attention_peak is not None and not 0.0 <= self.min_attention_peak < 1.0:
            raise ValueError(f"--min_attention_peak must be in [0, 1) (attention_peak is a probability), got "
                             f"{self.min_attention_peak}")

    def resolve_min_attention_peak(self) -> float | None:
        """Fill `min_attention_peak` from the dataset card when not given, and log what is used."""
        if self.min_attention_peak is None and self.data_mode != "real":
            from ..data.reading import generation_settings

            cut = generation_settings(self.dataset).get("min_attention_peak")
            self.min_attention_peak = None if cut is None else float(cut)
            if self.min_attention_peak is not None:
                logger.info("objects with attention_peak < %s are left out (from %s's card)",
                            self.min_attention_peak, self.dataset)
        return self.min_attention_peak

    def data_info(self, ds) -> dict:
        """What the model card says about the data: the datasets read (a recipe's `dataset` stays set under
        `--data_mode real`, but is not read)."""
        from ..data.reading import recorded_source

        synthetic = self.dataset if self.data_mode != "real" else None
        return {"dataset": recorded_source(synthetic), "real_dataset": recorded_source(self.real_dataset),
                "data_mode": self.data_mode,
                "mix_ratio": self.mix_ratio, "min_attention_peak": self.min_attention_peak,
                "num_rows": None if self.streaming else len(ds), **self._source_rows}

    def load(self, seed: int = 0, require_text: bool = False):
        from ..data.reading import pretraining_dataset

        self._source_rows = {}
        return pretraining_dataset(self.dataset, self.real_dataset, self.data_mode, self.mix_ratio,
                                   streaming=self.streaming, seed=seed, real_image_column=self.real_image_column,
                                   real_text_column=self.real_text_column, require_text=require_text,
                                   source_rows=self._source_rows, for_read_through=True)

    def read_through(self, ds, transform):
        """`ds` (what `load` returned) read through a method's `transform`, a row it cannot read named by its
        dataset and index there (see `data.reading.read_through`)."""
        from ..data.reading import read_through, sources_read

        return read_through(ds, transform, sources_read(self.dataset, self.real_dataset, self.data_mode))


def check_views(image_size: int, crop_scale_min: float):
    """The view settings every method's arguments have: a side of at least one pixel, and RandomResizedCrop's lower
    scale a share of the image (above 1 the first batch died in torch's sampler)."""
    if image_size < 1:
        raise ValueError(f"--image_size must be at least 1, got {image_size}")
    if not 0.0 < crop_scale_min <= 1.0:
        raise ValueError(f"--crop_scale_min is RandomResizedCrop's lower scale, a share of the image in (0, 1]; got "
                         f"{crop_scale_min}")


def training_info(training_args, optimizer: str | None = None, lr_milestones: list[int] | None = None) -> dict:
    """The TrainingArguments worth putting in a model card, and the optimizer: `optimizer` when the method builds
    its own (SimCLR's LARS, MoCo's SGD), else Trainer's `--optim`; Adam's betas when it has them. `lr_milestones`:
    the epochs a constant schedule's rate is cut tenfold at (`LRMilestonesCallback`), else it reads as one rate."""
    keys = ("learning_rate", "weight_decay", "warmup_steps", "per_device_train_batch_size",
            "gradient_accumulation_steps", "num_train_epochs", "max_steps", "lr_scheduler_type", "seed", "bf16")
    info = {k: getattr(training_args, k) for k in keys}
    if lr_milestones:
        info["lr_milestones"] = sorted(lr_milestones)
    # --max_steps overrides the epochs (Trainer then reads no num_train_epochs); the card states what bounded the run.
    info.pop("num_train_epochs" if training_args.max_steps > 0 else "max_steps")
    info["optimizer"] = optimizer or str(getattr(training_args.optim, "value", training_args.optim))
    if "adam" in info["optimizer"]:
        info.update(adam_beta1=training_args.adam_beta1, adam_beta2=training_args.adam_beta2)
    return {**info, "world_size": training_args.world_size}


def trained_batch(training: dict | None, state, training_args) -> dict | None:
    """`training` (`training_info`) with the per-device batch the run trained at: `--auto_find_batch_size` halves
    the one asked for after each out-of-memory error, and Trainer's state holds the one it settled on."""
    if not training or not state.train_batch_size:
        return training
    return {**training, "per_device_train_batch_size": state.train_batch_size // max(1, training_args.n_gpu)}


def seed_per_process(trainer):
    """Random draws of their own on every process (see `PerProcessSeedCallback`), the shuffle alike on all.
    Without a data seed accelerate seeds the sampler from torch's global seed when it builds the data loader,
    which would then differ per process (say on `auto_find_batch_size`'s retry): rows read twice, others never."""
    from .callbacks import PerProcessSeedCallback

    if trainer.accelerator.dataloader_config.data_seed is None:
        trainer.accelerator.dataloader_config.data_seed = trainer.args.seed
    trainer.add_callback(PerProcessSeedCallback())


def resume_point(training_args) -> str | None:
    """The checkpoint to resume from: `--resume_from_checkpoint` a folder, or true/latest for the output folder's
    last complete one. An output folder that already holds checkpoints is not trained into afresh: Trainer's
    rotation (`save_total_limit`, by step) would delete the new run's checkpoints first and keep the old run's."""
    from transformers.trainer_utils import get_last_checkpoint

    asked = training_args.resume_from_checkpoint
    out = training_args.output_dir
    last = get_last_checkpoint(out) if os.path.isdir(out) else None
    if str(asked).lower() in ("true", "latest"):
        asked = last_complete_checkpoint(out) if last else None
        if asked is None and last:
            raise ValueError(f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: {out} holds no complete "
                             "checkpoint to resume (none has its trainer_state.json: their saves did not finish); "
                             f"delete its checkpoint-* folders to train afresh")
        if asked is None:
            raise ValueError(f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: {out} holds no "
                             "checkpoint-* folder to resume")
    elif asked is None and last is not None:
        if last_complete_checkpoint(out) is None:  # a resume would be refused too: say what works
            raise ValueError(f"{out} holds checkpoint folders of an earlier run whose saves did not finish "
                             f"({os.path.basename(last)}, no trainer_state.json): delete them to train afresh there, "
                             "or train into another --output_dir")
        raise ValueError(f"{out} holds checkpoints of an earlier run ({os.path.basename(last)}): resume it with "
                         "--resume_from_checkpoint true, or train into another --output_dir")
    if asked is not None:
        check_resumed_settings(asked, training_args)
        check_not_past(asked, training_args)
    return asked


def check_not_past(checkpoint: str, training_args):
    """Refuse a checkpoint that holds more steps (or epochs) than the run asks for: it has nothing left to train,
    and its model would be saved as the result under a card stating the shorter run."""
    state = trainer_state(checkpoint)
    if not state:  # Trainer says so
        return
    by_steps = training_args.max_steps > 0
    flag, unit = ("max_steps", "steps") if by_steps else ("num_train_epochs", "epochs")
    held = int(state.get("global_step") or 0) if by_steps else float(state.get("epoch") or 0)
    asked = getattr(training_args, flag)
    if held > asked + 1e-6:  # the slack absorbs float sums of epochs such as 2.0000001 (steps are whole)
        raise ValueError(f"{checkpoint} holds {held:g} {unit}, more than --{flag} {asked:g}: its model is past the "
                         f"run asked for. Resume with --{flag} {held:g} or more, or take the model of an earlier "
                         f"checkpoint (--resume_from_checkpoint {os.path.dirname(checkpoint) or '.'}/checkpoint-N), "
                         "or train afresh into another --output_dir")


def last_complete_checkpoint(folder: str) -> str | None:
    """The newest `checkpoint-N` that holds its trainer_state.json, which Trainer's main process writes after its
    own files: a crash while saving (preemption, a full disk) leaves a newer folder without it, which Trainer would
    fail to resume from."""
    import re

    steps = sorted(((int(m.group(1)), name) for name in os.listdir(folder)
                    if (m := re.fullmatch(r"checkpoint-(\d+)", name)) and os.path.isdir(os.path.join(folder, name))),
                   reverse=True)
    for i, (_, name) in enumerate(steps):
        if os.path.isfile(os.path.join(folder, name, "trainer_state.json")):
            if i:
                logger.warning("%s: resuming from %s; %s left off (no trainer_state.json: its save did not finish)",
                               folder, name, ", ".join(n for _, n in steps[:i]))
            return os.path.join(folder, name)
    return None


# Settings a resumed run takes from its checkpoint whatever the command line now says: the optimizer's state
# restores the learning rate, decay and betas; a new schedule or warm-up would jump mid-run; the batch, the process
# count and the seed decide which rows the resume skips as already seen.
RESUMED_SETTINGS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "lr_scheduler_type",
                    "warmup_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "seed")


def _training_args_classes() -> list:
    """What a pickled `TrainingArguments` is made of, the only classes its unpickling may build."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType
    from transformers import TrainingArguments
    from transformers.debug_utils import DebugOption
    from transformers.trainer_pt_utils import AcceleratorConfig
    from transformers.trainer_utils import HubStrategy, IntervalStrategy, SaveStrategy, SchedulerType
    from transformers.training_args import OptimizerNames

    return [TrainingArguments, PartialState, DistributedType, AcceleratorConfig, HubStrategy, IntervalStrategy,
            SaveStrategy, SchedulerType, OptimizerNames, DebugOption]


def check_resumed_settings(checkpoint: str, training_args):
    """Refuse a resume whose settings differ from the checkpoint's (`RESUMED_SETTINGS`, and the process count): the
    run would not train as stated, and its card would state the new values all the same."""
    import glob

    import torch

    path = os.path.join(checkpoint, "training_args.bin")
    if not os.path.isfile(path):
        return
    try:  # the run's own pickled TrainingArguments (Trainer writes them into each checkpoint)
        with torch.serialization.safe_globals(_training_args_classes()):
            saved = torch.load(path, weights_only=True)  # a checkpoint from elsewhere must not run its own code
    except Exception as e:  # say, written by a transformers whose classes this one lacks
        logger.warning("%s: not compared with the checkpoint's settings (%s: %s)", checkpoint, type(e).__name__, e)
        return
    value = lambda args, key: getattr(getattr(args, key, None), "value", getattr(args, key, None))  # noqa: E731
    changed = [f"--{k} {value(saved, k)} → {value(training_args, k)}" for k in RESUMED_SETTINGS
               if value(saved, k) != value(training_args, k)]
    # Trainer keeps one RNG state per process (rng_state_<rank>.pth) when there are several, else rng_state.pth.
    processes = len(glob.glob(os.path.join(checkpoint, "rng_state_*.pth"))) or 1
    if processes != training_args.world_size:
        changed.append(f"processes {processes} → {training_args.world_size}")
    if changed:
        raise ValueError(f"{checkpoint} was trained with other settings ({'; '.join(changed)}): a resumed run continues "
                         "the checkpoint's optimizer, schedule and data order. Resume with its settings (a method's "
                         "own learning rate follows the global batch: per-device batch × processes × accumulation), or "
                         "train afresh into another --output_dir")


def check_carded_settings(checkpoint: str | None, **settings):
    """Refuse a resume whose method-chosen training settings (SimCLR's and MoCo's `optimizer`, `lr_milestones`: not
    Trainer's, so not in training_args.bin) differ from those the checkpoint's card records: another optimizer
    cannot take the checkpoint's optimizer state, other milestones would be carded for the whole run. A checkpoint
    without its card (killed before it was written) is not compared."""
    from ..hub.model_card import card_facts

    facts = checkpoint and card_facts(checkpoint)
    if not facts:
        return
    saved = facts.get("training") or {}
    shown = lambda v: "none" if v is None else v  # noqa: E731
    changed = [f"--{k} {shown(saved.get(k))} → {shown(v)}" for k, v in settings.items() if saved.get(k) != v]
    if changed:
        raise ValueError(f"{checkpoint} was trained with other settings ({'; '.join(changed)}): a resumed run continues "
                         "the checkpoint's optimizer and schedule. Resume with its settings, or train afresh into "
                         "another --output_dir")


def fit_and_save(trainer, args: DataArguments, ds, training_args, resume: str | None, card: bool = True,
                 optimizer: str | None = None, lr_milestones: list[int] | None = None):
    """Train (from `resume`, the checkpoint `resume_point` settled before any data was read or model built, so
    that a refused resume is said at once), save the model, write its card (main process; every checkpoint gets
    one too), log and save the metrics. `optimizer`, `lr_milestones`: the method's own (`training_info`)."""
    data, training = ((args.data_info(ds), training_info(training_args, optimizer, lr_milestones)) if card
                      else (None, None))
    if card:
        from .callbacks import ModelCardCallback

        trainer.add_callback(ModelCardCallback(data, training))
        if resume and trainer.is_world_process_zero() and not os.path.isfile(os.path.join(resume, "card_info.json")):
            # Killed after Trainer saved it but before the card callback ran: complete to Trainer, yet without the
            # facts (trained size, data) that an evaluation of it reads. The resume holds the same settings.
            from ..hub.model_card import write_model_card

            write_model_card(resume, trainer.model.config, data=data, training=training)
    seed_per_process(trainer)
    done = resume and steps_done(resume) >= training_args.max_steps > 0
    if done:
        # Trainer would run one more step past --max_steps (at the schedule's last learning rate) on resuming a
        # checkpoint that holds them all, as a rerun of a finished command does: its weights are the result.
        from transformers import TrainerState

        logger.info("%s holds all %d steps: nothing left to train, its model is saved", resume, training_args.max_steps)
        trainer._load_from_checkpoint(resume)
        trainer.state = TrainerState.load_from_json(os.path.join(resume, "trainer_state.json"))
    else:
        result = trainer.train(resume_from_checkpoint=resume)
        # A run by epochs resumed from its last checkpoint trains no step: its metrics would be a zero-step run's.
        done = resume and trainer.state.global_step <= steps_done(resume)
        if done:
            logger.info("%s holds all %d steps: nothing left to train, its model is saved", resume,
                        trainer.state.global_step)
    trainer.save_model()
    if card and trainer.is_world_process_zero():
        from ..hub.model_card import write_model_card

        write_model_card(training_args.output_dir, trainer.model.config, data=data,
                         training=trained_batch(training, trainer.state, training_args))
    if not done:  # the run that trained them wrote its metrics
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
    return trainer


def trainer_state(checkpoint: str) -> dict:
    """A checkpoint's trainer_state.json (empty without one, which Trainer refuses to resume anyway)."""
    import json

    path = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def steps_done(checkpoint: str) -> int:
    """The optimizer steps a checkpoint holds (its trainer_state.json's global_step; 0 without one)."""
    return int(trainer_state(checkpoint).get("global_step") or 0)

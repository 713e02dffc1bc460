"""Trainer callbacks for the schedules of the pretraining methods."""

import math
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


def epoch_index(state) -> int:
    """The epoch being started: floored, as a resumed run starts mid-epoch (3.6 is still epoch 3); the small
    slack absorbs float sums such as 1.9999999 at an epoch's start."""
    return math.floor((state.epoch or 0) + 1e-6)


class MomentumUpdateCallback(TrainerCallback):
    """MoCo: after each optimizer step, move the key encoder toward the query encoder (EMA)."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)
        if hasattr(model, "momentum_update"):
            model.momentum_update()


class DistillAlphaCallback(TrainerCallback):
    """BLIP's distillation weight: α = distill_alpha · step / (ramp_epochs · steps per epoch), then distill_alpha
    (the momentum encoders start as untrained copies). BLIP ramps over the first 2 epochs when pretraining and
    over the first when fine-tuning for retrieval. An epoch's optimizer steps are counted from the training data
    loader; a streamed dataset has no epoch, so its ramp is BLIP pretraining's share of training: 2 of 20 epochs,
    a tenth of max_steps."""

    STREAM_SHARE = 0.1

    def __init__(self, ramp_epochs: int = 2):
        self.ramp_epochs = ramp_epochs
        self.ramp_steps = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        try:
            batches = len(train_dataloader)
        except TypeError:  # an iterable dataset: no length, no epoch
            batches = None
        if batches:
            self.ramp_steps = self.ramp_epochs * max(1, math.ceil(batches / args.gradient_accumulation_steps))
        else:
            self.ramp_steps = max(1, round(self.STREAM_SHARE * state.max_steps))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)
        if getattr(model.config, "momentum_distill", False):
            model.distill_alpha = model.config.distill_alpha * min(1.0, state.global_step / self.ramp_steps)


class PerProcessSeedCallback(TrainerCallback):
    """Reseed every process with `seed + process index` as training starts, as MAE's and BLIP's reference code
    seed per rank. Trainer seeds all processes alike, so each would otherwise draw the same MAE masks, the same
    on-device colour jitter and (data loaded in the main process) the same crops. The model is built before
    this, from the shared seed, and starts identical everywhere; the sampler's shuffle has its own seed
    (`fit_and_save` pins it) and stays one for all processes. A run resumed mid-epoch draws its first batches from
    this seed too: Trainer restores each process's saved random state only after that epoch's first batches
    are fetched (and data workers are seeded when their loader starts), so a resume's augmentations are not
    those of an uninterrupted run."""

    def on_train_begin(self, args, state, control, **kwargs):
        from transformers import set_seed

        set_seed(args.seed + args.process_index)


class LRMilestonesCallback(TrainerCallback):
    """Multiply the learning rate by `gamma` at each milestone epoch (MoCo: ×0.1 at 120 and 160 of 200).

    Works with Trainer's `lr_scheduler_type="constant"`: it rescales the scheduler's base learning rates,
    which the scheduler then applies every step.
    """

    def __init__(self, milestones: list[int], gamma: float = 0.1):
        self.milestones, self.gamma = sorted(milestones), gamma
        self.initial = None

    def on_epoch_begin(self, args, state, control, lr_scheduler=None, optimizer=None, **kwargs):
        if lr_scheduler is None:
            return
        if self.initial is None:
            # The optimizer's `initial_lr` (set by the scheduler, restored with the optimizer on resume), not the
            # scheduler's base_lrs: a resumed scheduler already holds the milestone-scaled rates.
            self.initial = [g.get("initial_lr", lr) for g, lr in zip(optimizer.param_groups, lr_scheduler.base_lrs)]
        epoch = epoch_index(state)
        factor = self.gamma ** sum(epoch >= m for m in self.milestones)
        lr_scheduler.base_lrs = [lr * factor for lr in self.initial]
        for group, lr in zip(optimizer.param_groups, lr_scheduler.base_lrs):
            group["lr"] = lr


class ModelCardCallback(TrainerCallback):
    """Write the model card into every checkpoint folder as it is saved, so that any checkpoint, not only the
    final save, can be pushed or handed on with its card (the data and hyper-parameters it was trained with)."""

    def __init__(self, data: dict | None, training: dict | None):
        self.data, self.training = data, training

    def on_save(self, args, state, control, model=None, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and model is not None and folder.is_dir():
            from ..hub.model_card import write_model_card
            from .arguments import trained_batch

            write_model_card(folder, getattr(model, "module", model).config, data=self.data,
                             training=trained_batch(self.training, state, args))

"""Training pieces for BLIP with position prompts: a Trainer that logs ITC, ITM and LM separately."""

from transformers import Trainer


class BlipTrainer(Trainer):
    """Logs the three BLIP losses (averaged over the steps since the last log) next to their sum."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._parts: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        for k in ("loss_itc", "loss_itm", "loss_lm"):
            self._parts.setdefault(k, []).append(float(getattr(outputs, k)))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._parts:
            logs = {**logs, **{k: sum(v) / len(v) for k, v in self._parts.items()}}
            self._parts = {}
        super().log(logs, *args, **kwargs)

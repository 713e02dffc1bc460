"""A resumed run continues from its checkpoint's weights, every one of them, for every method."""

import pytest
import torch
from transformers import AutoModel, TrainerCallback, TrainingArguments


def run_method(method, data, out, steps, method_args=None, **kw):
    """`method_args`: the method's own arguments, over the tiny ones below."""
    kw = {"per_device_train_batch_size": 4, "save_strategy": "steps", "save_steps": 1, **kw}
    own = method_args or {}
    targs = TrainingArguments(output_dir=str(out), max_steps=steps, logging_steps=1, report_to="none", use_cpu=True,
                              seed=0, **kw)
    if method == "mae":
        from freeatm_hf.train.mae import MAEArguments, train

        return train(MAEArguments(dataset=data, **{"model_size": "tiny", "image_size": 32, "patch_size": 8, **own}), targs)
    if method == "blip":
        from freeatm_hf.train.blip import BlipArguments, train

        return train(BlipArguments(dataset=data, **{"model_size": "tiny", "image_size": 32, "max_length": 48, **own}),
                     targs)
    from freeatm_hf.train.contrastive import ContrastiveArguments, train

    tiny = {"backbone": "resnet18", "image_size": 32, "proj_hidden_dim": 16, "proj_dim": 8, "queue_size": 16,
            "optimizer": "adamw"}
    return train(method, ContrastiveArguments(dataset=data, **{**tiny, **own}), targs)


@pytest.mark.parametrize("method", ["mae", "moco", "blip"])
def test_a_resumed_run_starts_from_every_weight_of_the_checkpoint(method, tmp_path, shapes_data, monkeypatch):
    """The model as the resumed training begins must be checkpoint-2 to the last tensor. (Trainer's own loading
    lost every ViTMAE layer to transformers 5's renamed keys and went on from fresh ones; MoCo's queue and key
    encoder are buffers and weights of its own; BLIP ties weights.)"""
    import freeatm_hf.train.arguments as arguments

    run_method(method, shapes_data, tmp_path, 2)
    started = {}

    class Look(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            started.update({k: v.detach().clone() for k, v in getattr(model, "module", model).state_dict().items()})

    seed = arguments.seed_per_process
    monkeypatch.setattr(arguments, "seed_per_process", lambda trainer: (trainer.add_callback(Look()), seed(trainer)))
    run_method(method, shapes_data, tmp_path, 3, resume_from_checkpoint="true")
    checkpoint = AutoModel.from_pretrained(tmp_path / "checkpoint-2").state_dict()
    assert checkpoint.keys() == started.keys()
    differ = [k for k in checkpoint if not torch.equal(checkpoint[k], started[k])]
    assert not differ, f"{len(differ)} of {len(checkpoint)} tensors are not the checkpoint's: {differ[:3]}"


@pytest.mark.parametrize("method", ["moco", "mae", "blip"])
def test_a_run_resumed_at_an_epochs_end_is_the_uninterrupted_run(method, tmp_path, shapes_data, monkeypatch):
    """Killed after checkpoint-1 (an epoch: 64 rows, 64 a batch) and resumed, a run ends where the uninterrupted one
    does, bit for bit: weights, MoCo's queue and key encoder, BLIP's queues, the optimizer's moments, the schedule,
    MAE's β and BLIP's α by the step, the rows and the random draws. (Mid-epoch the draws differ: see
    `PerProcessSeedCallback`.) On one thread: on two, two fresh BLIP runs already differ in a few attention biases
    after a step (AdamW scales their near-zero gradients, rounding noise, up to whole steps of the rate)."""
    import freeatm_hf.train.arguments as arguments

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _resume_at_an_epochs_end(method, tmp_path, shapes_data, monkeypatch, arguments)
    finally:
        torch.set_num_threads(threads)


def _resume_at_an_epochs_end(method, tmp_path, shapes_data, monkeypatch, arguments):

    class Killed(Exception):
        pass

    class Kill(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                raise Killed

    kw = {"per_device_train_batch_size": 64}
    if method == "blip":
        kw["method_args"] = {"momentum_distill": True, "queue_size": 8}
    whole = run_method(method, shapes_data, tmp_path / "whole", 2, **kw)
    seed = arguments.seed_per_process
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(arguments, "seed_per_process", lambda trainer: (trainer.add_callback(Kill()), seed(trainer)))
        run_method(method, shapes_data, tmp_path / "cut", 2, **kw)
    resumed = run_method(method, shapes_data, tmp_path / "cut", 2, resume_from_checkpoint="true", **kw)
    logged = [[h for h in trainer.state.log_history if "loss" in h] for trainer in (whole, resumed)]
    assert logged[0] == logged[1]  # losses, gradient norms, learning rates, β
    checkpoints = [tmp_path / run / "checkpoint-2" for run in ("whole", "cut")]
    states = [AutoModel.from_pretrained(c).state_dict() for c in checkpoints]
    assert [k for k in states[0] if not torch.equal(states[0][k], states[1][k])] == []
    for name in ("optimizer.pt", "scheduler.pt"):
        assert _same(*(torch.load(c / name, weights_only=False) for c in checkpoints)), name


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def test_a_checkpoint_is_loaded_whole_or_refused_by_name(tmp_path, shapes_data):
    from freeatm_hf.train.trainer import FreeatmTrainer

    run_method("simclr", shapes_data, tmp_path, 1)
    from freeatm_hf.models import MoCoConfig, MoCoModel

    other = MoCoModel(MoCoConfig(backbone="resnet18", proj_hidden_dim=16, proj_dim=8, queue_size=16))
    trainer = FreeatmTrainer(model=other, args=TrainingArguments(output_dir=str(tmp_path / "o"), report_to="none",
                                                                 use_cpu=True))
    with pytest.raises(ValueError, match="does not hold this model's weights.*missing keys"):
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    # A model compiled before it reaches the trainer is loaded through its original module.
    simclr = AutoModel.from_pretrained(tmp_path / "checkpoint-1")
    compiled = torch.compile(type(simclr)(simclr.config))
    FreeatmTrainer(model=compiled, args=TrainingArguments(output_dir=str(tmp_path / "c"), report_to="none",
                                                           use_cpu=True))._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    assert all(torch.equal(v, simclr.state_dict()[k]) for k, v in compiled._orig_mod.state_dict().items())
    # A checkpoint whose weights were never written (a save cut short) is named, as Trainer named it.
    (tmp_path / "checkpoint-1" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="can't resume from .*checkpoint-1"):
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))


@pytest.mark.parametrize("method, changed, said", [
    ("moco", {"pooling": "image", "momentum": 0.5}, r"momentum 0.999 → 0.5; pooling attention → image"),
    ("mae", {"guided": False}, r"beta_max 0.8 → 0.0"),
])
def test_a_resume_with_other_model_settings_is_refused_by_name(method, changed, said, tmp_path, shapes_data):
    """The model's settings live in its config, not among Trainer's: a MoCo run resumed with `--pooling image` trained
    the rest as the baseline (and at another momentum), an MAE one with `--guided false` at random, and the card and
    config.json stated the new settings for the whole run, without a word."""
    run_method(method, shapes_data, tmp_path, 1)
    with pytest.raises(ValueError, match=rf"checkpoint-1 was trained with other model settings \({said}\)"):
        run_method(method, shapes_data, tmp_path, 2, method_args=changed, resume_from_checkpoint="true")
    assert run_method(method, shapes_data, tmp_path, 2, resume_from_checkpoint="true").state.global_step == 2


def test_a_resume_with_another_optimizer_or_milestones_is_refused_by_name(tmp_path, shapes_data):
    """SimCLR's and MoCo's `--optimizer` and `--lr_milestones` are theirs, not Trainer's: another optimizer failed
    loading the checkpoint's state ("a parameter group that doesn't match", or KeyError 'momentum' at the first
    step), and other milestones trained on under a card stating them for the whole run."""
    run_method("moco", shapes_data, tmp_path, 1, lr_scheduler_type="constant")
    with pytest.raises(ValueError, match=r"checkpoint-1 was trained with other settings \(--optimizer adamw → sgd; "
                                         r"--lr_milestones none → \[1\]\)"):
        run_method("moco", shapes_data, tmp_path, 2, method_args={"optimizer": "sgd", "lr_milestones": [1]},
                   lr_scheduler_type="constant", resume_from_checkpoint="true")


def test_rerunning_a_finished_run_trains_no_step_past_max_steps(tmp_path, shapes_data):
    """Trainer resumed from a checkpoint holding all --max_steps runs one step more (MoCo's key encoder and queue
    move even at a zero learning rate); the rerun of a finished command saves the checkpoint's model instead."""
    first = run_method("moco", shapes_data, tmp_path, 2)
    metrics = (tmp_path / "train_results.json").read_text()
    again = run_method("moco", shapes_data, tmp_path, 2, resume_from_checkpoint="true")
    assert again.state.global_step == 2 == first.state.global_step
    checkpoint = AutoModel.from_pretrained(tmp_path / "checkpoint-2").state_dict()
    saved = AutoModel.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(checkpoint[k], saved[k]) for k in checkpoint)
    assert (tmp_path / "train_results.json").read_text() == metrics  # the training run's, kept


def test_rerunning_a_finished_epoch_run_keeps_its_metrics(tmp_path, shapes_data):
    """A run by epochs (no --max_steps) rerun with --resume_from_checkpoint true trains nothing: its model stays the
    last checkpoint's and the metrics of the run that trained it are not replaced by a zero-step run's."""
    kw = {"num_train_epochs": 1, "per_device_train_batch_size": 32, "save_strategy": "epoch"}
    first = run_method("simclr", shapes_data, tmp_path, -1, **kw)
    metrics = (tmp_path / "train_results.json").read_text()
    again = run_method("simclr", shapes_data, tmp_path, -1, resume_from_checkpoint="true", **kw)
    assert again.state.global_step == 2 == first.state.global_step  # 64 rows, 32 a batch
    checkpoint = AutoModel.from_pretrained(tmp_path / "checkpoint-2").state_dict()
    saved = AutoModel.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(checkpoint[k], saved[k]) for k in checkpoint)
    assert (tmp_path / "train_results.json").read_text() == metrics


def test_device_photometrics_apply_to_training_batches_and_evaluation_only_normalizes(tmp_path):
    """With gpu_photometric, the workers send uint8 views: a training step jitters them on the device, while an
    evaluation loss is taken on the views as they are, normalized (as the workers' evaluation transform does)."""
    from torchvision.transforms.v2 import Normalize

    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from freeatm_hf.train.trainer import ContrastiveTrainer

    class Seen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.inputs = torch.nn.Parameter(torch.zeros(())), []

        def forward(self, **inputs):
            self.inputs.append(inputs)
            return {"loss": self.w * 0}

    model = Seen()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = ContrastiveTrainer(model=model, args=args, gpu_photometric=True, image_size=16)
    torch.manual_seed(0)
    views = {k: torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8) for k in ("pixel_values_1", "pixel_values_2")}
    expected = {k: Normalize(IMAGENET_MEAN, IMAGENET_STD)(v.float() / 255) for k, v in views.items()}
    model.eval()
    trainer.compute_loss(model, dict(views))
    for k in views:
        torch.testing.assert_close(model.inputs[-1][k], expected[k])
    model.train()  # 8 views, jittered with probability 0.8 each: some differ
    trainer.compute_loss(model, dict(views))
    assert any(not torch.allclose(model.inputs[-1][k], expected[k]) for k in views)


@pytest.mark.parametrize("method", ["simclr", "moco", "mae", "blip"])
def test_every_method_trains_under_bf16_autocast(method, tmp_path, shapes_data):
    """`--bf16`, as every GPU recipe sets it: Trainer runs the forward under bf16 autocast (here the CPU's). Each
    method's masks, pooling, queue, patch scores and losses must take bf16 activations: finite losses, and the
    weights and buffers (MoCo's queue, BN statistics) still fp32, where a bf16 write would lose precision for good."""
    seen = set()

    def record(module, args, out):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and torch.is_tensor(out):
            seen.add(out.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        trainer = run_method(method, shapes_data, tmp_path, 2, bf16=True)
    finally:
        hook.remove()
    assert torch.bfloat16 in seen  # autocast was on
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(logged)))
    floats = [t for t in [*trainer.model.parameters(), *trainer.model.buffers()] if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)


def test_a_plain_trainer_divides_the_models_averaged_loss_over_accumulation_even_with_labels_in_the_batch(tmp_path):
    """The models' losses are means already. A `labels` key in a batch (what `default_data_collator` makes of a
    freeatm dataset's `label` column) has Trainer count items and, for a model that takes loss kwargs (these
    forwards take `**kwargs`), leave the loss undivided by the accumulation steps: gradients 4× too large."""
    from transformers import Trainer

    from freeatm_hf.models import METHODS, SimCLRConfig, SimCLRModel

    model = SimCLRModel(SimCLRConfig(backbone="resnet18", pooling="image", proj_hidden_dim=16, proj_dim=8))
    args = TrainingArguments(output_dir=str(tmp_path), gradient_accumulation_steps=4, report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 4  # what its training loop sets
    torch.manual_seed(0)
    batch = {"pixel_values_1": torch.randn(4, 3, 32, 32), "pixel_values_2": torch.randn(4, 3, 32, 32),
             "labels": torch.tensor([0, 1, 2, 3])}
    model.train()
    expected = model(**batch).loss.detach() / 4
    got = trainer.training_step(model, batch, num_items_in_batch=torch.tensor(4))
    assert torch.allclose(got, expected)
    assert [cls.accepts_loss_kwargs for _, cls in METHODS.values()] == [False] * 4  # Trainer reads it first

"""Where a run starts: afresh into an empty folder, or from a checkpoint, never afresh over an earlier run."""

import pytest
from transformers import TrainingArguments

from freeatm_hf.train.mae import MAEArguments, train


def run(out, steps, **kw):
    args = MAEArguments(dataset=kw.pop("data"), model_size="tiny", image_size=32, patch_size=8)
    kw = {"per_device_train_batch_size": 4, "seed": 0, **kw}
    targs = TrainingArguments(output_dir=str(out), max_steps=steps, logging_steps=1, save_strategy="steps",
                              save_steps=1, report_to="none", use_cpu=True, **kw)
    return train(args, targs)


def test_an_earlier_runs_checkpoints_are_resumed_or_refused_never_trained_over(tmp_path, shapes_data):
    out = tmp_path / "mae"
    with pytest.raises(ValueError, match="holds no checkpoint-\\* folder to resume"):
        run(out, 2, data=shapes_data, resume_from_checkpoint="true")
    run(out, 2, data=shapes_data)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    # Afresh into the same folder, rotation would delete the new run's checkpoint-1, -2 … before the old ones.
    with pytest.raises(ValueError, match=r"holds checkpoints of an earlier run \(checkpoint-2\).*--resume_from_checkpoint true"):
        run(out, 4, data=shapes_data)
    resumed = run(out, 4, data=shapes_data, resume_from_checkpoint="true")
    # Steps 1-2 come from checkpoint-2's saved history, 3-4 are trained now.
    assert [h["step"] for h in resumed.state.log_history if "loss" in h] == [1, 2, 3, 4]
    assert resumed.state.global_step == 4


def test_a_resume_with_other_optimisation_settings_is_refused_by_name(tmp_path, shapes_data):
    out = tmp_path / "mae"
    run(out, 2, data=shapes_data, learning_rate=1e-3)
    # Trainer would restore the checkpoint's optimizer and schedule: 3e-3 would not apply, yet the card would say so.
    with pytest.raises(ValueError, match=r"checkpoint-2 was trained with other settings \(--learning_rate 0.001 → "
                                         r"0.003; --per_device_train_batch_size 4 → 2\)"):
        run(out, 4, data=shapes_data, learning_rate=3e-3, per_device_train_batch_size=2, resume_from_checkpoint="true")
    # Said before any data is read or model built (here the data would not even load).
    with pytest.raises(ValueError, match=r"other settings \(--learning_rate 0.001 → 0.003\)"):
        run(out, 4, data="no-such-folder", learning_rate=3e-3, resume_from_checkpoint="true")
    # Another process count: the global batch and the rows skipped as seen would change (Trainer keeps one RNG
    # state per process when there are several).
    last = out / "checkpoint-2"
    for rank in (0, 1):
        (last / f"rng_state_{rank}.pth").write_bytes((last / "rng_state.pth").read_bytes())
    with pytest.raises(ValueError, match=r"other settings \(processes 2 → 1\).*per-device batch × processes"):
        run(out, 4, data=shapes_data, learning_rate=1e-3, resume_from_checkpoint="true")
    for rank in (0, 1):
        (last / f"rng_state_{rank}.pth").unlink()
    # More steps is what a resume is for.
    assert run(out, 3, data=shapes_data, learning_rate=1e-3, resume_from_checkpoint="true").state.global_step == 3


def test_a_checkpoint_whose_save_did_not_finish_is_passed_over_on_resume(tmp_path, shapes_data, caplog):
    out = tmp_path / "mae"
    run(out, 2, data=shapes_data)
    # A crash while saving step 3: the weights half written, no trainer_state.json (Trainer writes it last).
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "model.safetensors").write_bytes(b"\0" * 10)
    # And killed between Trainer's save of step 2 and the card callback: checkpoint-2 has no card to evaluate by.
    (out / "checkpoint-2" / "card_info.json").unlink()
    (out / "checkpoint-2" / "README.md").unlink()
    resumed = run(out, 4, data=shapes_data, resume_from_checkpoint="true")
    assert [h["step"] for h in resumed.state.log_history if "loss" in h] == [1, 2, 3, 4]
    assert "resuming from checkpoint-2; checkpoint-3 left off" in caplog.text
    import json

    facts = json.loads((out / "checkpoint-2" / "card_info.json").read_text())  # written on resume, as the others'
    first = json.loads((out / "checkpoint-1" / "card_info.json").read_text())
    assert facts["data"] == first["data"] and facts["data"]["dataset"]
    # The resumed run's training facts: the first run's, but for the longer run it now is.
    assert {k: v for k, v in facts["training"].items() if k != "max_steps"} == {
        k: v for k, v in first["training"].items() if k != "max_steps"}
    assert (first["training"]["max_steps"], facts["training"]["max_steps"]) == (2, 4)
    assert (out / "checkpoint-2" / "README.md").is_file()
    # Nothing complete to resume: said so.
    other = tmp_path / "other"
    (other / "checkpoint-1").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no complete checkpoint to resume .* delete its checkpoint-\\* folders"):
        run(other, 2, data=shapes_data, resume_from_checkpoint="true")
    # Afresh into it: not told to resume (refused, as above), but what works.
    with pytest.raises(ValueError, match=r"whose saves did not finish \(checkpoint-1, no trainer_state.json\): "
                                         r"delete them to train afresh there, or train into another --output_dir"):
        run(other, 2, data=shapes_data)


def test_a_checkpoint_past_the_run_asked_for_is_refused(tmp_path, shapes_data):
    """A rerun with fewer steps or epochs than its last checkpoint holds saved that checkpoint's model as the result,
    under a card stating the shorter run (3 steps trained, `max_steps 2` carded)."""
    out = tmp_path / "mae"
    run(out, 3, data=shapes_data)
    with pytest.raises(ValueError, match=r"checkpoint-3 holds 3 steps, more than --max_steps 2: .*--max_steps 3 or "):
        run(out, 2, data=shapes_data, resume_from_checkpoint="true")
    import json

    assert json.loads((out / "card_info.json").read_text())["training"]["max_steps"] == 3  # the card of what is saved
    assert run(out, 3, data=shapes_data, resume_from_checkpoint="true").state.global_step == 3  # all of it: fine
    epochs = tmp_path / "epochs"  # 64 rows, 32 a batch: 2 steps an epoch
    run(epochs, -1, data=shapes_data, num_train_epochs=2, per_device_train_batch_size=32)
    with pytest.raises(ValueError, match=r"checkpoint-4 holds 2 epochs, more than --num_train_epochs 1: "):
        run(epochs, -1, data=shapes_data, num_train_epochs=1, per_device_train_batch_size=32,
            resume_from_checkpoint="true")


def test_the_card_records_the_optimizer_warm_up_betas_and_accumulation():
    """The card named the learning rate and schedule, not the optimizer (a recipe's AdamW read as SimCLR's LARS),
    nor MAE's warm-up and β2."""
    from freeatm_hf.train.arguments import training_info

    args = TrainingArguments(output_dir="unused", warmup_steps=0.025, adam_beta2=0.95, gradient_accumulation_steps=4,
                             use_cpu=True, report_to="none")
    info = training_info(args)
    assert info["optimizer"] == "adamw_torch_fused" or info["optimizer"].startswith("adamw")
    assert (info["warmup_steps"], info["adam_beta2"], info["gradient_accumulation_steps"]) == (0.025, 0.95, 4)
    lars = training_info(args, optimizer="lars")
    assert lars["optimizer"] == "lars" and "adam_beta2" not in lars
    assert training_info(args, optimizer="adamw")["adam_beta1"] == 0.9
    # What bounded the run: the epochs, or --max_steps (which overrides them), not both.
    assert info["num_train_epochs"] == 3 and "max_steps" not in info
    steps = training_info(TrainingArguments(output_dir="unused", max_steps=10, use_cpu=True, report_to="none"))
    assert steps["max_steps"] == 10 and "num_train_epochs" not in steps


class _Payload:
    """Unpickled, it writes a file: what a hostile training_args.bin could do instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoints_pickled_settings_cannot_run_code(tmp_path, shapes_data, caplog):
    """(A real one still loads: the refusals above read it.)"""
    import torch

    from freeatm_hf.train.arguments import check_resumed_settings

    out = tmp_path / "run"
    run(out, 1, data=shapes_data, learning_rate=1e-3)
    checkpoint = out / "checkpoint-1"
    ran = tmp_path / "ran"
    torch.save(_Payload(str(ran)), checkpoint / "training_args.bin")
    check_resumed_settings(str(checkpoint), TrainingArguments(output_dir=str(out), report_to="none", use_cpu=True))
    assert not ran.exists()
    assert "not compared with the checkpoint's settings" in caplog.text
    # Real settings load whatever options they hold (here a debug option, an enum of its own) and are compared.
    torch.save(TrainingArguments(output_dir=str(out), debug="underflow_overflow", learning_rate=1e-3, seed=0,
                                 per_device_train_batch_size=4, report_to="none"), checkpoint / "training_args.bin")
    with pytest.raises(ValueError, match="--learning_rate 0.001 → 0.002"):
        check_resumed_settings(str(checkpoint), TrainingArguments(output_dir=str(out), learning_rate=2e-3, seed=0,
                                                                  per_device_train_batch_size=4, report_to="none"))


@pytest.mark.parametrize("key, value", [("learning_rate", 2e-3), ("weight_decay", 0.1), ("adam_beta1", 0.8),
                                        ("adam_beta2", 0.95), ("adam_epsilon", 1e-6), ("lr_scheduler_type", "cosine"),
                                        ("warmup_steps", 5), ("per_device_train_batch_size", 4),
                                        ("gradient_accumulation_steps", 2), ("seed", 0)])
def test_every_setting_a_resume_takes_from_its_checkpoint_is_compared(tmp_path, key, value):
    """The optimizer state restores the rate, decay, betas and epsilon; the schedule and warm-up would jump; the
    batch, accumulation and seed decide which rows a resume skips as seen: each one changed is refused by name."""
    import torch

    from freeatm_hf.train.arguments import check_resumed_settings

    common = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, learning_rate=1e-3, seed=42,
                  per_device_train_batch_size=8)
    torch.save(TrainingArguments(**common), tmp_path / "training_args.bin")
    check_resumed_settings(str(tmp_path), TrainingArguments(**common, max_steps=10))  # more steps: fine
    with pytest.raises(ValueError, match=f"other settings \\(--{key} "):
        check_resumed_settings(str(tmp_path), TrainingArguments(**{**common, key: value}))


def test_the_newest_complete_checkpoint_is_the_highest_step_not_the_last_name(tmp_path):
    from freeatm_hf.train.arguments import last_complete_checkpoint

    for step in (2, 9, 10, 11):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if step != 11:  # its save did not finish
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")


def test_shares_and_cuts_at_the_ends_of_their_ranges():
    """A mix of real rows only or none is a mix all the same; an attention-peak cut of 1 would leave out every
    object (a peak is a probability), one of 0 keeps them all."""
    from freeatm_hf.train.arguments import DataArguments

    for ratio in (0.0, 1.0):
        assert DataArguments(dataset="d", real_dataset="r", data_mode="mix", mix_ratio=ratio).mix_ratio == ratio
    for ratio in (-0.01, 1.01):
        with pytest.raises(ValueError, match="--mix_ratio is the share of real rows"):
            DataArguments(dataset="d", real_dataset="r", data_mode="mix", mix_ratio=ratio)
    assert DataArguments(dataset="d", min_attention_peak=0.0).min_attention_peak == 0.0
    for cut in (1.0, -0.1):
        with pytest.raises(ValueError, match="--min_attention_peak must be in"):
            DataArguments(dataset="d", min_attention_peak=cut)


def test_a_one_process_checkpoint_resumed_on_more_processes_is_refused(tmp_path):
    import torch

    from freeatm_hf.train.arguments import check_resumed_settings

    class TwoProcesses(TrainingArguments):
        world_size = 2  # what `torchrun --nproc_per_node 2` gives

    common = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    torch.save(TrainingArguments(**common), tmp_path / "training_args.bin")
    (tmp_path / "rng_state.pth").write_bytes(b"")  # one process: one RNG state
    with pytest.raises(ValueError, match=r"other settings \(processes 1 → 2\)"):
        check_resumed_settings(str(tmp_path), TwoProcesses(**common))

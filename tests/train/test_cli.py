"""`freeatm train`: each method's own optimisation settings where none are given."""

import pytest


def settings(argv):
    from freeatm_hf.train.cli import given_flags, method_defaults, parse, resolve_method

    method, argv = resolve_method(list(argv))
    args, targs = parse(method, argv)
    method_defaults(method, args, targs, given_flags(argv))
    return targs


@pytest.mark.parametrize("method, batch, lr, decay, beta2", [
    ("simclr", 64, 0.3 * 64 / 256, 1e-6, 0.999),   # SimCLR with LARS: 0.3 × batch/256
    ("moco", 32, 0.03 * 32 / 256, 1e-4, 0.999),    # MoCo-v2: 0.03 at batch 256
    ("mae", 128, 1.5e-4 * 128 / 256, 0.05, 0.95),  # MAE: base rate 1.5e-4, AdamW β2 0.95
    ("blip", 16, 3e-4, 0.05, 0.999),               # BLIP's pretraining rate, not scaled
])
def test_a_bare_command_trains_with_the_methods_own_settings(method, batch, lr, decay, beta2):
    targs = settings([method, "--dataset", "d", "--output_dir", "o", "--per_device_train_batch_size", str(batch),
                      "--use_cpu", "true"])
    assert targs.learning_rate == pytest.approx(lr) and targs.weight_decay == decay and targs.adam_beta2 == beta2
    assert targs.lr_scheduler_type.value == "cosine"


def test_given_settings_win_and_another_optimizers_rate_is_left_to_its_user(tmp_path):
    targs = settings(["moco", "--dataset", "d", "--output_dir", "o", "--learning-rate", "0.5", "--weight_decay=0",
                      "--use_cpu", "true"])
    assert (targs.learning_rate, targs.weight_decay, targs.lr_scheduler_type.value) == (0.5, 0.0, "cosine")
    # The global batch: per device × accumulation (× processes).
    assert settings(["simclr", "--dataset", "d", "--output_dir", "o", "--per_device_train_batch_size", "64",
                     "--gradient_accumulation_steps", "4", "--use_cpu", "true"]).learning_rate == pytest.approx(0.3)
    assert settings(["simclr", "--dataset", "d", "--output_dir", "o", "--optimizer", "adamw",
                     "--use_cpu", "true"]).learning_rate == 5e-5  # Trainer's, not LARS's
    assert settings(["blip", "--dataset", "d", "--output_dir", "o", "--init_from", "x",
                     "--use_cpu", "true"]).learning_rate == 2e-5  # continued from a BLIP checkpoint
    # A recipe's keys are given settings too.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: mae\ndataset: d\noutput_dir: o\nweight_decay: 0.1\nuse_cpu: true\n")
    targs = settings([str(recipe)])
    assert targs.weight_decay == 0.1 and targs.adam_beta2 == 0.95

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


def test_flags_the_run_would_not_read_are_refused_and_the_other_methods_are_not_listed(capsys):
    from freeatm_hf.train.cli import main

    base = ["--dataset", "d", "--output_dir", "o", "--use_cpu", "true"]
    refused = [
        (["simclr", "--queue_size", "1024", "--momentum", "0.99"], r"--queue_size \(MoCo's queue\); --momentum"),
        (["blip", "--init_from", "ckpt", "--model_size", "tiny"], r"--model_size \(the size of --init_from ckpt"),
        (["blip", "--queue_size", "100"], r"--queue_size \(read with --momentum_distill true only\)"),
        (["mae", "--guided", "false", "--beta_max", "0.5"], r"--beta_max \(--guided false masks at random"),
        (["moco", "--pooling", "image", "--mask_threshold", "0.6", "--min_visible", "0.3"],
         r"--mask_threshold \(--pooling image pools no masks \(the baseline\)\); --min_visible"),
        (["simclr", "--adam_beta1", "0.8"], r"--adam_beta1 \(AdamW's, and the optimizer is lars\)"),
        (["mae", "--optim", "sgd", "--adam_beta2", "0.9"], r"--adam_beta2 \(Adam's, and --optim is sgd\)"),
        (["blip", "--prompts", "none", "--grid", "4"], r"--grid \(--prompts none writes no position prompts\)"),
        (["blip", "--prompts", "none", "--no_shuffle_prompts"], r"--shuffle_prompts \(--prompts none writes no"),
        (["mae", "--data_mode", "real", "--real_dataset", "r", "--mix_ratio", "0.3"],
         r"--mix_ratio \(read with --data_mode mix only\)"),
        (["simclr", "--hub_revision", "exp1"], r"--hub_revision \(read with --push_to_hub only\)"),
        (["simclr", "--push_to_hub", "true", "--hub_strategy", "checkpoint"],
         r"--hub_strategy \(freeatm pushes the finished folder once, at the end\)"),
    ]
    for argv, match in refused:
        with pytest.raises(ValueError, match=f"freeatm train {argv[0]} would not read {match}"):
            main(argv + base)
    # MoCo reads its own flags (no refusal: the run then stops at the missing dataset folder).
    from freeatm_hf.train.cli import check_applicable, given_flags, parse

    for argv in (["moco", "--queue_size", "1024", "--momentum", "0.99"],
                 ["blip", "--momentum_distill", "true", "--queue_size", "100", "--distill_alpha", "0.2"],
                 ["mae", "--beta_max", "0.5", "--adam_beta1", "0.8"],
                 ["simclr", "--optimizer", "adamw", "--adam_beta1", "0.8", "--mask_threshold", "0.6"],
                 ["simclr", "--push_to_hub", "true", "--hub_revision", "exp1"],
                 ["blip", "--data_mode", "mix", "--real_dataset", "r", "--mix_ratio", "0.3", "--grid", "4",
                  "--real_text_column", "text", "--real_image_column", "img"],
                 ["moco", "--data_mode", "real", "--real_dataset", "r", "--real_image_column", "img"]):
        args, targs = parse(argv[0], argv[1:] + base)
        check_applicable(argv[0], args, targs, given_flags(argv[1:]))
    # An abbreviated flag would not be seen as given, and the method's own value would replace it.
    with pytest.raises(ValueError, match=r"unknown flag: --learning_r \(did you mean --learning_rate\?\); freeatm"):
        parse("simclr", ["--learning_r", "0.1"] + base)
    # Named as the help lists them: underscored, and never a flag the method's help hides (MoCo's, for SimCLR).
    with pytest.raises(ValueError, match=r"unknown flags: --backbon \(did you mean --backbone\?\), --queue_siz;"):
        parse("simclr", ["--backbon=resnet18", "--queue_siz", "3"] + base)
    with pytest.raises(ValueError, match=r"unknown flag: --num-image \(did you mean --num_images\?\)"):
        from freeatm_hf.generate.cli import parse as parse_generate

        parse_generate(["--output_dir", "o", "--num-image", "3"])
    with pytest.raises(SystemExit):
        parse("simclr", ["--help"])
    simclr_help = capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse("moco", ["--help"])
    moco_help = capsys.readouterr().out
    assert "--queue_size" in moco_help and "--momentum" in moco_help and "--pooling" in simclr_help
    assert "--queue_size" not in simclr_help and "--momentum " not in simclr_help
    assert "--real_text_column" not in simclr_help + moco_help and "--real_image_column" in moco_help


def test_a_recipe_key_made_moot_by_a_typed_flag_is_not_refused(tmp_path):
    from freeatm_hf.train.cli import main

    # mae_atm.yaml sets beta_max; its documented baseline adds --guided false. The run goes on to the data.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: mae\ndataset: missing-folder\noutput_dir: o\nbeta_max: 0.8\nuse_cpu: true\n")
    with pytest.raises(FileNotFoundError, match="'missing-folder' is no folder here"):
        main([str(recipe), "--guided", "false"])
    with pytest.raises(ValueError, match="would not read --beta_max"):
        main([str(recipe), "--guided", "false", "--beta_max", "0.5"])


@pytest.mark.parametrize("method, shown", [
    ("simclr", {"learning_rate": "0.3 × global batch / 256 with lars", "weight_decay": "1e-06",
                "warmup_steps": "0.05", "lr_scheduler_type": "cosine"}),
    ("mae", {"learning_rate": "0.00015 × global batch / 256", "weight_decay": "0.05", "adam_beta2": "0.95",
             "warmup_steps": "0.025"}),
    ("blip", {"learning_rate": "0.0003, 2e-05 with --init_from", "weight_decay": "0.05"}),
])
def test_help_shows_the_methods_own_defaults_not_trainers(method, shown, capsys):
    """`--help` said 5e-05, linear, no decay, no warm-up: Trainer's defaults, which the method replaces."""
    import re

    from freeatm_hf.train.cli import parse

    with pytest.raises(SystemExit):
        parse(method, ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    def entry(flag):
        dashed = flag.replace("_", "-")
        return re.search(rf"--{flag} \S+, --{dashed} \S+ (.*?)(?= --\w+ [A-Z[{{])", text).group(1)

    for flag, value in shown.items():
        assert f"(default: {value}" in entry(flag), (flag, entry(flag))
    assert "(default: 5e-05)" not in text
    assert entry("push_to_hub").startswith("Upload the finished output folder") and "once" in entry("push_to_hub")
    assert "`true` for the output directory's last complete one" in entry("resume_from_checkpoint")
    assert ("--hub_strategy" in text) is False and ("--optim {" in text) is (method in ("mae", "blip"))


def test_a_yml_recipe_is_read_and_flags_after_a_recipe_override_it(tmp_path):
    recipe = tmp_path / "r.yml"
    recipe.write_text("method: mae\ndataset: d\noutput_dir: o\nweight_decay: 0.1\nuse_cpu: true\n")
    assert settings([str(recipe)]).weight_decay == 0.1  # `.yml` is a recipe too, and names its method
    assert settings([str(recipe), "--weight_decay", "0.2"]).weight_decay == 0.2
    assert settings(["mae", str(recipe), "--weight_decay", "0.2"]).weight_decay == 0.2


def test_an_unknown_method_is_named_with_the_known_ones():
    from freeatm_hf.train.cli import parse

    with pytest.raises(ValueError, match="unknown method 'byol'; choose one of simclr, moco, mae, blip"):
        parse("byol", ["--dataset", "d", "--output_dir", "o"])


@pytest.mark.parametrize("argv, match", [
    (["simclr", "--data_mode", "real", "--real_dataset", "r", "--min_attention_peak", "0.3"],
     r"--min_attention_peak \(--data_mode real reads no masks\)"),
    (["moco", "--data_mode", "real", "--real_dataset", "r", "--mask_threshold", "0.5"],
     r"--mask_threshold \(--data_mode real reads no masks\)"),
    (["moco", "--mix_ratio", "0.3"], r"--mix_ratio \(read with --data_mode mix only\)"),  # synthetic, the default
    (["blip", "--real_text_column", "text"], r"--real_text_column \(read with --data_mode real or mix only\)"),
    (["simclr", "--data_mode", "mix", "--real_dataset", "r", "--real_text_column", "text"],
     r"--real_text_column \(captions are BLIP's to learn from"),
    (["moco", "--optimizer", "sgd", "--adam_epsilon", "1e-6"], r"--adam_epsilon \(AdamW's, and the optimizer is sgd\)"),
    (["simclr", "--optimizer", "lars", "--adam_beta2", "0.9"], r"--adam_beta2 \(AdamW's, and the optimizer is lars\)"),
    (["simclr", "--pooling", "image", "--mask_mode", "soft"], r"--mask_mode \(--pooling image pools no masks"),
    (["blip", "--distill_alpha", "0.2"], r"--distill_alpha \(read with --momentum_distill true only\)"),
    (["blip", "--prompts", "none", "--min_attention_peak", "0.3"], r"--min_attention_peak \(--prompts none writes"),
    (["mae", "--guided", "false", "--min_attention_peak", "0.3"], r"--min_attention_peak \(--guided false masks"),
    (["blip", "--optim", "sgd", "--adam_beta1", "0.8"], r"--adam_beta1 \(Adam's, and --optim is sgd\)"),
    (["mae", "--push_to_hub", "true", "--hub_always_push", "true"], r"--hub_always_push \(freeatm pushes the finished"),
])
def test_each_flag_the_run_would_not_read_is_refused(argv, match):
    from freeatm_hf.train.cli import main

    with pytest.raises(ValueError, match=f"freeatm train {argv[0]} would not read {match}"):
        main(argv + ["--dataset", "d", "--output_dir", "o", "--use_cpu", "true"])


@pytest.mark.parametrize("flags, match", [
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1, got 0"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1, got 0"),  # was 1/0
    (["--num_train_epochs", "0"], r"--num_train_epochs must be a finite number > 0 \(or give --max_steps\), got 0"),
    (["--num_train_epochs", "-1", "--max_steps", "0"], "--num_train_epochs must be"),  # 0 steps: by the epochs
    (["--learning_rate", "-0.1"], "--learning_rate must be a finite number >= 0, got -0.1"),
    (["--learning_rate", "inf"], "--learning_rate must be a finite number >= 0, got inf"),
])
def test_trainer_settings_that_cannot_train_are_refused_by_name_before_the_data_is_read(flags, match):
    """A batch or accumulation of 0 and a negative rate failed after the data and model had loaded (in torch's
    DataLoader, as a ZeroDivisionError, in the optimizer); 0 epochs trained no step and saved the model and card."""
    from freeatm_hf.train.cli import main

    for method in ("simclr", "mae"):
        with pytest.raises(ValueError, match=match):
            main([method, "--dataset", "missing-folder", "--output_dir", "o", "--use_cpu", "true", *flags])
    # --max_steps bounds the run, whatever the epochs say: the run goes on to the data.
    with pytest.raises(Exception, match="missing-folder") as e:
        main(["simclr", "--dataset", "missing-folder", "--output_dir", "o", "--use_cpu", "true", "--num_train_epochs",
              "0", "--max_steps", "5", "--learning_rate", "0"])
    assert "must be" not in str(e.value)


def test_the_methods_own_schedule_warm_up_and_rate_for_a_given_batch_and_checkpoint():
    base = ["--dataset", "d", "--output_dir", "o", "--use_cpu", "true"]
    moco = settings(["moco", *base])
    assert moco.lr_scheduler_type.value == "cosine" and moco.warmup_steps == 0
    assert settings(["simclr", *base]).warmup_steps == 0.05
    mae = settings(["mae", *base, "--per_device_train_batch_size", "32", "--gradient_accumulation_steps", "2"])
    assert mae.warmup_steps == 0.025 and mae.learning_rate == pytest.approx(1.5e-4 * 64 / 256)
    # --no_x negates a field that defaults to true: the flag `x` counts as given.
    from freeatm_hf.train.cli import given_flags

    assert given_flags(["--no_shuffle_prompts", "--learning-rate=0.1", "--weight_decay", "0"]) >= {
        "shuffle_prompts", "learning_rate", "weight_decay"}
    given = settings(["blip", *base, "--init_from", "x", "--learning_rate", "1e-4", "--weight-decay", "0.01"])
    assert (given.learning_rate, given.weight_decay) == (1e-4, 0.01)


def test_the_rate_scales_with_the_global_batch_over_processes_and_accumulation():
    from types import SimpleNamespace

    from freeatm_hf.train.cli import method_defaults, parse

    args, _ = parse("moco", ["--dataset", "d", "--output_dir", "o"])
    targs = SimpleNamespace(per_device_train_batch_size=32, world_size=4, gradient_accumulation_steps=2)
    applied = method_defaults("moco", args, targs, set())
    assert applied["learning_rate"] == pytest.approx(0.03 * 32 * 4 * 2 / 256) == targs.learning_rate


def test_main_hands_the_run_the_recipes_settings_without_the_token(tmp_path, monkeypatch):
    """What `freeatm train` passes on to the method's training: a recipe's keys are given settings (not replaced
    by the method's), no memory pinning on the CPU, and no Hub token to be pickled into checkpoints."""
    from freeatm_hf.train import cli, contrastive

    handed = {}
    monkeypatch.setattr(contrastive, "train", lambda method, args, targs: handed.update(method=method, targs=targs))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: simclr\ndataset: d\noutput_dir: o\nweight_decay: 0.1\nwarmup_steps: 0.2\n")
    cli.main([str(recipe), "--hub_token", "hf_secret"])
    targs = handed["targs"]
    assert handed["method"] == "simclr" and (targs.weight_decay, targs.warmup_steps) == (0.1, 0.2)
    assert targs.learning_rate == pytest.approx(0.3 * 8 / 256)  # the method's own where none is given
    assert targs.dataloader_pin_memory is (targs.device.type != "cpu")  # nothing to pin memory for on the CPU
    assert targs.hub_token is None and targs.push_to_hub is False


def test_a_flags_dashed_spelling_is_no_unknown_flag():
    """HfArgumentParser takes `--num-images` for `--num_images` (only the help leaves that spelling out)."""
    from freeatm_hf.generate.cli import parse as parse_generate
    from freeatm_hf.train.cli import parse

    assert parse_generate(["--output-dir", "o", "--num-images", "3"]).num_images == 3
    base = ["--dataset", "d", "--output-dir", "o", "--use_cpu", "true"]
    _, targs = parse("simclr", ["--learning-rate", "0.5", *base])
    assert (targs.learning_rate, targs.output_dir) == (0.5, "o")
    # A dashed typo is matched as its underscored spelling: the same flags are offered for both.
    with pytest.raises(ValueError, match="did you mean --data_mode") as dashed:
        parse("simclr", ["--data-mod", "real", *base])
    with pytest.raises(ValueError) as underscored:
        parse("simclr", ["--data_mod", "real", *base])
    assert str(dashed.value).replace("--data-mod", "--data_mod") == str(underscored.value)


def test_a_bare_train_says_what_is_missing_and_exits_as_eval_does_while_help_exits_0(capsys):
    from freeatm_hf.eval.cli import main as eval_main
    from freeatm_hf.train.cli import main

    with pytest.raises(SystemExit) as e:
        main([])
    captured = capsys.readouterr()
    assert e.value.code == 2 and not captured.out
    assert "freeatm train: error: name a method (simclr, moco, mae, blip) or a recipe" in captured.err
    with pytest.raises(SystemExit) as bare_eval:
        eval_main([])
    assert bare_eval.value.code == e.value.code
    capsys.readouterr()
    for flag in ("-h", "--help"):
        assert main([flag]) is None
        assert "freeatm train simclr --dataset" in capsys.readouterr().out


def test_a_blip_start_that_is_not_there_is_named_before_the_data_loads(tmp_path):
    from freeatm_hf.train.cli import main

    # The dataset is missing too: named first, the checkpoint would be found missing only after it had loaded.
    with pytest.raises(FileNotFoundError, match=r"^--init_from /no/such/blip: no such folder$"):
        main(["blip", "--dataset", str(tmp_path / "no-data"), "--output_dir", str(tmp_path / "o"),
              "--init_from", "/no/such/blip", "--use_cpu", "true"])


def test_pretrain_from_python_is_the_command_with_keywords_for_flags(tmp_path, monkeypatch):
    """`pretrain(method, recipe, key=value)` trains as `freeatm train method recipe --key value` does: keywords
    override the recipe and are given settings (the method's own rate does not replace them), lists are several
    values, False a false flag, None the default; an unknown keyword is refused by name."""
    from freeatm_hf.train import cli, contrastive, pretrain

    handed = []
    monkeypatch.setattr(contrastive, "train", lambda method, args, targs: handed.append((method, args, targs)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: d\noutput_dir: o\nweight_decay: 0.1\nuse_cpu: true\n")
    pretrain("moco", recipe, weight_decay=0.2, learning_rate=0.5, lr_milestones=[3, 7], gpu_photometric=False,
             lr_scheduler_kwargs={"num_cycles": 2}, queue_size=None)
    cli.main(["moco", str(recipe), "--weight_decay", "0.2", "--learning_rate", "0.5", "--lr_milestones", "3", "7",
              "--gpu_photometric", "false", "--lr_scheduler_kwargs", '{"num_cycles": 2}'])
    (method, args, targs), (_, cli_args, cli_targs) = handed
    assert method == "moco" and (targs.weight_decay, targs.learning_rate) == (0.2, 0.5)
    assert args.lr_milestones == [3, 7] and args.gpu_photometric is False and args.queue_size == 65536
    assert targs.lr_scheduler_kwargs == {"num_cycles": 2}
    assert args == cli_args and targs.to_dict() == cli_targs.to_dict()
    with pytest.raises(ValueError, match="unknown flag: --queue_sise"):
        pretrain("moco", recipe, queue_sise=8)
    with pytest.raises(ValueError, match="name a method"):
        pretrain()


@pytest.mark.parametrize("method", ["simclr", "moco", "blip", "mae"])
def test_several_gpus_in_one_process_are_refused_as_data_parallel_trains_another_method(method, monkeypatch):
    """Started without `accelerate launch` on a machine with several GPUs, Trainer wraps the model in
    `nn.DataParallel`: MoCo's and BLIP's queues then keep one replica's writes, SimCLR's negatives shrink to each
    GPU's share of the batch, and MAE's learning rate (scaled by the global batch) and card count one GPU's batch,
    all without a word."""
    from transformers import TrainingArguments

    from freeatm_hf.train import cli

    targs = TrainingArguments(output_dir="o", use_cpu=True)
    assert targs.n_gpu == 0
    cli.check_one_process_per_gpu(method, targs)  # one process, no GPU: nothing to refuse
    monkeypatch.setattr(targs, "_n_gpu", 4)
    with pytest.raises(ValueError, match=rf"4 GPUs are visible to this one process.*DataParallel, where "
                                         rf"{cli.DATA_PARALLEL_LOSS[method]}: .*accelerate launch "
                                         rf"--num_processes 4 -m freeatm_hf.train {method} "):
        cli.check_one_process_per_gpu(method, targs)

    handed = {}
    monkeypatch.setattr(cli, "check_one_process_per_gpu", lambda m, t: handed.update(method=m))
    monkeypatch.setattr("freeatm_hf.train.contrastive.train", lambda *a: None)
    monkeypatch.setattr("freeatm_hf.train.mae.train", lambda *a: None)
    monkeypatch.setattr("freeatm_hf.train.blip.train", lambda *a: None)
    cli.main([method, "--dataset", "d", "--output_dir", "o", "--use_cpu", "true"])
    assert handed == {"method": method}  # what `freeatm train` runs asks it

import json
import math
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from freeatm_hf.toy.train_t2i import main

    out = tmp_path_factory.mktemp("t2i") / "shapes-t2i"
    steps = main(["--output_dir", str(out), "--vae_steps", "2", "--unet_steps", "2", "--batch_size", "2",
                  "--log_every", "1"])
    assert steps == 2
    return out


def test_smoke_training_writes_a_loadable_pipeline_under_20_mb(trained):
    from diffusers import DiffusionPipeline

    from freeatm_hf.generate import FreeATMGenerator
    from freeatm_hf.prompts import Prompt
    from freeatm_hf.toy.model import shapes_components

    size = sum(p.stat().st_size for p in trained.rglob("*.safetensors"))
    assert size <= 20_000_000
    # Loaded as the card shows, without a dtype: fp16 weights on disk, every component in float32.
    pipe = DiffusionPipeline.from_pretrained(str(trained))
    assert {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()} == {torch.float32}
    init = shapes_components()["unet"].state_dict()
    changed = sum(not torch.allclose(init[k].half().float(), v) for k, v in pipe.unet.state_dict().items())
    # Most tensors moved; the first warm-up steps of a few norms and biases round away in the fp16 save.
    assert changed / len(init) > 0.8
    assert pipe.tokenizer.model_max_length == 32
    text = "a red circle and a small blue star on a striped background"
    gen = FreeATMGenerator(pipe)
    # The folder's freeatm.json: every cross-attention resolution of this UNet (16×16 and 8×8 of a 16×16 latent).
    assert gen.capture.down_factors == (1, 2)
    res = gen([Prompt.from_nouns(text, ["red circle", "blue star"])], seeds=[0], num_inference_steps=2,
              guidance_scale=4.0)
    assert res.images[0].size == (64, 64) and res.objects[0][0].soft_map.shape == (16, 16)
    card = (trained / "README.md").read_text()
    assert "shapes-t2i" in card and "UNet steps: 2" in card
    info = json.loads((trained / "freeatm.json").read_text())
    assert info["prompt_mode"] == "shapes" and info["training"]["unet_steps"] == 2
    assert info["training"]["caption_dropout"] == 0.1 and "v-prediction with zero terminal SNR, 10 %" in card


def test_the_shipped_model_runs_as_its_card_shows():
    from diffusers import DiffusionPipeline

    from freeatm_hf.toy.model import MODEL_DIR

    pipe = DiffusionPipeline.from_pretrained(MODEL_DIR)
    image = pipe("a red circle and a small blue star on a striped background", num_inference_steps=2,
                 guidance_scale=2.0, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and image.std() > 0.01


def test_generate_with_the_folder_uses_its_prompts_and_capture(trained, tmp_path):
    from datasets import load_dataset

    from freeatm_hf.generate.cli import main as generate
    from freeatm_hf.toy.world import SHAPES, ShapesWorld

    out = tmp_path / "ds"
    generate(["--output_dir", str(out), "--pipeline", str(trained), "--num_images", "3", "--batch_size", "3",
              "--num_inference_steps", "2"])
    ds = load_dataset(str(out), split="train")
    specs = ShapesWorld(seed=0).scenes(3)
    assert ds["prompt"] == [s.caption for s in specs]
    assert ds.features["label"].names == list(SHAPES)
    assert [ds.features["label"].int2str(r["label"]) for r in ds] == [s.objects[0].shape for s in specs]
    assert [[o["name"] for o in r["objects"]] for r in ds] == [[o.name for o in s.objects] for s in specs]
    settings = json.loads((out / ".freeatm" / "settings.json").read_text())
    assert settings["down_factors"] == [1, 2] and settings["prompt_mode"] == "shapes"


def test_decoder_fine_tuning_keeps_the_latent_space_and_adds_up_the_training(trained, tmp_path):
    from diffusers import DiffusionPipeline

    from freeatm_hf.toy.train_t2i import main

    out = tmp_path / "resumed"
    main(["--output_dir", str(out), "--resume_from", str(trained), "--decoder_steps", "2", "--unet_steps", "0",
          "--batch_size", "2"])
    before = DiffusionPipeline.from_pretrained(str(trained), dtype=torch.float32)
    after = DiffusionPipeline.from_pretrained(str(out), dtype=torch.float32)

    def moved(a, b):
        return {k for k, v in a.state_dict().items() if not torch.equal(v, b.state_dict()[k])}

    vae_moved = moved(before.vae, after.vae)
    # The encoder (and so every latent the UNet was trained on) is untouched; only the decoder learned.
    assert vae_moved and all(k.startswith(("decoder.", "post_quant_conv.")) for k in vae_moved)
    assert after.vae.config.scaling_factor == before.vae.config.scaling_factor
    assert not moved(before.unet, after.unet) and not moved(before.text_encoder, after.text_encoder)
    training = json.loads((out / "freeatm.json").read_text())["training"]
    assert (training["unet_steps"], training["vae_steps"], training["decoder_steps"]) == (2, 2, 2)
    assert [r["decoder_steps"] for r in training["runs"]] == [0, 2]
    # No scene is drawn twice: the first run drew 2 VAE batches of 2, one for the scaling factor and 2 UNet
    # batches; the resumed one starts after them.
    assert [(r["scene_start"], r["scene_end"]) for r in training["runs"]] == [(0, 10), (10, 14)]
    assert "then 2 steps of the decoder alone" in (out / "README.md").read_text()


def test_next_scene_skips_every_scene_an_earlier_run_drew():
    from freeatm_hf.toy.train_t2i import next_scene

    assert next_scene(None) == 0
    # Runs from before scene_end was recorded all started at scene 0: the longest one decides (a batch per step,
    # plus one).
    legacy = {"runs": [{"unet_steps": 10, "vae_steps": 5, "batch_size": 4},
                       {"unet_steps": 3, "decoder_steps": 1, "batch_size": 32}]}
    assert next_scene(legacy) == 160
    assert next_scene({"runs": [*legacy["runs"], {"unet_steps": 1, "batch_size": 4, "scene_end": 300}]}) == 300
    assert next_scene({"unet_steps": 7, "batch_size": 2}) == 16  # a folder written before `runs` existed


def test_a_save_that_fails_midway_leaves_the_last_complete_folder(trained, tmp_path, monkeypatch):
    """A run killed at its time limit mid-save must not leave a folder of mixed or half-written weights: the
    save is written beside the folder and swapped in whole."""
    import shutil

    import freeatm_hf.toy.model as model
    from freeatm_hf.toy.train_t2i import main

    out = tmp_path / "shapes"
    shutil.copytree(trained, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(model, "update_model_folder", crash)
    with pytest.raises(KeyboardInterrupt):
        main(["--output_dir", str(out), "--resume_from", str(out), "--decoder_steps", "1", "--unet_steps", "0",
              "--batch_size", "2"])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    (out / "notes.txt").write_text("mine")  # what the save does not write stays in the folder
    main(["--output_dir", str(out), "--resume_from", str(out), "--decoder_steps", "1", "--unet_steps", "0",
          "--batch_size", "2"])
    assert json.loads((out / "freeatm.json").read_text())["training"]["decoder_steps"] == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # nothing left beside it


def test_saves_swap_into_the_folder_a_symlink_names_and_in_place_where_a_rename_cannot(tmp_path, monkeypatch, caplog):
    import os

    from freeatm_hf.toy.train_t2i import can_swap, recover_swap, swap_in

    real = tmp_path / "real"
    (real / "a").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    folder = (tmp_path / "link").resolve()
    new = tmp_path / ".real.saving"
    (new / "b").mkdir(parents=True)
    assert can_swap(folder)
    swap_in(new, folder)
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in (tmp_path / "link").iterdir()) == ["b"]
    # Killed between the two renames: the previous save is put back at the next start.
    (tmp_path / "real").rename(tmp_path / ".real.old")
    recover_swap(folder)
    assert (real / "b").is_dir() and not (tmp_path / ".real.old").exists()
    # The working directory (`--output_dir .`) is saved into in place, said before training.
    monkeypatch.chdir(real)
    assert not can_swap(Path(".").resolve()) and "it holds the working directory" in caplog.text
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(real))
    assert not can_swap(real) and "it is a mount point" in caplog.text


def test_training_facts_add_up_over_runs():
    from freeatm_hf.toy.train_t2i import accumulate_training

    first = {"unet_steps": 5, "vae_steps": 3, "decoder_steps": 0, "minutes": 1.25, "lr": 5e-4}
    one = accumulate_training(None, first)
    assert one == {**first, "runs": [first]}
    second = {"unet_steps": 2, "vae_steps": 0, "decoder_steps": 4, "minutes": 2.5, "lr": 3e-4}
    two = accumulate_training(one, second)
    assert (two["unet_steps"], two["vae_steps"], two["decoder_steps"], two["minutes"]) == (7, 3, 4, 3.8)
    assert two["lr"] == 3e-4 and two["runs"] == [first, second]  # the last run's settings, each run's own facts
    # A folder trained before runs were recorded: its totals are its one earlier run.
    legacy = accumulate_training({k: v for k, v in first.items()}, second)
    assert legacy["runs"] == [first, second] and legacy["minutes"] == 3.8


def test_no_swap_for_a_folder_above_the_working_directory_and_no_recovery_over_a_save(tmp_path, monkeypatch):
    from freeatm_hf.toy.train_t2i import can_swap, recover_swap

    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    monkeypatch.chdir(folder / "sub")
    assert not can_swap(folder)  # renaming it would move the working directory
    # A leftover previous save beside a folder that exists (the swap finished its first rename only after a new
    # folder was made) is not put over it.
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "old.txt").write_text("old")
    recover_swap(folder)
    assert (folder / "sub").is_dir() and not (folder / "old.txt").exists()


def test_saved_configs_drop_the_training_machines_paths_and_load_the_text_encoder_in_float32(tmp_path):
    from freeatm_hf.toy.train_t2i import _drop_local_paths

    (tmp_path / "unet").mkdir()
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_name_or_path": "/home/me/run", "x": 1}))
    (tmp_path / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "clip_text_model",
                                                                       "dtype": "float16"}))
    _drop_local_paths(tmp_path)
    assert json.loads((tmp_path / "unet" / "config.json").read_text()) == {"x": 1}
    assert json.loads((tmp_path / "text_encoder" / "config.json").read_text())["dtype"] == "float32"


def test_the_scheduler_reads_the_unet_as_the_velocity_training_teaches():
    """What the UNet is taught, from the noisy latents it is shown, is what the shapes scheduler reads its output as:
    given that target, a sampling step recovers the clean latents exactly (v = sqrt(a)·noise − sqrt(1 − a)·x0)."""
    from freeatm_hf.toy.model import shapes_components
    from freeatm_hf.toy.train_t2i import training_target

    sched = shapes_components()["scheduler"]
    sched.set_timesteps(25)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    t = sched.timesteps[[3, 12, 20]]
    noisy, target = sched.add_noise(x0, noise, t), training_target(sched, x0, noise, t)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(target, a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-6)
    for i, ti in enumerate(t):
        assert torch.allclose(sched.step(target[i:i + 1], ti, noisy[i:i + 1]).pred_original_sample, x0[i:i + 1],
                              atol=1e-4)


def test_the_training_target_follows_the_schedulers_prediction_type():
    from diffusers import DDIMScheduler

    from freeatm_hf.toy.train_t2i import training_target

    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    for kind, want in (("epsilon", noise), ("sample", x0)):
        sched = DDIMScheduler(prediction_type=kind, clip_sample=False)
        sched.set_timesteps(10)
        assert torch.equal(training_target(sched, x0, noise, t), want)
        noisy = sched.add_noise(x0, noise, t)
        assert torch.allclose(sched.step(want[:1], t[0], noisy[:1]).pred_original_sample, x0[:1], atol=1e-3)
    sched.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        training_target(sched, x0, noise, t)


def test_a_resumed_folder_whose_scheduler_this_script_cannot_train_is_refused_before_training(trained, tmp_path,
                                                                                              caplog):
    import logging
    import shutil

    from freeatm_hf.toy.train_t2i import main

    folder = tmp_path / "other"
    shutil.copytree(trained, folder)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "flow"}))
    caplog.set_level(logging.INFO, "freeatm_hf.toy.train_t2i")
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        main(["--output_dir", str(tmp_path / "out"), "--resume_from", str(folder), "--decoder_steps", "1",
              "--unet_steps", "1", "--batch_size", "2"])
    assert "decoder step" not in caplog.text  # not after a stage's training
    assert not (tmp_path / "out").exists()


def test_the_unet_learning_rate_warms_up_linearly_then_holds_or_decays_by_the_share_done():
    from freeatm_hf.toy.train_t2i import WARMUP_STEPS, unet_lr_factor

    assert WARMUP_STEPS == 200
    for s in (0, 49, 198):
        assert unet_lr_factor(s, 0.0, "constant") == pytest.approx((s + 1) / 200)
        assert unet_lr_factor(s, 0.0, "cosine") == pytest.approx((s + 1) / 200)
    for share in (0.0, 0.25, 0.5, 0.9):
        assert unet_lr_factor(5000, share, "constant") == 1.0
        assert unet_lr_factor(5000, share, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * share)))
    assert unet_lr_factor(99, 0.5, "cosine", warmup=100) == pytest.approx(0.5)
    # A stage past its clock decays to 0, not back up the cosine.
    assert unet_lr_factor(10**6, 1.7, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_captions_are_dropped_to_the_empty_one_at_the_given_rate():
    from freeatm_hf.toy.train_t2i import drop_captions

    ids, empty = torch.arange(1, 4001).view(1000, 4), torch.tensor([[7, 0, 0, 0]])
    assert torch.equal(drop_captions(ids, empty, 0.0), ids)
    assert torch.equal(drop_captions(ids, empty, 1.0), empty.expand(1000, 4))
    torch.manual_seed(0)
    out = drop_captions(ids, empty, 0.1)
    dropped = (out == empty).all(1)
    assert torch.equal(out[~dropped], ids[~dropped])
    assert 60 < dropped.sum() < 140


@pytest.mark.parametrize("flag, bad", [
    ("--caption_dropout", "1.5"), ("--caption_dropout", "-0.1"),
    ("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"),  # inf saved an all-NaN UNet, exit 0
    ("--ema_decay", "nan"), ("--ema_decay", "1"), ("--ema_decay", "-1"),
    ("--max_minutes", "0"), ("--save_every_minutes", "-1"),  # 0 minutes wrote an untrained pipeline
    ("--unet_steps", "-1"), ("--vae_steps", "-2"), ("--decoder_steps", "-1"),  # -1 UNet steps ran one
    ("--batch_size", "0"), ("--log_every", "0"), ("--mixed_precision", "foo"), ("--resume_from", "/nonexistent"),
])
def test_settings_that_would_train_nothing_or_nans_are_refused_by_name(flag, bad, tmp_path, capsys):
    from freeatm_hf.toy.train_t2i import main

    with pytest.raises(SystemExit) as e:
        # A mutant that let the value through trains nothing long: the bad value comes last, and wins.
        main(["--output_dir", str(tmp_path / "out"), "--vae_steps", "0", "--unet_steps", "0", "--batch_size", "2",
              flag, bad])
    assert e.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_without_its_training_facts_is_not_resumed(tmp_path, capsys):
    """Its earlier runs unknown, training would begin again at scene 0 and the card claim no scene was seen twice."""
    from freeatm_hf.toy.model import shapes_pipeline
    from freeatm_hf.toy.train_t2i import main

    folder = tmp_path / "plain"
    shapes_pipeline().save_pretrained(folder)  # a pipeline folder, but not one this script wrote
    with pytest.raises(SystemExit) as e:
        main(["--output_dir", str(tmp_path / "out"), "--resume_from", str(folder), "--unet_steps", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--resume_from" in err and "no freeatm.json" in err
    assert not (tmp_path / "out").exists()


def test_evaluation_refuses_the_scenes_the_model_was_trained_on(trained):
    from freeatm_hf.generate.pipelines import load_pipeline
    from freeatm_hf.toy.mask_eval import MaskEvalConfig, evaluate_masks
    from freeatm_hf.toy.train_t2i import TRAIN_WORLD_OFFSET

    pipe = load_pipeline(str(trained), torch.device("cpu"))
    # `--seed 0` trained on ShapesWorld(seed=TRAIN_WORLD_OFFSET): its test or validation scenes are refused.
    for seed in (TRAIN_WORLD_OFFSET, TRAIN_WORLD_OFFSET - 1):
        with pytest.raises(ValueError, match=f"world seed {TRAIN_WORLD_OFFSET}"):
            evaluate_masks(pipe, MaskEvalConfig(seed=seed))


def test_the_saved_unet_is_the_ema_of_the_trained_one(tmp_path):
    """With --ema_decay 0 the average is the trained weights themselves; with the default it lags behind them."""
    from safetensors.torch import load_file

    from freeatm_hf.toy.train_t2i import main

    common = ["--vae_steps", "1", "--unet_steps", "3", "--batch_size", "2"]
    main(["--output_dir", str(tmp_path / "raw"), "--ema_decay", "0", *common])
    main(["--output_dir", str(tmp_path / "ema"), *common])
    raw, ema = (load_file(str(tmp_path / run / "unet" / "diffusion_pytorch_model.safetensors")) for run in ("raw", "ema"))
    assert raw.keys() == ema.keys() and any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_training_draws_fresh_scenes_of_the_world_it_records_and_scales_latents_to_unit_variance(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    from freeatm_hf.toy import world
    from freeatm_hf.toy.train_t2i import main

    drawn, World = [], world.ShapesWorld

    class RecordingWorld(World):
        def scenes(self, n, start=0):
            drawn.append((self.seed, start, n))
            return super().scenes(n, start)

    monkeypatch.setattr(world, "ShapesWorld", RecordingWorld)
    main(["--output_dir", str(tmp_path / "t2i"), "--vae_steps", "1", "--unet_steps", "1", "--batch_size", "2",
          "--seed", "3"])
    training = json.loads((tmp_path / "t2i" / "freeatm.json").read_text())["training"]
    # Evaluation refuses the recorded world's scenes: it must be the one training drew from, batch after batch.
    assert {seed for seed, _, _ in drawn} == {training["world_seed"]}
    assert [(start, n) for _, start, n in drawn] == [(k, 2) for k in range(training["scene_start"],
                                                                         training["scene_end"], 2)]
    # Like SD's, the saved scaling factor makes the UNet's latents unit-variance (on scenes it never saw).
    vae = AutoencoderKL.from_pretrained(tmp_path / "t2i" / "vae", torch_dtype=torch.float32)
    images, _ = World(seed=training["world_seed"]).render(World(seed=training["world_seed"]).scenes(8, start=100))
    torch.manual_seed(0)
    with torch.no_grad():
        z = vae.encode(images.permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist.sample()
    assert (z * vae.config.scaling_factor).std().item() == pytest.approx(1.0, abs=0.05)


def test_autoencoder_stages_skip_the_steps_whose_fp16_gradients_overflow(tmp_path, monkeypatch):
    """Under --mixed_precision fp16 (CUDA) accelerate scales the loss before backward; a step whose gradients
    overflowed must be skipped (and the scale lowered), as the UNet stage's prepared optimizer does. Here every
    step overflows (an infinite scale, installed on the CPU): the VAE and decoder stages must leave the weights as
    they were, not write NaN into them."""
    import accelerate
    from safetensors.torch import load_file

    from freeatm_hf.toy.model import shapes_components
    from freeatm_hf.toy.train_t2i import main

    class OverflowingAccelerator(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))

    monkeypatch.setattr(accelerate, "Accelerator", OverflowingAccelerator)
    main(["--output_dir", str(tmp_path / "t2i"), "--vae_steps", "2", "--decoder_steps", "2", "--unet_steps", "0",
          "--batch_size", "2"])
    saved = load_file(str(tmp_path / "t2i" / "vae" / "diffusion_pytorch_model.safetensors"))
    init = shapes_components()["vae"].state_dict()
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert all(torch.equal(init[k].half(), v) for k, v in saved.items())

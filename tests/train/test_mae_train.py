import pytest
from transformers import TrainingArguments, set_seed

from freeatm_hf.train.mae import MAEArguments, build_model, train


def test_a_few_cpu_trainer_steps_reduce_the_loss_and_log_beta(tmp_path, shapes_data):
    import torch

    args = MAEArguments(dataset=shapes_data, model_size="tiny", image_size=32, patch_size=8, crop_scale_min=0.5)
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=10,
                              learning_rate=2e-3, logging_steps=1, save_strategy="no", report_to="none",
                              use_cpu=True, seed=0)
    set_seed(0)
    init = {n: p.detach().clone() for n, p in build_model(args).named_parameters()}
    trainer = train(args, targs)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logs]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8
    # Linear in the optimizer step, from 0 at the first to 0.8 at the last (logged after each step).
    assert [h["beta"] for h in logs] == pytest.approx([0.8 * k / 39 for k in range(40)])
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), init[n])]
    assert len(moved) >= 0.9 * len(init)


def test_the_mask_free_baseline_is_recorded_as_unguided(shapes_data):
    from freeatm_hf.hub.model_card import _guided

    guided = build_model(MAEArguments(dataset=shapes_data, model_size="tiny", image_size=32, patch_size=8))
    baseline = build_model(MAEArguments(dataset=shapes_data, model_size="tiny", image_size=32, patch_size=8,
                                        guided=False))
    assert guided.config.beta_max == 0.8 and _guided(guided.config)
    # A baseline checkpoint must not claim attention-guided masking in its config, tags or card.
    assert baseline.config.beta_max == 0.0 and not _guided(baseline.config)
    # Nor take the dataset's attention_peak cut into its facts (and log) when it reads no map.
    from freeatm_hf.spaces import space_dir
    from freeatm_hf.train.mae import make_transform

    for guided_run, model in ((True, guided), (False, baseline)):  # a dataset whose card records a cut
        args = MAEArguments(dataset=str(space_dir() / "example_dataset"), model_size="tiny", image_size=32,
                            patch_size=8, guided=guided_run)
        make_transform(args, model.config)
        assert (args.min_attention_peak is not None) is guided_run


def test_the_mae_transform_gives_what_torchvision_gives_on_maps_at_image_size():
    """The maps are read only at the crop's pixels; the views and scores must be those of cropping image and
    full-size maps together with torchvision (same draws), the way the transform once made them."""
    import numpy as np
    import torch
    from PIL import Image
    from scipy.ndimage import gaussian_filter
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from freeatm_hf.data.masks import maps_at
    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from freeatm_hf.models.mae import patch_scores
    from freeatm_hf.train.mae import MAEArguments, make_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))
    objects = []
    for size in ((12, 16), (12, 16), (9, 9)):
        a = gaussian_filter(rng.random(size), 1.5)
        objects.append({"attention": Image.fromarray(((a - a.min()) / np.ptp(a) * 255).astype(np.uint8)),
                        "attention_peak": 1.0})
    args = MAEArguments(image_size=32, patch_size=8, crop_scale_min=0.3)
    config = type("Config", (), {"patch_size": 8})
    transform = make_transform(args, config)
    geometry = v2.Compose([v2.RandomResizedCrop(32, scale=(0.3, 1.0), interpolation=v2.InterpolationMode.BICUBIC,
                                                antialias=True), v2.RandomHorizontalFlip()])
    finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    F = v2.functional
    source, maps = tv_tensors.Image(F.pil_to_tensor(image)), tv_tensors.Mask(maps_at(objects, (72, 96)))
    for seed in range(8):
        torch.manual_seed(seed)
        got = transform({"image": [image], "objects": [objects]})
        torch.manual_seed(seed)
        img, m = geometry(source, maps)
        assert torch.equal(got["pixel_values"][0], finish(img).as_subclass(torch.Tensor))
        # The same draws again, to resize the maps nearest-exact (torchvision's Mask is plain nearest: half a
        # pixel off the image); the plain-nearest masks are torchvision's, so these are its crop and flip.
        torch.manual_seed(seed)
        p = geometry.transforms[0].make_params([source])
        box = (p["top"], p["left"], p["height"], p["width"])
        flip = bool(torch.rand(1) < 0.5)
        plain, exact = (F.resize(F.crop(maps, *box), [32, 32], interpolation=mode)
                        for mode in (v2.InterpolationMode.NEAREST, v2.InterpolationMode.NEAREST_EXACT))
        assert torch.equal(m, plain.flip(-1) if flip else plain)
        exact = exact.flip(-1) if flip else exact
        torch.testing.assert_close(got["patch_scores"][0], patch_scores(exact.as_subclass(torch.Tensor), 8),
                                   atol=1e-5, rtol=0)
    # Maps with nothing in them leave the image to random masking, as real data.
    flat = [{"attention": Image.new("L", (8, 8)), "attention_peak": 1.0}]
    assert torch.isnan(transform({"image": [image], "objects": [flat]})["patch_scores"][0]).all()


def test_the_models_shape_and_masking_are_the_arguments_and_base_is_vit_b():
    from transformers import ViTMAEConfig

    model = build_model(MAEArguments(model_size="tiny", image_size=48, patch_size=8, mask_ratio=0.5))
    assert (model.config.image_size, model.config.patch_size, model.config.mask_ratio) == (48, 8, 0.5)
    stock = ViTMAEConfig()  # transformers' default: MAE's ViT-B/16
    from freeatm_hf.train.mae import SIZES

    base = SIZES["base"]
    assert {k: getattr(stock, k) for k in base} == base


@pytest.mark.parametrize("change, named", [
    ({"image_size": 36, "patch_size": 8}, "--image_size 36 must be a multiple of --patch_size 8"),
    ({"beta_max": 1.5}, r"--beta_max is a share of the masked patches, in \[0, 1\]; got 1.5"),
    ({"beta_max": -0.1}, "--beta_max is a share"),
])
def test_mae_settings_the_model_refuses_are_refused_by_flag_before_the_data_loads(change, named):
    """MAEConfig refused them, but after the dataset had been read, and not by their flags."""
    with pytest.raises(ValueError, match=named):
        MAEArguments(model_size="tiny", **{"image_size": 32, "patch_size": 8, **change})
    # The baseline reads no beta_max: a recipe's stays allowed under --guided false.
    assert MAEArguments(model_size="tiny", image_size=32, patch_size=8, beta_max=1.5, guided=False).beta_max == 1.5


def test_beta_reaches_a_wrapped_model_and_stays_at_its_maximum_past_the_last_step():
    from types import SimpleNamespace

    from freeatm_hf.train.mae import BetaScheduleCallback

    inner = SimpleNamespace(beta=None)
    callback = BetaScheduleCallback(0.6)
    callback.on_step_begin(None, SimpleNamespace(max_steps=11, global_step=5), None, model=SimpleNamespace(module=inner))
    assert inner.beta == pytest.approx(0.3)  # DDP's wrapper: the model inside it gets β
    assert callback.value(SimpleNamespace(max_steps=11, global_step=14)) == pytest.approx(0.6)
    assert callback.value(SimpleNamespace(max_steps=1, global_step=0)) == 0.0


def test_the_baseline_masks_at_random_logs_beta_zero_and_a_run_is_its_seed(tmp_path, shapes_data):
    """--guided false: no patch scores even where the rows have maps, β 0 at every step; the model is built after
    seeding, so the same seed gives the same run whatever was drawn before; a streamed dataset is refused."""
    import random

    import torch

    from freeatm_hf.train.mae import make_transform

    guided = MAEArguments(dataset=shapes_data, model_size="tiny", image_size=32, patch_size=8)
    baseline = MAEArguments(dataset=shapes_data, model_size="tiny", image_size=32, patch_size=8, guided=False)
    rows = guided.load(seed=0)[:4]
    config = build_model(guided).config
    assert not torch.isnan(torch.stack(make_transform(guided, config)(rows)["patch_scores"])).all()
    assert torch.isnan(torch.stack(make_transform(baseline, config)(rows)["patch_scores"])).all()
    weights = []
    for before in (1, 2):
        torch.manual_seed(before)
        random.seed(before)
        targs = TrainingArguments(output_dir=str(tmp_path / str(before)), per_device_train_batch_size=8, max_steps=2,
                                  logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=5)
        trainer = train(baseline, targs)
        assert [h["beta"] for h in trainer.state.log_history if "loss" in h] == [0.0, 0.0]
        weights.append(trainer.model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    with pytest.raises(ValueError, match="MAE training reads map-style datasets; drop --streaming"):
        train(MAEArguments(dataset=shapes_data, streaming=True, model_size="tiny", image_size=32, patch_size=8), targs)
